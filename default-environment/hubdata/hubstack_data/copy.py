"""Copies between a server's files and a storage connection: resumable, checksummed.

Each file goes through the library's own ``put_file``/``get_file`` (adlfs and s3fs move
large files in parallel blocks, several files at once here); an S3 object is hashed while
s3fs writes it (``hashed_get``). A copy is then verified
against the store's own digest of the object (S3's ETag, Azure's Content-MD5; see
``digest``), taken from one listing of the source (downloads) or of the destination after
the uploads, by hashing the local file: the object is not moved twice and no request is
made per file. Where the store gives no digest or it does not match, the object is read
again and SHA-256 of both sides compared. A local destination is written under a
temporary name and renamed when verified, and an object in a store appears only when its
upload completes, so after an interruption a file either is whole or is missing: a rerun
copies what is missing or differs in size (``checksum``: also what differs in content).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import Callback
from fsspec.implementations.local import LocalFileSystem

from hubstack_data import digest

CHUNK = 8 * 1024 * 1024
# Files copied at once: many small files need many requests in flight (each is mostly
# waiting on the store), large ones few (the library may hold a whole part or small file
# in memory), so the number follows the largest file to keep about IN_FLIGHT bytes held.
WORKERS = (4, 64)
IN_FLIGHT = 512 * 1024 * 1024
# Blocks of one file in flight at once over all files (s3fs's default for one file): one
# file gets them all, many files one each.
PARTS = 10
PARTIAL = ".hubdata-partial"
# A large S3 object comes in as S3_STREAMS ranged GETs at once (rclone's default number of
# streams), each of S3_RANGE bytes, so that IN_FLIGHT bytes are held: fewer, larger ranges
# than s3fs's default (10 of 50 MiB), each one request that a store (moto: the whole object
# copied for each) serves once.
S3_STREAMS = 4
S3_RANGE = IN_FLIGHT // S3_STREAMS
# azure-storage-blob's max_single_put_size: larger blobs are sent in blocks.
AZURE_SINGLE_PUT = 64 * 1024 * 1024


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
    info: dict[str, Any]  # the source's, from its listing (a store's holds its digest)
    reason: str = "missing"
    md5: str | None = None  # the file's, in the store's form, when the upload computed it


def listing(side: Side, recursive: bool) -> dict[str, dict[str, Any]]:
    """Each file to copy by relative path, with its info; '' for a single file."""
    info = side.fs.info(side.path)
    if info["type"] != "directory":
        return {"": info}
    if not recursive:
        raise IsADirectoryError(f"{side.label} is a directory: add -r to copy it")
    base = side.path.rstrip("/")
    return {
        posixpath.relpath(path, base) if base else path: detail
        for path, detail in sorted(side.fs.find(base, detail=True).items())
        if detail["type"] != "directory" and not path.endswith(PARTIAL)
    }


def existing(side: Side, paths: list[str], under: str) -> dict[str, dict[str, Any]]:
    """The infos of those of ``paths`` that exist: one listing of ``under`` (one request
    per thousand objects, not one per file) or, for one path, its own."""
    if len(paths) == 1:
        try:
            return {paths[0]: side.fs.info(paths[0])}
        except FileNotFoundError:
            return {}
    try:
        found = side.fs.find(under.rstrip("/"), detail=True)
    except FileNotFoundError:
        return {}
    wanted = set(paths)
    return {path: info for path, info in found.items() if path in wanted}


def sha256_of(fs: AbstractFileSystem, path: str) -> str:
    hasher = hashlib.sha256()
    with fs.open(path, "rb", block_size=CHUNK) as src:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def plan(src: Side, dst: Side, recursive: bool, checksum: bool) -> list[Item]:
    """The files to copy, skipping those already at the destination."""
    items = []
    for rel, info in listing(src, recursive).items():
        if rel:
            target = posixpath.join(dst.path, rel) if dst.path else rel
            source = posixpath.join(src.path.rstrip("/"), rel) if src.path else rel
        else:
            source = src.path
            into = dst.path.endswith("/") or (dst.path and dst.fs.isdir(dst.path))
            name = posixpath.basename(src.path.rstrip("/"))
            target = posixpath.join(dst.path, name) if into or not dst.path else dst.path
        items.append(Item(source, target, int(info["size"]), info))
    there = existing(dst, [item.dst for item in items], dst.path)
    todo = []
    for item in items:
        if item.dst not in there:
            todo.append(item)
            continue
        if int(there[item.dst].get("size") or 0) != item.size:
            item.reason = "size differs"
        elif checksum and not same_content(src, dst, item, there[item.dst]):
            item.reason = "checksum differs"
        else:
            continue
        todo.append(item)
    return todo


def same_content(src: Side, dst: Side, item: Item, there: dict[str, Any]) -> bool:
    """Whether the file and the object hold the same bytes: by the store's digest when it
    has one that matches, else by SHA-256 of both (the object read again)."""
    local_path, info = (item.src, there) if src.local else (item.dst, item.info)
    if digest.matches(local_path, info):
        return True
    return sha256_of(src.fs, item.src) == sha256_of(dst.fs, item.dst)


class Progress(Callback):
    """fsspec's callback (s3fs counts bytes up, adlfs reports totals) as byte deltas."""

    def __init__(self, report: Callable[[int], Any]) -> None:
        super().__init__()
        self.report = report
        self.reported = 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        self.report(self.value - self.reported)
        self.reported = self.value


