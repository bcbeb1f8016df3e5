"""The package store: kept wheels, unpacked and compiled once, which environments reference.

The package cache (:mod:`hubstack.envs.packages`) spares a build the downloads, but each
environment still unzips, copies and compiles numpy, pandas and matplotlib again, and root
copies them out of the build's scratch file system: most of a build whose packages the hub
has seen before. So once a build's wheels are kept, each one not stored yet is installed
into an entry of the environment cache of its own (kind ``packages``), built as the server
layer is (the build account, the build limits, an atomic publish; root-owned, read-only
after): ``uv pip install --no-deps --target <entry>/packages/<name>-<version>`` of the kept
wheel file, compiled with the server layer's Python, so the bytecode is that interpreter's.
One entry per batch of wheels; its ``meta.json`` lists them (``name==version``: folder).

A later build of a virtualenv on the same layer, from requirement files or a spec's
requirements (not a project installed from the repository), resolves first (``uv pip
compile`` with the layer's constraints and the package cache's wheels) to exact pins; a pin
the layer has at that version is the layer's, a pin the store has goes into :data:`PTH`
(after the environment's own site-packages and before the layer's, whose ``.pth`` sorts
later, so the repository's packages win over the layer's), the rest is installed with
``--no-deps`` as before. The stored packages' scripts are copied with the environment's
Python in their first line, as the layer's are. When anything is unexpected (the resolve
fails, a pin is a URL or a path), the build installs as without the store, and says so.

An environment's ``meta.json`` names the store entries it uses: ``hubstack env prune``
keeps those and removes the others once unused for as long as an environment would be.
Wheels with files for the environment's prefix (``.data/data``, ``.data/headers``: Jupyter
extensions, headers; manual pages aside) are not stored: they need an install into the
environment. What ``uv venv --seed`` would put into the environment (pip, and setuptools
and wheel before Python 3.12) is resolved with the repository's packages, so it comes from
the store too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from hubstack.envs.layout import ENV
from hubstack.envs.packages import read_no_follow, site_packages
from hubstack.envs.server_layer import CONSTRAINTS, copy_scripts
from hubstack.envs.server_layer import applies as on_layer
from hubstack.envs.spec import EnvSpec

FOLDER = "packages"
PTH = "hubstack-packages.pth"
MAP = "package-store.json"
"""The build's input naming what the store holds, written by the hub into its scratch."""
PINS = Path(__file__).with_name("store_pins.py")
MAN = "share/man/"
SEED_FILE = "seed.txt"
# Run by the environment's Python: what `uv venv --seed` would install (pip; setuptools and
# wheel too before Python 3.12), resolved with the repository's requirements, so that a
# build on the store gets them from it too instead of installing and compiling them anew.
SEED = "import sys; print('pip'); sys.version_info < (3, 12) and print('setuptools\\nwheel')"
NOT_USED = "Not using the package store: installing the repository's packages as without it"


def applies(spec: EnvSpec) -> bool:
    """Whether a build of ``spec`` may take packages from the store: a virtualenv on a
    server layer whose packages are all named by requirements (resolvable to pins)."""
    return (
        on_layer(spec)
        and not spec.install_project
        and bool(spec.requirement_files or spec.requirements)
    )


def storable(wheel: Path) -> bool:
    """Whether the kept wheel (root's, checked against the index) installs only into
    site-packages and scripts: ``.data/data`` and ``.data/headers`` land in the prefix,
    except for manual pages (fonttools' ``ttx.1``), which no environment's ``MANPATH`` names
    (they stay in the entry's folder)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return not any(_for_the_prefix(name.split("/")) for name in names)


def _for_the_prefix(parts: list[str]) -> bool:
    if len(parts) < 3 or not parts[0].endswith(".data") or parts[1] not in ("data", "headers"):
        return False
    rest = "/".join(parts[2:])
    return parts[1] == "headers" or not (MAN.startswith(rest) or rest.startswith(MAN))


def wheel_pin(filename: str) -> tuple[str, str] | None:
    """A wheel file name's ``name==version`` and the folder it is unpacked into."""
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None
    return f"{canonicalize_name(name)}=={version}", f"{canonicalize_name(name)}-{version}"


def new_wheels(filenames: Iterable[str], held: Iterable[str], wheels: Path) -> list[str]:
    """The kept wheels (file names in the package cache ``wheels``) to store: those whose
    ``name==version`` the store does not hold yet (``held``) and that it can hold."""
    seen = set(held)
    found = []
    for filename in sorted(filenames):
        pin = wheel_pin(filename)
        if pin is not None and pin[0] not in seen and storable(wheels / filename):
            seen.add(pin[0])
            found.append(filename)
    return found


