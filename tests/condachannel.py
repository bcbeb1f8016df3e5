"""A conda channel made by the tests and served over HTTP on loopback.

The public channels cannot be reached from the test machines, so the conda builds are tested
against packages written here in the conda package format (``.tar.bz2``: the files, and
``info/index.json``, ``info/paths.json`` and ``info/files``) and indexed by rattler itself
(:func:`rattler.index.index_fs`), as a channel's own tooling would.

:func:`python_package` repackages one of the machine's pyenv CPython builds (a version other
than the host's), so a channel here can provide an interpreter: pyenv's builds link
``libpython`` by an absolute RUNPATH, which is rewritten in place to ``$ORIGIN/../lib``, as
conda-forge's own ``python`` package does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import run

from rattler.index import index_fs

PYENV = Path("/root/.pyenv/versions")
# What a relocated interpreter does not need: tests, IDLE, Tk, and the build's static library.
_PYTHON_SKIPPED = ("test", "idlelib", "tkinter", "turtledemo", "site-packages", "ensurepip")


@dataclass
class Package:
    """One conda package: ``files`` maps paths in the package to (content, executable)."""

    name: str
    version: str
    subdir: str = "noarch"
    depends: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, bool]] = field(default_factory=dict)
    noarch_python: bool = False
    build: str = "0"
    links: dict[str, str] = field(default_factory=dict)  # path -> link target

    def index_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "depends": self.depends,
            "license": "BSD-3-Clause",
            "subdir": self.subdir,
            "timestamp": 1_700_000_000_000,
        }
        if self.subdir != "noarch":
            data.update(platform="linux", arch="x86_64")
        if self.noarch_python:
            data["noarch"] = "python"
        return data

    def write(self, channel: Path) -> Path:
        """The package as ``<channel>/<subdir>/<name>-<version>-<build>.tar.bz2``."""
        folder = channel / self.subdir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{self.version}-{self.build}.tar.bz2"
        entries = []
        with tarfile.open(path, "w:bz2", compresslevel=1) as tar:
            for rel, (content, executable) in sorted(self.files.items()):
                _add(tar, rel, content, 0o755 if executable else 0o644)
                entries.append(
                    {
                        "_path": rel,
                        "path_type": "hardlink",
                        "sha256": hashlib.sha256(content).hexdigest(),
                        "size_in_bytes": len(content),
                    }
                )
            for rel, target in sorted(self.links.items()):
                info = tarfile.TarInfo(rel)
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, time.time()
                tar.addfile(info)
                entries.append({"_path": rel, "path_type": "softlink"})
            paths = {"paths": entries, "paths_version": 1}
            names = sorted([*self.files, *self.links])
            _add(tar, "info/index.json", json.dumps(self.index_json()).encode(), 0o644)
            _add(tar, "info/paths.json", json.dumps(paths).encode(), 0o644)
            _add(tar, "info/files", "".join(f"{n}\n" for n in names).encode(), 0o644)
        return path


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), mode, int(time.time())
    tar.addfile(info, io.BytesIO(content))


def noarch_python(name: str, version: str, module: str, body: str, **kw: object) -> Package:
    """A pure-Python package: ``import <module>`` gives ``body``."""
    return Package(
        name,
        version,
        depends=["python", *kw.pop("depends", [])],  # type: ignore[misc]
        files={f"site-packages/{module}/__init__.py": (body.encode(), False)},
        noarch_python=True,
        **kw,  # type: ignore[arg-type]
    )


def python_package(version: str) -> Package:
    """CPython ``version`` (X.Y.Z) from pyenv as a linux-64 conda package."""
    root = PYENV / version
    minor = ".".join(version.split(".")[:2])
    package = Package("python", version, subdir="linux-64", build="0_hubstack")
    old_runpath = f"{root}/lib".encode()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if (
            parts[0] not in ("bin", "lib")
            or "__pycache__" in parts
            or (
                parts[:2] == ["lib", f"python{minor}"]
                and len(parts) > 2
                and parts[2] in _PYTHON_SKIPPED
            )
            or parts[:3] == ["lib", f"python{minor}", f"config-{minor}-x86_64-linux-gnu"]
            or (parts[0] == "bin" and not rel.startswith("bin/python"))
            or "-config" in rel
        ):
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            package.links[rel] = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
            if rel.startswith("bin/") and old_runpath in content:
                content = _relink(content, old_runpath)
            package.files[rel] = (content, bool(info.st_mode & 0o111))
    return package


def pip_package(version: str) -> Package:
    """The pip that pyenv's CPython ``version`` carries, as conda-forge's noarch ``pip``."""
    minor = ".".join(version.split(".")[:2])
    site = PYENV / version / f"lib/python{minor}/site-packages"
    info = next(site.glob("pip-*.dist-info"))
    files = {
        f"site-packages/{path.relative_to(site).as_posix()}": (path.read_bytes(), False)
        for folder in (site / "pip", info)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    pip_version = info.name.removeprefix("pip-").removesuffix(".dist-info")
    return Package("pip", pip_version, depends=["python"], files=files, noarch_python=True)


def _relink(binary: bytes, old: bytes) -> bytes:
    """The ELF file with its RUNPATH string rewritten in place (same length, NUL-padded)."""
    new = b"$ORIGIN/../lib"
    assert binary.count(old + b"\0") == 1, "the RUNPATH should occur once"
    return binary.replace(old + b"\0", new.ljust(len(old) + 1, b"\0"))


GREET_C = 'const char *greet(void) { return "hello from libgreet"; }\n'
GREET_MAIN = "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); }\n"
PYGREET = """import ctypes
import os
import sys

