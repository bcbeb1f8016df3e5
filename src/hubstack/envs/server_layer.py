"""The shared server layer: the Jupyter server packages, installed once per Python.

Every environment of a virtualenv kind needs the same ~110 server packages (jupyterhub,
jupyterlab, jupyter-server, ipykernel and what they depend on, ``base-requirements.txt``).
Installing and compiling them into each environment is most of a build of a small
repository. Instead they are built once per interpreter as an entry of the environment
cache of its own (same build account, same limits, same atomic publish: an entry without
``meta.json`` is never used, so a layer a crash cut short is built again), read-only after.

An environment built on a layer:

- gets :data:`PTH` in its ``site-packages``, whose ``site.addsitedir`` appends the layer's
  ``site-packages`` (and runs its ``.pth`` files) *after* the environment's own, so the
  repository's packages come first;
- installs only the repository's requirements, with the layer's exact versions as
  ``--constraint`` (the layer's ``pip freeze``, :data:`CONSTRAINTS`), so no shared
  dependency disagrees with the server; when uv finds no solution that way, the build falls
  back to installing the server packages into the environment as before, and says so;
- gets copies of the layer's entry-point scripts with its own Python in their first line
  (``jupyterhub-singleuser``, ``jupyter``...), so the server and its kernels run with the
  environment's interpreter;
- is launched with the layer's Jupyter data and config on ``JUPYTER_PATH``,
  ``JUPYTER_CONFIG_PATH`` and ``JUPYTERLAB_DIR`` (see :func:`layout.search_paths`), which
  ``jupyter_core`` and JupyterLab would otherwise look for under the environment's prefix.

Conda and R environments (their own Python from conda packages) and Pythons uv downloads
keep the server packages in the environment: a layer is keyed by a host interpreter, and
theirs are not the host's (a relaxed, ``same_major`` server is one of those too).
"""

from __future__ import annotations

import functools
import hashlib
import shlex
from pathlib import Path

from hubstack.envs.layout import ENV
from hubstack.envs.spec import EnvSpec

PTH = "hubstack-server-layer.pth"
CONSTRAINTS = "server-constraints.txt"
FALLBACK_NOTE = (
    "The repository's requirements cannot use the server packages' versions: installing "
    "the server packages into the environment instead of using the shared layer"
)


def applies(spec: EnvSpec) -> bool:
    """Whether ``spec`` is built on a layer: a virtualenv of a host Python."""
    return spec.conda is None and spec.uv_python is None and spec.r is None


@functools.cache
def _interpreter(path: Path, size: int, mtime: int) -> str:
    """sha256 of an interpreter's binary (cached per file version: it is read once)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def layer_key(python: Path, version: str, salt: str) -> str:
    """The key of the layer for the interpreter ``python`` (``version`` X.Y): its resolved
    path and its binary's hash (which tell implementation and patch release apart), and
    ``salt`` (the builder's version and the server's requirements)."""
    resolved = python.resolve()
    info = resolved.stat()
    identity = _interpreter(resolved, info.st_size, info.st_mtime_ns)
    text = f"layer\n{salt}\n{version}\n{resolved}\n{identity}"
    return hashlib.sha256(text.encode()).hexdigest()


def layer_steps(env: Path, target: Path, uv: str) -> list[str]:
    """Shell lines at the end of a layer's build: its versions, for the environments' uv."""
    q = shlex.quote
    python = q(str(env / "bin/python"))
    return [f"{q(uv)} pip freeze --python {python} > {q(str(target / CONSTRAINTS))}"]


PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"
# Run by the layer's Python: the .pth line naming its site-packages, quoted by repr().
PTH_LINE = (
    "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_path('purelib'))"
)


def env_steps(
    env: Path, layer: Path, log: Path, layered: list[str], fallback: list[str]
) -> list[str]:
    """Shell lines that install a repository's packages on ``layer`` (the layer's entry):
    ``layered`` (its installs, with the layer's constraints) or, when uv finds no solution
    that way, ``fallback`` (the server's and the repository's installs, as without a layer).
    ``layered`` lines are single commands (joined with ``&&``); ``log`` keeps their output."""
    q = shlex.quote
    python, layer_python = str(env / "bin/python"), str(layer / ENV / "bin/python")
    return [
        f"echo {q('Using the shared server layer ' + layer.name[:12])}",
        f"site=$({q(python)} -c {q(PURELIB)})",
        # addsitedir appends (after this site-packages) and reads the layer's own .pth files.
        f'{q(layer_python)} -c {q(PTH_LINE)} > "$site"/{PTH}',
        f"( {' && '.join(layered or ['true'])} ) 2>&1 | tee {q(str(log))}",
        'if [ "${PIPESTATUS[0]}" -ne 0 ]; then',
        f"  grep -q 'No solution found' {q(str(log))} || exit 1",
        f"  echo {q(FALLBACK_NOTE)}",
        f'  rm "$site"/{PTH}',
        *(f"  {line}" for line in fallback),
        "else",
        *_script_copies(layer / ENV / "bin", layer_python, python),
        "fi",
    ]


# Run by the environment's Python with the layer's bin, the layer's and the environment's
# interpreters: copies of the layer's scripts that name its interpreter in their first lines
# (uv writes a shebang, or a /bin/sh line and an exec for long paths), naming the
# environment's instead, except where the environment has a script of that name.
COPY_SCRIPTS = """
import os, sys
source, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
dest = os.path.dirname(sys.argv[3])
for name in sorted(os.listdir(source)):
    path, target = os.path.join(source, name), os.path.join(dest, name)
    if os.path.islink(path) or not os.path.isfile(path) or os.path.lexists(target):
        continue
    with open(path, "rb") as file:
        data = file.read()
    lines = data.split(b"\\n", 2)
    if old not in b"".join(lines[:2]):
        continue
    lines[:2] = [line.replace(old, new) for line in lines[:2]]
    with open(target, "wb") as file:
        file.write(b"\\n".join(lines))
    os.chmod(target, 0o755)
"""


def _script_copies(source: Path, old: str, new: str) -> list[str]:
    """The line (in an ``if``) that runs :data:`COPY_SCRIPTS`."""
    return [f"  {copy_scripts(shlex.quote(str(source)), old, new)}"]


def copy_scripts(source: str, old: str, new: str) -> str:
    """The command that runs :data:`COPY_SCRIPTS` on the folder ``source`` (a shell word,
    quoted or a variable's expansion): also for the package store's scripts."""
    q = shlex.quote
    return f"{q(new)} -c {q(COPY_SCRIPTS)} {source} {q(old)} {q(new)}"
