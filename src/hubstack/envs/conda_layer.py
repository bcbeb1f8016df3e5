"""Conda server layers: the fork server of a conda environment's Python.

A server of a conda environment (an ``environment.yml``, or a conda channel's Python as the
base of another kind) cannot be forked from a fork server of its own environment: the fork
server runs as root, and the environment's interpreter and packages come from the
repository's solve and its build. Instead, after the first build of an environment on a
given conda ``python`` build, the hub builds a *conda server layer*: a conda environment
of that ``python`` package alone (the same file from the same allowed channel, solved again
by the layer's own build) and the server packages, as the build account, from nothing of
any repository, published root-owned and read-only like the shared server layer of
virtualenvs (:mod:`hubstack.envs.server_layer`).

Its fork server forks the environment's servers when every conda package of the layer is
in the environment as the same file (:func:`forks_from`): the interpreter, its libraries
and its standard library are then the same, and the child, once it is the user, takes the
environment's prefix, interpreter and site-packages in place of the layer's (a module there
at another version than the one imported makes it start afresh, as for virtualenvs).
Otherwise, and until the layer is built, its servers start afresh.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from hubstack.config.models import CondaSettings
from hubstack.envs.cache import META
from hubstack.envs.conda import CondaPlan, channel_url
from hubstack.envs.conda_packages import installed_conda, open_conda_meta

# name-version-build.conda: a python record's version and build (neither has a dash).
_PYTHON_FILE = re.compile(r"python-([0-9][0-9A-Za-z.+_]*)-([0-9A-Za-z._+]+)\.(?:conda|tar\.bz2)")


def layer_plan(prefix: Path, settings: CondaSettings) -> CondaPlan | None:
    """What the conda server layer of the environment at ``prefix`` solves: its ``python``
    package by version and build, from the allowed channel its record names; None when it
    has none from an allowed channel. Blocking: reads ``conda-meta`` with no link followed
    (the records are the build's words, checked for shape; the layer's build solves them
    from the channel again)."""
    names = {channel_url(name, settings).rstrip("/"): name for name in settings.channels}
    for channel, _subdir, fn in installed_conda(prefix):
        found = _PYTHON_FILE.fullmatch(fn)
        if found is not None and channel in names:
            return CondaPlan((names[channel],), (f"python =={found[1]} {found[2]}",))
    return None


def layer_key(plan: CondaPlan, settings: CondaSettings, salt: str) -> str:
    """The key of the conda server layer of ``plan``: its channel's URL, its spec, and
    ``salt`` (the builder's version and the server's requirements)."""
    channels = [channel_url(name, settings) for name in plan.channels]
    text = "\n".join(["conda layer", salt, *channels, *plan.specs])
    return hashlib.sha256(text.encode()).hexdigest()


def _records(prefix: Path) -> set[str] | None:
    """The file names in ``prefix/conda-meta`` (each ``name-version-build.json``), or None."""
    meta = open_conda_meta(prefix)
    if meta is None:
        return None
    try:
        return {name for name in os.listdir(meta) if name.endswith(".json")}
    finally:
        os.close(meta)


def forks_from(prefix: Path, layer: Path) -> bool:
    """Whether servers of the environment at ``prefix`` may be forked from the fork server
    of the conda server layer whose prefix is ``layer``: the layer is complete and each of
    its conda packages is in the environment at the same version and build. Blocking."""
    if not (layer.parent / META).is_file():
        return False
    ours, theirs = _records(layer), _records(prefix)
    return bool(ours) and theirs is not None and ours <= theirs
