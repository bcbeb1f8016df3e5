"""A conda channel made by the tests and served over HTTP on loopback.

The public channels cannot be reached from the test machines, so the conda builds are tested
against packages written here in the conda package format (``.tar.bz2``: the files, and
``info/index.json``, ``info/paths.json`` and ``info/files``) and indexed by rattler itself
(:func:`rattler.index.index_fs`), as a channel's own tooling would.

:func:`python_package` repackages one of the machine's pyenv CPython builds (a version other
than the host's), so a channel here can provide an interpreter: pyenv's builds link
``libpython`` by an absolute RUNPATH, which is rewritten in place to ``$ORIGIN/../lib``, as
conda-forge's own ``python`` package does.

:func:`r_packages` repackages Debian's R (``r-base-core``, and ``r-cran-irkernel``,
``r-cran-remotes`` and the R packages they need, which ``scripts/setup.sh --r`` installs) as
``r-base`` and ``r-<name>`` packages laid out as conda-forge's are (``lib/R``, packages in
``lib/R/library``); the paths Debian's R has built in are written with a prefix placeholder,
which the installer replaces with the environment's path, as for conda-forge's own R. Its
shared libraries (BLAS, readline, ZeroMQ) come from the host. :func:`cran_repository` makes a
CRAN-like repository of two small source packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import run

from httpfake import serving
from rattler.index import index_fs

PYENV = Path("/root/.pyenv/versions")
# The build prefix conda packages name in their text files; installers put the environment's.
PLACEHOLDER = "/opt/hubstack-placeholder-prefix-for-relocation"
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
    with_prefix: set[str] = field(default_factory=set)  # text files holding PLACEHOLDER

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
                entry: dict[str, object] = {
                    "_path": rel,
                    "path_type": "hardlink",
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "size_in_bytes": len(content),
                }
                if rel in self.with_prefix:
                    entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
                entries.append(entry)
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
    with serving(server):
        yield f"http://127.0.0.1:{port}"


DEBIAN_R = Path("/usr/lib/R")
# Debian's R paths and where conda-forge's layout has them, under the environment's prefix.
_R_PATHS = (
    ("/usr/share/R/share", "lib/R/share"),
    ("/usr/share/R/include", "lib/R/include"),
    ("/usr/share/R/doc", "lib/R/doc"),
    ("/usr/lib/R", "lib/R"),
)
# Not needed to run R here: message translations, the manuals, the host's site library.
_R_SKIPPED = ("library/translations", "site-library", "doc/manual")
# The R packages the test channel has: IRkernel's closure and remotes (Debian's names).
R_LIBRARIES = ("IRkernel", "remotes")
_R_BASE_PACKAGES = {"R", "base", "compiler", "datasets", "grDevices", "graphics", "grid",
                    "methods", "parallel", "splines", "stats", "stats4", "tcltk", "tools",
                    "utils"}  # fmt: skip


def _relocated(content: bytes) -> bytes | None:
    """A text file's content with Debian's R paths under the placeholder, or None if it
    names none of them (binaries are left as they are: R finds its home from R_HOME)."""
    if b"\0" in content or not any(old.encode() in content for old, _ in _R_PATHS):
        return None
    # Debian's wrapper prefers an R under /usr/lib64 or /usr/lib to its own home: not here.
    content = content.replace(b'if test "${R_HOME_DIR}" = "/usr/lib/R"; then', b"if false; then")
    for old, new in _R_PATHS:
        content = content.replace(old.encode(), f"{PLACEHOLDER}/{new}".encode())
    return content


def _add_tree(package: Package, source: Path, dest: str, skipped: tuple[str, ...] = ()) -> None:
    """Files under ``source`` (links to files followed) at ``dest`` in the package."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if any(rel == skip or rel.startswith(f"{skip}/") for skip in skipped) or not path.is_file():
            continue
        content = path.read_bytes()
        name = f"{dest}/{rel}"
        if (relocated := _relocated(content)) is not None:
            content = relocated
            package.with_prefix.add(name)
        package.files[name] = (content, bool(path.stat().st_mode & 0o111))


def r_base_package() -> Package:
    """Debian's R as conda-forge's ``r-base``: ``lib/R`` with ``bin/R`` and ``bin/Rscript``."""
    version = _description(DEBIAN_R / "library/base")["Version"]
    package = Package("r-base", version, subdir="linux-64", build="0_hubstack")
    _add_tree(package, DEBIAN_R, "lib/R", _R_SKIPPED)
    for folder in ("share", "include", "doc"):
        _add_tree(package, Path("/usr/share/R") / folder, f"lib/R/{folder}", ("manual",))
    # Debian's own site settings (its site library, its CRAN) are not the environment's.
    for name in ("Renviron.site", "Rprofile.site"):
        package.files[f"lib/R/etc/{name}"] = (b"", False)
    renviron = package.files["lib/R/etc/Renviron"][0]
    renviron = renviron.replace(b"/usr/local/lib/R/site-library:", b"")
    package.files["lib/R/etc/Renviron"] = (renviron, False)
    # Rscript runs the R of its compiled-in home unless RHOME names another.
    package.files["lib/R/bin/Rscript.debian"] = package.files.pop("lib/R/bin/Rscript")
    wrapper = (
        f'#!/bin/sh\nRHOME={PLACEHOLDER}/lib/R exec {PLACEHOLDER}/lib/R/bin/Rscript.debian "$@"\n'
    )
    package.files["lib/R/bin/Rscript"] = (wrapper.encode(), True)
    package.with_prefix.add("lib/R/bin/Rscript")
    package.links.update({"bin/R": "../lib/R/bin/R", "bin/Rscript": "../lib/R/bin/Rscript"})
    return package