def entry_key(layer_key: str, filenames: Iterable[str]) -> str:
    """The key of the store entry of ``filenames`` for the layer ``layer_key`` (which names
    the interpreter their bytecode is compiled for)."""
    text = "\n".join(["packages", layer_key, *sorted(filenames)])
    return hashlib.sha256(text.encode()).hexdigest()


def entry_script(target: Path, python: Path, uv: str, wheels: Path, filenames: list[str]) -> str:
    """The shell script of a store entry's build: each wheel unpacked and compiled into a
    folder of its own (``--target``: no environment, its scripts in ``<folder>/bin``)."""
    q = shlex.quote
    lines = ["set -eu", f"echo {q(f'Unpacking {len(filenames)} packages into the store')}"]
    for filename in filenames:
        found = wheel_pin(filename)
        assert found is not None
        folder = target / FOLDER / found[1]
        lines += [
            f"{q(uv)} pip install --offline --no-deps --compile-bytecode --quiet "
            f"--python {q(str(python))} --target {q(str(folder))} {q(str(wheels / filename))}",
            f"rm -f {q(str(folder / '.lock'))}",
        ]
    lines.append("echo 'Build finished'")
    return "\n".join(lines) + "\n"


def entry_meta(filenames: list[str]) -> dict[str, str]:
    """What an entry of ``filenames`` holds, for its ``meta.json``: pin to folder."""
    return dict(pin for name in filenames if (pin := wheel_pin(name)) is not None)


def contents(entries: Iterable[tuple[Path, Mapping[str, str]]]) -> dict[str, str]:
    """What the store entries ``(path, packages)`` hold: ``name==version`` to the folder."""
    return {
        pin: str(path / FOLDER / folder) for path, held in entries for pin, folder in held.items()
    }


def use_steps(
    env: Path,
    layer: Path,
    scratch: Path,
    compile_cmd: str,
    pip: str,
    without: list[str],
) -> str:
    """One shell command that installs a repository's packages from the store: resolve
    with ``compile_cmd`` (the repository's requirements and :data:`SEED_FILE`, constrained
    as ``pip``), split the pins (:mod:`hubstack.envs.store_pins`), install the rest with
    ``pip --no-deps`` and copy the stored packages' scripts; or else install the seed
    packages and run ``without`` (single commands), saying so."""
    q = shlex.quote
    python, layer_python = str(env / "bin/python"), str(layer / ENV / "bin/python")
    pins, err, rest, used = (q(str(scratch / n)) for n in ("pins.txt", "pins.err", "rest", "used"))
    seed = q(str(scratch / SEED_FILE))
    seeded = f"{pip} -r {seed}"
    split = (
        f"{q(python)} -I {q(str(scratch / PINS.name))} {q(str(scratch / MAP))} "
        f'{q(str(layer / CONSTRAINTS))} {pins} "$site"/{PTH} {rest} > {used}'
    )
    copies = copy_scripts('"$d/bin"', layer_python, python)
    stored = [
        f'echo "Using $(wc -l < {used}) packages from the package store"',
        f"{{ [ ! -s {rest} ] || {pip} --no-deps -r {rest}; }}",
        f'while read -r d; do if [ -d "$d/bin" ]; then {copies}; fi; done < {used}',
    ]
    fallback = [f"echo {q(NOT_USED)}", f"tail -n 5 {err}", f'rm -f "$site"/{PTH}', seeded]
    fallback += without
    undo = f'{{ rm -f "$site"/{PTH}; {seeded}; false; }}'  # no reference left, pip kept
    return (
        f"{q(python)} -c {q(SEED)} > {seed} && if {compile_cmd} > {pins} 2> {err} && {split}; then "
        f"{{ {' && '.join(stored)}; }} || {undo}; else {' && '.join(fallback)}; fi"
    )


def used_entries(prefix: Path, entries: Mapping[str, Path]) -> list[str]:
    """The keys of ``entries`` (key: path) that the environment at ``prefix`` (root's copy,
    whose files the build chose) names in its :data:`PTH`, read without following links."""
    text = ""
    for site in site_packages(prefix):
        try:
            with contextlib.suppress(OSError):
                text += read_no_follow(site, PTH)
        finally:
            os.close(site)
    return sorted(key for key, path in entries.items() if f"{path}/" in text)


def write_map(path: Path, store: Mapping[str, str]) -> None:
    path.write_text(json.dumps(dict(store), indent=1))
