"""Copies between a server's files and a storage connection: resumable, checksummed.

Each download is streamed through fsspec (adlfs or s3fs do the store's protocol) while its
SHA-256 is computed; each upload is hashed, then handed to the library's ``put_file``. The
destination is then read back and its SHA-256 compared. A local
destination is written under a temporary name and renamed when complete, and an object in a
store appears only when its upload completes, so after an interruption a file either is
whole or is missing: a rerun copies what is missing or differs in size (``checksum``: also
what differs in content).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

CHUNK = 8 * 1024 * 1024
WORKERS = 8
PARTIAL = ".hubdata-partial"


class CopyStopped(Exception):
    """The copy could not go on (a full quota, a changed or corrupt file); what was
    copied is kept."""


@dataclass
class Side:
    fs: AbstractFileSystem
    path: str
    label: str  # as the user wrote it, for messages

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)


@dataclass
class Item:
    src: str
    dst: str
    size: int
    reason: str = "missing"


def files_of(side: Side, recursive: bool) -> Iterator[tuple[str, int]]:
    """(relative path, size) of each file to copy; ('', size) for a single file."""
    info = side.fs.info(side.path)
    if info["type"] != "directory":
        yield "", int(info["size"])
        return
    if not recursive:
        raise IsADirectoryError(f"{side.label} is a directory: add -r to copy it")
    base = side.path.rstrip("/")
    for path, detail in sorted(side.fs.find(base, detail=True).items()):
        if detail["type"] == "directory" or path.endswith(PARTIAL):
            continue
        yield posixpath.relpath(path, base) if base else path, int(detail["size"])


def sha256_of(fs: AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=CHUNK) as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plan(src: Side, dst: Side, recursive: bool, checksum: bool) -> list[Item]:
    """The files to copy, skipping those already at the destination."""
    items = []
    for rel, size in files_of(src, recursive):
        if rel:
            target = posixpath.join(dst.path, rel) if dst.path else rel
            source = posixpath.join(src.path.rstrip("/"), rel) if src.path else rel
        else:
            source = src.path
            into = dst.path.endswith("/") or (dst.path and dst.fs.isdir(dst.path))
            name = posixpath.basename(src.path.rstrip("/"))
            target = posixpath.join(dst.path, name) if into or not dst.path else dst.path
        item = Item(source, target, size)
        try:
            there = dst.fs.info(target)
        except FileNotFoundError:
            items.append(item)
            continue
        if int(there.get("size") or 0) != size:
            item.reason = "size differs"
        elif checksum and sha256_of(src.fs, source) != sha256_of(dst.fs, target):
            item.reason = "checksum differs"
        else:
            continue
        items.append(item)
    return items


def copy_one(src: Side, dst: Side, item: Item, progress: Callable[[int], Any]) -> None:
    if src.local:
        # Uploads go through the library's own put_file (adlfs and s3fs upload large
        # files in parallel blocks); the local file's hash is read from the page cache.
        expected = sha256_of(src.fs, item.src)
        dst.fs.put_file(item.src, item.dst)
        progress(item.size)
        verify(dst, item, expected)
        return
    digest = hashlib.sha256()
    target = item.dst + PARTIAL if dst.local else item.dst
    if dst.local:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with (
        src.fs.open(item.src, "rb", block_size=CHUNK) as reader,
        dst.fs.open(target, "wb", block_size=CHUNK) as writer,
    ):
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            progress(len(chunk))
    if dst.local:
        os.replace(target, item.dst)
    verify(dst, item, digest.hexdigest())


def verify(dst: Side, item: Item, expected: str) -> None:
    if sha256_of(dst.fs, item.dst) != expected:
        dst.fs.rm_file(item.dst)
        raise CopyStopped(
            f"checksum mismatch: {item.dst} differs from what was read from {item.src} "
            "(removed); run the copy again"
        )


def run(src: Side, dst: Side, items: list[Item], progress: Callable[[int], Any]) -> int:
    """Copy ``items``; the number copied. A full quota or disk stops every copy and says so;
    files copied by then are kept, partial ones removed."""
    done = 0
    failure: BaseException | None = None
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [(item, pool.submit(copy_one, src, dst, item, progress)) for item in items]
        for item, future in futures:
            try:
                future.result()
                done += 1
            except CancelledError:
                continue
            except OSError as exc:
                if dst.local:
                    with_partial = item.dst + PARTIAL
                    if os.path.lexists(with_partial):
                        os.unlink(with_partial)
                if failure is None:
                    failure = exc
                    pool.shutdown(cancel_futures=True)
            except CopyStopped as exc:
                failure = failure or exc
    if isinstance(failure, OSError) and failure.errno in (errno.EDQUOT, errno.ENOSPC):
        raise CopyStopped(
            f"stopped: no space left for {dst.label} (the home quota or the disk is full). "
            f"{done} of {len(items)} files were copied and are kept; free space and run the "
            "same command again to copy the rest"
        )
    if failure is not None:
        raise failure
    return done