def upload(dst: Side, item: Item, parts: int, progress: Callable[[int], Any]) -> None:
    """One file into the store; verified afterwards, with the others (``verify_uploads``)."""
    options: dict[str, Any] = {"max_concurrency": parts}
    if item.size > AZURE_SINGLE_PUT and "abfs" in getattr(dst.fs, "fs", dst.fs).protocol:
        # Azure sets Content-MD5 itself only for a blob sent in one request; a larger one
        # gets the file's, for later copies to verify against, and the service checks
        # every block it receives against the MD5 of what was read (validate_content).
        item.md5 = digest.of_file(item.src)
        md5 = bytearray(bytes.fromhex(item.md5))
        options |= {"content_settings": {"content_md5": md5}, "validate_content": True}
    hashing = None
    if "s3" in getattr(dst.fs, "fs", dst.fs).protocol and digest.s3fs_parts(item.size):
        # A multipart upload's ETag is checked against the file's part MD5s, computed
        # while the parts are sent rather than after.
        hashing = ThreadPoolExecutor(1)
        part_md5 = hashing.submit(digest.of_file, item.src, digest.s3fs_parts(item.size))
    try:
        dst.fs.put_file(item.src, item.dst, callback=Progress(progress), **options)
    finally:
        if hashing is not None:
            hashing.shutdown()
    if hashing is not None:
        item.md5 = part_md5.result()


def download(src: Side, item: Item, parts: int, progress: Callable[[int], Any]) -> None:
    """One object to a local file: written beside it, renamed when verified."""
    partial = item.dst + PARTIAL
    os.makedirs(os.path.dirname(partial) or ".", exist_ok=True)
    stored = digest.of(item.info)
    if stored is not None and "s3" in getattr(src.fs, "fs", src.fs).protocol:
        computed: str | None = hashed_get(src, item, partial, parts, progress, stored.part_size)
    else:
        src.fs.get_file(item.src, partial, callback=Progress(progress), max_concurrency=parts)
        computed = None
    if not verified(partial, item.info, src, item.src, computed):
        os.unlink(partial)
        raise mismatch(item.src, item.dst)
    os.replace(partial, item.dst)


