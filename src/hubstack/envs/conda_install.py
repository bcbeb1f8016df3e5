"""Solve and install one conda environment with rattler: a build's step, not the hub's.

Run by a build script (see :func:`hubstack.envs.conda.create_steps`) as the build account in
the build's sandbox, with ``python -I`` and this file's path, so it imports nothing but the
standard library and rattler. Its one argument is a JSON file of channel URLs, match specs and
the prefix. Failures end with one message for the build log and exit status 1: a solve that
cannot be satisfied names the packages in conflict (rattler's own explanation).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import rattler
from rattler.exceptions import GatewayError, InstallerError, InvalidMatchSpecError, SolverError


def fail(message: str) -> NoReturn:
    print(message, flush=True)
    os._exit(1)  # see main: no finalization while rattler's threads run


async def build(
    channels: list[str], specs: list[str], prefix: Path, cache: Path, shared: Path | None
) -> None:
    gateway = rattler.Gateway(cache_dir=cache / "repodata")
    platform = rattler.Platform.current()
    try:
        records = await rattler.solve(
            channels,
            specs,
            gateway=gateway,
            platforms=[platform, rattler.Platform("noarch")],
            virtual_packages=rattler.VirtualPackage.detect(),
        )
    except SolverError as exc:
        fail(f"The conda packages cannot be installed together: {exc}")
    except GatewayError as exc:
        fail(f"The channels could not be read ({', '.join(channels)}): {exc}")
    names = ", ".join(f"{r.name.normalized} {r.version}" for r in records)
    print(f"Installing {len(records)} conda packages: {names}", flush=True)
    if shared is not None and shared.is_dir():
        found = seed_cache(records, shared, cache / "pkgs")
        print(f"{found} of them from the hub's package cache", flush=True)
    try:
        await rattler.install(
            records,
            prefix,
            cache_dir=cache / "pkgs",
            show_progress=False,
            # Link scripts would run package code outside the steps the log shows; conda-forge
            # asks packages to work without them.
            execute_link_scripts=False,
        )
    except InstallerError as exc:
        fail(f"The conda packages could not be installed: {exc}")
    compile_bytecode(prefix)


def compile_bytecode(prefix: Path) -> None:
    """Compile the Python files the packages brought without their bytecode, with the
    environment's own Python. The environment is read-only to the users who run it, so a
    module not compiled now is compiled again in memory at each server's start (about a
    second more for a Python whose standard library came without it). conda compiles
    ``noarch: python`` packages as it installs them; rattler's install has no such step.
    compileall skips what is compiled already, and files that do not compile (Python 2 test
    data) are left as they are, as conda leaves them."""
    python = prefix / "bin/python"
    libraries = sorted(str(path) for path in prefix.glob("lib/python3.*") if path.is_dir())
    if python.exists() and libraries:
        quiet = ["-qq", "-j", "0"]
        command = [str(python), "-I", "-m", "compileall", *quiet, *libraries]
        subprocess.run(command, stdin=subprocess.DEVNULL, check=False)


def seed_cache(records: list[rattler.RepoDataRecord], shared: Path, pkgs: Path) -> int:
    """Copy the packages the hub keeps (extracted, read-only here; see
    hubstack.envs.conda_packages) into the build's own rattler cache, where the install finds
    them instead of downloading and extracting them. Not a read-only layer of rattler's
    layered cache: rattler 0.28 opens a layer's lock files for writing even to read it,
    which a folder the build account cannot write refuses. Returns how many were there."""
    found = 0
    for record in records:
        stem = re.sub(r"\.(conda|tar\.bz2)$", "", record.file_name)
        if stem != record.file_name and (shared / stem).is_dir():
            shutil.copytree(shared / stem, pkgs / stem, symlinks=True, dirs_exist_ok=True)
            found += 1
    return found


def main() -> None:
    instructions = json.loads(Path(sys.argv[1]).read_text())
    for spec in instructions["specs"]:
        try:
            rattler.MatchSpec(spec)
        except InvalidMatchSpecError as exc:
            fail(f"{spec!r} is not a conda package specification: {exc}")
    prefix, cache = Path(instructions["prefix"]), Path(instructions["cache"])
    shared = Path(instructions["shared"]) if instructions.get("shared") else None
    asyncio.run(build(instructions["channels"], instructions["specs"], prefix, cache, shared))
    # rattler's worker threads may still hold the GIL machinery while the interpreter
    # finalizes, which can abort a finished install (exit 134): leave without finalizing.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