_lib = ctypes.CDLL(os.path.join(sys.prefix, "lib", "libgreet.so"))
_lib.greet.restype = ctypes.c_char_p


def greet():
    return _lib.greet().decode()
"""


def compiled_packages(work: Path) -> list[Package]:
    """``libgreet``: a shared library and an executable linked to it (by ``$ORIGIN``, as conda
    packages are), compiled here with the host's C compiler; ``pygreet``: Python using it."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "greet.c").write_text(GREET_C)
    (work / "main.c").write_text(GREET_MAIN)
    cc = ["/usr/bin/cc", "-O2"]
    run([*cc, "-shared", "-fPIC", "-o", "libgreet.so", "greet.c"], cwd=work, check=True)
    link = ["-L.", "-lgreet", "-Wl,-rpath,$ORIGIN/../lib"]
    run([*cc, "-o", "greet", "main.c", *link], cwd=work, check=True)
    library = Package(
        "libgreet",
        "1.0",
        subdir="linux-64",
        files={
            "lib/libgreet.so": ((work / "libgreet.so").read_bytes(), True),
            "bin/greet": ((work / "greet").read_bytes(), True),
        },
    )
    return [library, noarch_python("pygreet", "1.0", "pygreet", PYGREET, depends=["libgreet"])]


def basic_packages(work: Path, python: str) -> list[Package]:
    """CPython ``python`` and its pip, ``hello-conda`` 1.0 and 2.0 (``hello_conda.VERSION``),
    ``libgreet`` and ``pygreet`` (see :func:`compiled_packages`), compiled in ``work``."""
    hello = [
        noarch_python("hello-conda", v, "hello_conda", f"VERSION = {v!r}\n") for v in ("1.0", "2.0")
    ]
    return [python_package(python), pip_package(python), *hello, *compiled_packages(work)]


def write_channel(channel: Path, packages: list[Package]) -> None:
    """Write and index the packages (every channel has a noarch folder, even if empty)."""
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    (channel / "linux-64").mkdir(parents=True, exist_ok=True)
    for package in packages:
        package.write(channel)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a build stopped mid-download (its size limit) hangs up: expected


@contextmanager
def serve(folder: Path, port: int) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1:``port``; yields the base URL."""
    server = _QuietServer(("127.0.0.1", port), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