def hashed_get(
    src: Side,
    item: Item,
    partial: str,
    parts: int,
    progress: Callable[[int], Any],
    part_size: int | None,
) -> str:
    """s3fs's own ``get_file`` (ranges in parallel, as a user's ``get`` does), with the
    file's digest in the store's form computed while it is written: s3fs writes the object
    in order and counts each write, so a thread hashes the written part, from the page
    cache, behind it, and no second pass over the file follows the download."""
    hasher = digest.Hasher(part_size)
    more, finished, failed = threading.Event(), threading.Event(), threading.Event()

    def written(count: int) -> None:
        progress(count)
        if count:  # a write, not s3fs's announcing the size (before the file exists)
            more.set()

    counter = Progress(written)

    def follow() -> None:
        done = 0
        more.wait()  # s3fs has created the file by its first write
        if failed.is_set() or not os.path.exists(partial):
            return
        fd = os.open(partial, os.O_RDONLY)
        try:
            while True:
                # s3fs's file object may still buffer its last few KiB; all is on disk once
                # get_file has returned.
                last = finished.is_set()
                end = item.size if last else counter.value - io.DEFAULT_BUFFER_SIZE
                while done < end:
                    data = os.pread(fd, min(CHUNK, end - done), done)
                    if not data:
                        break
                    hasher.update(data)
                    done += len(data)
                if last or failed.is_set():
                    return
                more.wait()
                more.clear()
        finally:
            os.close(fd)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        src.fs.get_file(
            item.src,
            partial,
            callback=counter,
            max_concurrency=min(parts, S3_STREAMS),
            chunksize=S3_RANGE,
        )
    except BaseException:
        failed.set()
        raise
    finally:
        finished.set()
        more.set()
        follower.join()
    return hasher.hexdigest()


def verified(
    local_path: str, info: dict[str, Any], store: Side, remote: str, computed: str | None = None
) -> bool:
    """The local file holds the object's bytes: by the store's digest (against
    ``computed``, the file's in the store's form, if given), else (none, or one that is
    not an MD5) by SHA-256 of both, reading the object again."""
    stored = digest.of(info)
    if computed is not None and stored is not None and stored.md5 == computed:
        return True
    if computed is None and digest.matches(local_path, info):
        return True
    return sha256_of(LocalFileSystem(), local_path) == sha256_of(store.fs, remote)


def mismatch(src: str, dst: str) -> CopyStopped:
    return CopyStopped(
        f"checksum mismatch: {dst} differs from what was read from {src} (removed); "
        "run the copy again"
    )


def verify_uploads(dst: Side, items: list[Item]) -> None:
    """Compare every uploaded object with its file, from one listing of the destination;
    every object that differs is removed."""
    after = existing(dst, [item.dst for item in items], dst.path)
    bad = None
    for item in items:
        info = after.get(item.dst)
        stored = digest.of(info) if info else None
        if stored and item.md5 and stored.md5 == item.md5 and info["size"] == item.size:
            # The store's digest of what it received (an ETag; an Azure blob's Content-MD5,
            # which the service checked every block against) is the file's.
            continue
        if info is None or not verified(item.src, info, dst, item.dst):
            if info is not None:
                dst.fs.rm_file(item.dst)
            bad = bad or mismatch(item.src, item.dst)
    if bad is not None:
        raise bad


def run(
    src: Side,
    dst: Side,
    items: list[Item],
    progress: Callable[[int], Any],
    finished: Callable[[Item], Any] = lambda item: None,
) -> int:
    """Copy ``items``, calling ``finished`` with each copied; the number copied. A full
    quota or disk stops every copy and says so; files copied by then are kept, partial
    ones removed."""
    copied: list[Item] = []
    failure: BaseException | None = None
    largest = max((item.size for item in items), default=0)
    workers = min(max(WORKERS[0], IN_FLIGHT // max(largest, 1)), WORKERS[1], len(items) or 1)
    parts = max(1, PARTS // workers)
    one = partial(upload, dst) if src.local else partial(download, src)
    with ThreadPoolExecutor(workers) as pool:
        futures = [(item, pool.submit(one, item, parts, progress)) for item in items]
        for item, future in futures:
            try:
                future.result()
                copied.append(item)
                finished(item)
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
    if src.local and copied:
        verify_uploads(dst, copied)
    if isinstance(failure, OSError) and failure.errno in (errno.EDQUOT, errno.ENOSPC):
        raise CopyStopped(
            f"stopped: no space left for {dst.label} (the home quota or the disk is full). "
            f"{len(copied)} of {len(items)} files were copied and are kept; free space and "
            "run the same command again to copy the rest"
        )
    if failure is not None:
        raise failure
    return len(copied)
