"""The hub's package cache: wheels that finished builds installed, kept for later builds.

Every build has a uv cache of its own on its scratch file system, which goes with it: a
cache the build account could write would let one repository's build plant packages for
every later one. This cache is root's instead (``<binder.root>/packages/wheels``, files
0644 in folders 0755): builds read it through ``uv pip install --find-links`` (uv takes a
wheel found there over downloading the same file from the index, and still resolves
against the index, so unpinned requirements get the newest release as before), and only
root adds to it, after a build finished.

What a build installed only *names* the wheels to keep: the ``*.dist-info`` folders that uv
wrote into the environment (``INSTALLER`` says ``uv``) give the name, the version and the
tags (``WHEEL``), read from the root-owned copy of the environment with no-follow opens.
The files themselves come from the site's package index, checked against the sha256 the
index lists for that file name (PEP 691 JSON, or PEP 503 hash fragments), not from the
build's scratch: uv unpacks wheels as it downloads them and keeps no archive, so nothing a
build has could be checked against the index, and a wheel a build made up (same name,
version and tags, other content) must never reach another build. A wheel the index does not
list (built from a source distribution, or from a local path) is not kept.

The cache is sized by ``binder.package_cache.size`` (the least recently used wheels go
first; a build that installs a wheel again marks it used) and pruned with
``hubstack env prune``.
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import json
import os
import re
import shutil
import stat
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from hubstack.system import NO_FOLLOW_DIR
from hubstack.units import format_size

PYPI = "https://pypi.org/simple"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
META_MAX = 64 * 1024
"""Bytes read of a dist-info file (``WHEEL``, ``INSTALLER``): they are a few lines."""
PAGE_MAX = 32 * 1024**2
"""Bytes read of an index page (numpy's JSON page is about 2 MB)."""
TIMEOUT = 30
_DIST_INFO = re.compile(r"([A-Za-z0-9][A-Za-z0-9._]*)-([A-Za-z0-9.!+_]+)\.dist-info")


@dataclass(frozen=True)
class Installed:
    """One distribution uv installed into an environment, as its dist-info names it."""

    name: str
    version: Version
    tags: frozenset[str]


@dataclass(frozen=True)
class Harvest:
    """What one build added: wheels fetched and checked, wheels already kept, and the
    distributions no index file matched (or whose file failed its check)."""

    added: list[str]
    known: list[str]
    skipped: list[str]


def index_urls(environ: dict[str, str]) -> list[str]:
    """The indexes builds use, from the settings the hub passes to uv, default first."""
    default = environ.get("UV_DEFAULT_INDEX") or environ.get("UV_INDEX_URL") or PYPI
    extra = f"{environ.get('UV_INDEX', '')} {environ.get('UV_EXTRA_INDEX_URL', '')}".split()
    # UV_INDEX entries may be named (name=url).
    return [default, *(url.split("=", 1)[-1] for url in extra)]


class PackageCache:
    """The wheel folder under ``binder.root``, its size limit and how it is filled."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root / "packages"
        self.wheels = self.root / "wheels"
        self.conda = self.root / "conda"  # a read-only layer of rattler's package cache
        self.incoming = self.root / ".incoming"  # root's alone: downloads being checked
        self.repodata = self.root / ".repodata"  # root's reading of the channels' lists
        self.limit = limit

    def create(self) -> None:
        for path, mode in (
            (self.root, 0o755),
            (self.wheels, 0o755),
            (self.conda, 0o755),
            (self.incoming, 0o700),
            (self.repodata, 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)

    def files(self) -> list[tuple[Path, float, int]]:
        """Every wheel and conda package kept: (path, last use, bytes)."""
        return list(self._entries())

    def size(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> Iterator[tuple[Path, float, int]]:
        if self.wheels.is_dir():
            for entry in os.scandir(self.wheels):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and entry.name.endswith(".whl"):
                    yield Path(entry.path), info.st_mtime, info.st_size
        if self.conda.is_dir():
            for entry in os.scandir(self.conda):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    yield Path(entry.path), info.st_mtime, tree_bytes(Path(entry.path))

    def harvest(self, prefix: Path, indexes: list[str]) -> Harvest:
        """Keep the wheels uv installed into the environment at ``prefix`` (root's copy),
        each fetched from ``indexes`` and checked against the hash the index lists."""
        self.create()
        added, known, skipped = [], [], []
        pages: dict[str, list[tuple[str, str, str]]] = {}
        kept_names = [name for name in os.listdir(self.wheels) if name.endswith(".whl")]
        for dist in installed_by_uv(prefix):
            label = f"{dist.name} {dist.version}"
            # Kept already: no need to ask the index (most builds share most wheels).
            kept = next((name for name in kept_names if _is_file_of(name, dist)), None)
            if kept is not None:
                os.utime(self.wheels / kept)  # used again: kept longest
                known.append(kept)
                continue
            match = next(
                (
                    (filename, url, digest)
                    for index in indexes
                    for filename, url, digest in self._page(index, dist.name, pages)
                    if _is_file_of(filename, dist)
                ),
                None,
            )
            if match is None:
                skipped.append(label)
                continue
            filename, url, digest = match
            if self._fetch(url, digest, filename):
                added.append(filename)
            else:
                skipped.append(label)
        return Harvest(added, known, skipped)

    def _page(
        self, index: str, name: str, pages: dict[str, list[tuple[str, str, str]]]
    ) -> list[tuple[str, str, str]]:
        url = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
        if url not in pages:
            try:
                pages[url] = index_files(url)
            except (OSError, ValueError):
                pages[url] = []  # not on this index, or it did not answer: not kept
        return pages[url]

    def _fetch(self, url: str, digest: str, filename: str) -> bool:
        """Download ``url`` into root's incoming folder and keep it only if its sha256 is
        ``digest``; the rename makes it appear whole."""
        partial = self.incoming / f"{filename}.{os.getpid()}.part"
        hasher = hashlib.sha256()
        try:
            with (
                urllib.request.urlopen(url, timeout=TIMEOUT) as response,
                open(partial, "xb") as out,
            ):
                while chunk := response.read(1024 * 1024):
                    hasher.update(chunk)
                    out.write(chunk)
            if hasher.hexdigest() != digest.lower():
                return False
            os.chmod(partial, 0o644)
            os.rename(partial, self.wheels / filename)
            return True
        except OSError:
            return False
        finally:
            partial.unlink(missing_ok=True)

    def trim(
        self, limit: int, unused_for: float | None = None, *, dry_run: bool = False
    ) -> list[str]:
        """Remove wheels unused for ``unused_for`` seconds, then the least recently used
        until the cache holds at most ``limit`` bytes, and interrupted downloads; returns
        the names of the wheels removed (``dry_run``: that would be)."""
        entries = sorted(self._entries(), key=lambda item: item[1])
        total = sum(size for _, _, size in entries)
        cutoff = time.time() - unused_for if unused_for is not None else 0.0
        removed = []
        for path, used, size in entries:
            if total <= limit and used >= cutoff:
                break
            if not dry_run:
                _remove(path)
            total -= size
            removed.append(path.name)
        if self.incoming.is_dir() and not dry_run:
            for leftover in self.incoming.iterdir():
                _remove(leftover)
        return removed

    def summary(self) -> str:
        """How full the cache is, for ``hubstack env list`` and ``prune``."""
        files = self.files()
        wheels = sum(path.parent == self.wheels for path, _, _ in files)
        used = format_size(sum(size for _, _, size in files))
        return (
            f"package cache: {wheels} wheels, {len(files) - wheels} conda packages, "
            f"{used} of {format_size(self.limit)}"
        )


def tree_bytes(top: Path) -> int:
    """Bytes of the files under ``top`` (root's own folder: links are not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(top):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_file_of(filename: str, dist: Installed) -> bool:
    """Whether the index's ``filename`` is the wheel ``dist`` was installed from."""
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return False
    return (
        name == canonicalize_name(dist.name)
        and version == dist.version
        and {str(tag) for tag in tags} == dist.tags
    )


def installed_by_uv(prefix: Path) -> list[Installed]:
    """The distributions uv installed under ``prefix``'s site-packages.

    The environment is root's copy, but its names and contents were chosen by the build:
    every folder is opened without following links, every file is checked to be a regular
    file once opened (a FIFO would block the reader) and read up to :data:`META_MAX`."""
    found = []
    for site in site_packages(prefix):
        try:
            for name in sorted(os.listdir(site)):
                dist = _dist_info(site, name)
                if dist is not None:
                    found.append(dist)
        finally:
            os.close(site)
    return found


def site_packages(prefix: Path) -> list[int]:
    """Open folder descriptors of ``prefix/lib/python*/site-packages``, no link followed
    on the way (the caller closes them)."""
    opened = []
    with contextlib.suppress(OSError):
        fd = os.open(prefix, NO_FOLLOW_DIR)
        try:
            lib = os.open("lib", NO_FOLLOW_DIR, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            for name in sorted(os.listdir(lib)):
                if re.fullmatch(r"python3\.[0-9]+", name):
                    with contextlib.suppress(OSError):
                        python = os.open(name, NO_FOLLOW_DIR, dir_fd=lib)
                        try:
                            opened.append(os.open("site-packages", NO_FOLLOW_DIR, dir_fd=python))
                        finally:
                            os.close(python)
        finally:
            os.close(lib)
    return opened


def _dist_info(site: int, name: str) -> Installed | None:
    found = _DIST_INFO.fullmatch(name)
    if found is None:
        return None
    try:
        version = Version(found[2])
        folder = os.open(name, NO_FOLLOW_DIR, dir_fd=site)
    except (InvalidVersion, OSError):
        return None
    try:
        if read_no_follow(folder, "INSTALLER").strip() != "uv":
            return None
        wheel = read_no_follow(folder, "WHEEL")
    except OSError:
        return None
    finally:
        os.close(folder)
    tags = frozenset(
        line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")
    )
    return Installed(found[1], version, tags) if tags else None


def read_no_follow(folder: int, name: str, limit: int = META_MAX) -> str:
    """The start (``limit`` bytes) of the regular file ``name`` in ``folder``, opened
    without following a link; a FIFO or other special file raises OSError, never blocks."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a file")
        data = bytearray()
        while len(data) < limit and (chunk := os.read(fd, min(limit - len(data), 1 << 20))):
            data += chunk
        return data.decode("utf-8", "replace")
    finally:
        os.close(fd)


def index_files(url: str) -> list[tuple[str, str, str]]:
    """The wheels an index page lists, as (file name, absolute URL, sha256): the JSON
    form where the index offers it, else the HTML form's ``#sha256=`` fragments. Files
    without a sha256 are left out: they could not be checked."""
    request = urllib.request.Request(url, headers={"Accept": JSON_ACCEPT})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        kind = response.headers.get_content_type()
        page_url = response.geturl()
        body = response.read(PAGE_MAX + 1)
    if len(body) > PAGE_MAX:
        raise ValueError(f"the index page {url} is larger than {PAGE_MAX} bytes")
    found = []
    if kind.endswith("json"):
        for entry in json.loads(body).get("files", []):
            digest = (entry.get("hashes") or {}).get("sha256")
            found.append((entry.get("filename", ""), urljoin(page_url, entry["url"]), digest))
    else:
        links = _Links()
        links.feed(body.decode("utf-8", "replace"))
        for href, text in links.found:
            target, fragment = urldefrag(urljoin(page_url, href))
            digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
            name = text.strip() or os.path.basename(urlsplit(target).path)
            found.append((name, target, digest))
    return [
        (name, target, digest)
        for name, target, digest in found
        if name.endswith(".whl")
        and digest
        and re.fullmatch(r"[0-9a-fA-F]{64}", digest)
        and urlsplit(target).scheme in ("http", "https")
    ]


class _Links(html.parser.HTMLParser):
    """The ``<a href>`` links of a PEP 503 page with their text."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            if self._href is not None:
                self.found.append((self._href, ""))

    def handle_data(self, data: str) -> None:
        if self._href is not None and self.found:
            href, text = self.found[-1]
            self.found[-1] = (href, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None
