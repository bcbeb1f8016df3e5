"""The Jupyter server and kernel packages every built environment gets, for any Python.

``base-requirements.txt`` pins the versions the hub is tested with. Some of them need a
newer Python than an environment may ask for (``python=3.10`` in an environment.yml, from a
conda channel): then the same packages are installed at the newest versions of the same
major release that this Python supports, which keeps the server compatible with the hub
(its single-user server must match the hub's major version) and gives a kernel in the
environment's own Python. The build log says when this happens.
"""

from __future__ import annotations

import re
import shlex

from packaging.requirements import Requirement

RELAXED_NOTE = (
    "The server's pinned packages do not support this environment's Python: installing "
    "the newest versions of the same major releases that do"
)


def same_major(text: str) -> str:
    """Requirements ``name==X.Y.Z`` as ``name>=X,<X+1``; other lines stay as they are."""
    lines = []
    for line in text.splitlines():
        pin = re.fullmatch(r"([A-Za-z0-9._-]+)==([0-9]+)(\.[0-9A-Za-z.]+)?", line.strip())
        if pin is not None:
            name, major = pin[1], int(pin[2])
            line = str(Requirement(f"{name}>={major},<{major + 1}"))
        lines.append(line)
    return "\n".join(lines) + "\n"


def install_steps(pip: str, overrides: str, pinned: str, relaxed: str) -> list[str]:
    """Shell lines: install ``pinned``; if uv finds no solution for this Python, ``relaxed``
    (a network or index failure still fails the build)."""
    q = shlex.quote
    first = f"{pip} --override {q(overrides)} -r {q(pinned)}"
    second = f"{pip} --override {q(overrides)} -r {q(relaxed)}"
    return [
        f'if ! out=$({first} 2>&1); then echo "$out"',
        '  case "$out" in *"No solution found"*) ;; *) exit 1 ;; esac',
        f"  echo {q(RELAXED_NOTE)}",
        f"  {second}",
        'else echo "$out"; fi',
    ]
