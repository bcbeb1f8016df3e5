"""Where a build gets a Python version the host does not have.

``runtime.txt``, ``requires-python`` or a Pipfile may ask for any Python. The host's own
interpreters come first (``binder.pythons``); beyond them ``binder.python_sources`` says what
else a build may use, in order (empty: nothing else):

- ``conda``: the ``python`` package of the first allowed conda channel (through the site's
  mirror), installed by rattler as the environment's base; the repository's packages then go
  in with uv as for any environment;
- ``uv``: a CPython build uv downloads (python-build-standalone, from GitHub or the site's
  ``UV_PYTHON_INSTALL_MIRROR``), kept inside the environment's cache entry.

A site that allows neither gets a refusal that says so, before anything is fetched.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from hubstack.config.models import CondaSettings
from hubstack.envs.conda import CondaPlan
from hubstack.envs.rees_files import PythonAsk, SpecError

# Under the environment's cache entry, beside ``env``: uv's Python installations.
UV_PYTHONS = "python"


def conda_python_spec(asks: Sequence[PythonAsk]) -> str:
    """The asks as one conda match spec: ``==3.10.*`` is conda's ``3.10.*``, the rest alike."""
    parts = []
    for ask in asks:
        for clause in ask.specifier:
            exact = clause.operator == "==" and clause.version.endswith(".*")
            parts.append(clause.version if exact else f"{clause.operator}{clause.version}")
    return f"python {','.join(sorted(parts))}"


def uv_request(asks: Sequence[PythonAsk]) -> str:
    """The asks as one uv Python request (a version specifier)."""
    return ",".join(sorted(str(clause) for ask in asks for clause in ask.specifier))


def elsewhere(
    asks: Sequence[PythonAsk],
    sources: Sequence[str],
    conda: CondaSettings | None,
    host_refusal: SpecError,
) -> tuple[CondaPlan | None, str | None]:
    """The first allowed source other than the host: (a conda plan of only Python, None) or
    (None, a uv request). Raises ``host_refusal``, extended, when there is none."""
    for source in sources:
        if source == "conda" and conda is not None and conda.enabled:
            return CondaPlan((conda.channels[0],), (conda_python_spec(asks),)), None
        if source == "uv":
            return None, uv_request(asks)
    conda_off = "conda" in sources and conda is not None and not conda.enabled
    why = "conda builds are off" if conda_off else "downloads of Python versions are off"
    raise SpecError(
        f"{host_refusal.message.removesuffix('.')}; no other Python version can be had "
        f"here: {why} (binder.python_sources)."
    )


def uv_steps(request: str, target: Path, env: Path, uv: str) -> list[str]:
    """Build script lines that download the Python ``request`` with uv into the cache entry
    (the only step that may download an interpreter) and make ``env`` a virtualenv of it."""
    q = shlex.quote
    where = f"UV_PYTHON_INSTALL_DIR={q(str(target / UV_PYTHONS))}"
    return [
        f"echo {q(f'Downloading Python {request} with uv')}",
        f"{where} UV_PYTHON_DOWNLOADS=automatic {q(uv)} python install --no-bin {q(request)}",
        f"{where} {q(uv)} venv --quiet --seed --python {q(request)} {q(str(env))}",
    ]
