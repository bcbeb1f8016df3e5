"""Environments from a repository, Binder-style, without Docker or Kubernetes.

A launch names a git repository and a ref; its files are read the way repo2docker reads the
Reproducible Execution Environment Specification (``requirements.txt``, ``environment.yml``,
``Pipfile``, ``runtime.txt``, ``postBuild``, ... in the root or a ``binder/`` folder), turned
into a plan for a uv build as an unprivileged account, and the result is cached under a key
made from the content that defines the environment rather than from the commit, so a commit
that only changes notebooks or the README launches at once with the environment already built.
"""
