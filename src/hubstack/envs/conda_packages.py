"""Conda packages in the hub's package cache: what finished conda builds installed, checked
against the channel's own hashes, extracted by root in the layout of rattler's package cache
(``<binder.root>/packages/conda/<name>-<version>-<build>/``).

A conda build (see :mod:`hubstack.envs.conda_install`) copies the packages it needs from
this folder, which it can read but not write, into its own scratch cache, where rattler
installs them without a download or an extraction; anything else is downloaded there.

As for wheels (:mod:`hubstack.envs.packages`), what a build installed only names the
packages: the records in the environment's ``conda-meta`` (root's copy, read with no-follow
opens) give the channel, the platform folder and the file name. The channel must be one the
hub allows (its URL as the hub builds it from ``binder.conda``); the sha256 comes from the
channel's package lists as the hub reads them itself with rattler's gateway (sharded
repodata where the channel has it), never from the build; the archive is downloaded by the
hub, checked, and extracted by rattler into root's incoming folder, and made root's and
read-only (no set-id bits, no special files) before it is renamed into place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import stat
import urllib.request
from pathlib import Path

import rattler
from rattler.package_streaming import extract

from hubstack.envs.packages import TIMEOUT, Harvest, PackageCache, read_no_follow
from hubstack.system import NO_FOLLOW_DIR

RECORD_MAX = 256 * 1024**2
"""Bytes read of one conda-meta record (a large package lists many files in it)."""
ARCHIVE_MAX = 4 * 1024**3
_FILE = re.compile(r"([A-Za-z0-9_.+-]+)\.(conda|tar\.bz2)")
_SUBDIR = re.compile(r"[a-z0-9-]{1,32}")


def open_conda_meta(prefix: Path) -> int | None:
    """A descriptor of ``prefix/conda-meta``, opened with no link followed; None if absent."""
    try:
        top = os.open(prefix, NO_FOLLOW_DIR)
    except OSError:
        return None
    try:
        return os.open("conda-meta", NO_FOLLOW_DIR, dir_fd=top)
    except OSError:
        return None
    finally:
        os.close(top)


def installed_conda(prefix: Path) -> list[tuple[str, str, str]]:
    """(channel URL, platform folder, file name) of each conda package in ``prefix``, as its
    ``conda-meta`` records name them (checked for shape only: they are the build's words)."""
    found = []
    meta = open_conda_meta(prefix)
    if meta is None:
        return []
    try:
        for name in sorted(os.listdir(meta)):
            if not name.endswith(".json"):
                continue
            try:
                record = json.loads(read_no_follow(meta, name, RECORD_MAX))
                channel, subdir, fn = record["channel"], record["subdir"], record["fn"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if (
                isinstance(channel, str)
                and isinstance(subdir, str)
                and isinstance(fn, str)
                and _SUBDIR.fullmatch(subdir)
                and _FILE.fullmatch(fn)
            ):
                found.append((channel.rstrip("/"), subdir, fn))
    finally:
        os.close(meta)
    return found


def harvest_conda(cache: PackageCache, prefix: Path, channels: list[str]) -> Harvest:
    """Keep the conda packages installed in ``prefix`` that come from one of ``channels``
    (URLs), each checked against the sha256 the channel lists for its file."""
    cache.create()
    allowed = {url.rstrip("/") for url in channels}
    added, known, skipped = [], [], []
    wanted = [item for item in installed_conda(prefix) if item[0] in allowed]
    skipped += [fn for channel, _, fn in installed_conda(prefix) if channel not in allowed]
    hashes = _channel_hashes(cache, wanted)
    for channel, subdir, fn in wanted:
        stem = _FILE.fullmatch(fn)[1]  # type: ignore[index]
        kept = cache.conda / stem
        if kept.is_dir():
            os.utime(kept)
            known.append(stem)
        elif (digest := hashes.get((channel, subdir, fn))) and _fetch(
            cache, f"{channel}/{subdir}/{fn}", digest, fn, stem
        ):
            added.append(stem)
        else:
            skipped.append(fn)
    return Harvest(added, known, skipped)


def _channel_hashes(
    cache: PackageCache, wanted: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    """The sha256 each channel lists for the wanted files, read by the hub with rattler's
    gateway (its cache is root's)."""
    if not wanted:
        return {}
    names = sorted({_FILE.fullmatch(fn)[1].rsplit("-", 2)[0] for _, _, fn in wanted})  # type: ignore[index]
    channels = sorted({channel for channel, _, _ in wanted})
    subdirs = sorted({subdir for _, subdir, _ in wanted})

    async def query() -> list[list[rattler.RepoDataRecord]]:
        gateway = rattler.Gateway(cache_dir=cache.repodata)
        found = await gateway.query(channels, subdirs, names, recursive=False)
        return list(found)

    hashes = {}
    for records in asyncio.run(query()):
        for record in records:
            if record.sha256 is not None:
                key = (str(record.channel).rstrip("/"), record.subdir, record.file_name)
                hashes[key] = record.sha256.hex()
    return hashes


def _fetch(cache: PackageCache, url: str, digest: str, fn: str, stem: str) -> bool:
    """Download, check and extract one archive; it appears in the cache whole or not at all."""
    archive = cache.incoming / f"{os.getpid()}-{fn}"  # rattler reads the format from the name
    unpacked = cache.incoming / f"{stem}.{os.getpid()}.d"
    hasher = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(archive, "xb") as out:
            size = 0
            while chunk := response.read(1024 * 1024):
                size += len(chunk)
                if size > ARCHIVE_MAX:
                    return False
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != digest.lower():
            return False
        extract(archive, unpacked)
        _make_read_only(unpacked)
        os.rename(unpacked, cache.conda / stem)
        return True
    except (OSError, RuntimeError, ValueError):
        return False
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)


def _make_read_only(top: Path) -> None:
    """Folders 0755, files 0644 or 0755, links as they are, nothing else (root extracted
    them into its own folder, which nobody else can reach)."""
    for folder, dirs, files in os.walk(top):
        os.chmod(folder, 0o755)
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)
            elif not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                os.unlink(path)
