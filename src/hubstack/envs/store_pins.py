"""Split a build's resolved pins between the package store and uv: a build's step.

Run by a build script (see :func:`hubstack.envs.package_store.use_steps`) as the build
account, with the environment's Python and ``-I``, so it imports nothing but the standard
library. Its arguments: the JSON map of what the store holds (``name==version`` to the
folder of that unpacked, compiled wheel, written by the hub), the server layer's pins, the
pins ``uv pip compile`` resolved, the ``.pth`` file to write and the requirements file of
what uv must still install. It prints the store folders it used, one a line (its
messages go to standard error).

Anything but ``name==version`` lines (a URL, a path, an editable project) exits with
status 2 and a message: the build then installs the repository's requirements as it would
without the store.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)")


def canonical(name: str) -> str:
    """PEP 503's normalized name (packaging's canonicalize_name, which is not importable
    here: the environment's Python runs this with the standard library only)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments and blank lines left out) as canonical name to
    version; ValueError names the first line that is anything else."""
    found = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.fullmatch(line)
        if match is None:
            raise ValueError(f"not a pinned package: {line!r}")
        found[canonical(match[1])] = match[2]
    return found


def split(
    resolved: dict[str, str], stored: dict[str, str], layer: dict[str, str]
) -> tuple[list[str], list[str]]:
    """The store folders to put on the path and the pins uv installs: a pin the layer has
    at that version is the layer's already, one the store has is the store's."""
    folders, rest = [], []
    for name, version in sorted(resolved.items()):
        if layer.get(name) == version:
            continue
        folder = stored.get(f"{name}=={version}")
        if folder is not None:
            folders.append(folder)
        else:
            rest.append(f"{name}=={version}")
    return folders, rest


def pth_line(folders: list[str]) -> str:
    """One ``.pth`` line adding each folder as a site directory (their own ``.pth`` files
    are read, as in site-packages), after the environment's site-packages. Statements,
    not a comprehension: site runs the line in a function's scope, which one cannot see."""
    return "import site; " + "; ".join(f"site.addsitedir({f!r})" for f in folders) + "\n"


def main(argv: list[str]) -> int:
    store_map, layer_pins, resolved_pins, pth, rest_file = map(Path, argv)
    stored = {str(k): str(v) for k, v in json.loads(store_map.read_text()).items()}
    try:
        resolved = pins(resolved_pins.read_text())
        layer = pins(layer_pins.read_text())
    except ValueError as exc:
        print(f"Not using the package store: {exc}", file=sys.stderr, flush=True)
        return 2
    folders, rest = split(resolved, stored, layer)
    if folders:
        pth.write_text(pth_line(folders))
    rest_file.write_text("".join(f"{pin}\n" for pin in rest))
    for folder in folders:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