def _description(folder: Path) -> dict[str, str]:
    """An installed R package's DESCRIPTION fields (continuation lines joined)."""
    fields: dict[str, str] = {}
    key = ""
    for line in (folder / "DESCRIPTION").read_text().splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _r_dependencies(fields: dict[str, str]) -> list[str]:
    names = []
    for part in f"{fields.get('Depends', '')},{fields.get('Imports', '')}".split(","):
        name = part.split("(")[0].strip()
        if name and name not in _R_BASE_PACKAGES:
            names.append(name)
    return names


def r_packages() -> list[Package]:
    """``r-base`` and an ``r-<name>`` package for each of :data:`R_LIBRARIES` and what they
    need, from Debian's site library (compiled ones are linux-64, the rest noarch)."""
    base = r_base_package()
    packages, todo = {}, list(R_LIBRARIES)
    while todo:
        name = todo.pop()
        if name in packages:
            continue
        folder = DEBIAN_R / "site-library" / name
        fields = _description(folder)
        needs = _r_dependencies(fields)
        compiled = (folder / "libs").is_dir()
        package = Package(
            f"r-{name.lower()}",
            fields["Version"].replace("-", "_"),
            subdir="linux-64" if compiled else "noarch",
            depends=[f"r-base {base.version}", *(f"r-{need.lower()}" for need in needs)],
        )
        _add_tree(package, folder, f"lib/R/library/{name}")
        packages[name] = package
        todo += needs
    return [base, *packages.values()]


R_CACHE = Path("/var/tmp/hubstack-tests/r-packages")


def write_r_packages(channel: Path) -> None:
    """The archives of :func:`r_packages` into ``channel`` (indexed by :func:`write_channel`).

    Compressing Debian's R takes a quarter of a minute here, so the archives are kept in
    :data:`R_CACHE` under a digest of what they are made from (the Debian packages' versions
    and this file): test modules after the first copy them.
    """
    debian = run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "r-base-core", "r-cran-*"],
        capture_output=True,
        check=True,
    ).stdout
    key = hashlib.sha256(debian + Path(__file__).read_bytes()).hexdigest()[:16]
    kept = R_CACHE / key
    if not kept.is_dir():
        R_CACHE.mkdir(parents=True, exist_ok=True)
        staging = R_CACHE / f".{key}.{os.getpid()}"
        for package in r_packages():
            package.write(staging)
        with contextlib.suppress(OSError):  # another module made it meanwhile: the same
            staging.rename(kept)
        shutil.rmtree(staging, ignore_errors=True)
        for old in R_CACHE.glob("[!.]*"):  # made from other versions: not needed again
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    for archive in kept.glob("*/*.tar.bz2"):
        (channel / archive.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, channel / archive.parent.name / archive.name)


# The CRAN-like repository's source packages: name -> (exported function, its R code).
CRAN_PACKAGES = {
    "hubstackgreet": (
        "greeting",
        'function(who = "R") paste0("hello from ", who, ", said hubstackgreet")',
    ),
    "hubstackshout": ("shout", "function(text) toupper(text)"),
}


def cran_repository(folder: Path, work: Path) -> None:
    """A CRAN-like repository at ``folder`` of :data:`CRAN_PACKAGES` (version 0.1 each, as
    source packages), indexed by R's own ``tools::write_PACKAGES``."""
    contrib = folder / "src/contrib"
    contrib.mkdir(parents=True)
    for name, (function, code) in CRAN_PACKAGES.items():
        description = (
            f"Package: {name}\nVersion: 0.1\nTitle: A Package for Tests\n"
            "Description: Installed from a CRAN-like repository.\n"
            "Authors@R: person('Hub', 'Stack', email = 'hub@example.org', role = c('aut', 'cre'))\n"
            "License: MIT\n"
        )
        files = {
            "DESCRIPTION": description,
            "NAMESPACE": f"export({function})\n",
            f"R/{function}.R": f"{function} <- {code}\n",
        }
        with tarfile.open(contrib / f"{name}_0.1.tar.gz", "w:gz") as tar:
            for rel, text in files.items():
                _add(tar, f"{name}/{rel}", text.encode(), 0o644)
    index = f"tools::write_PACKAGES({str(contrib)!r}, type = 'source')"
    run(["/usr/bin/Rscript", "-e", index], cwd=work, check=True)
