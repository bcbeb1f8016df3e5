"""Copies between a server's files and a storage connection: resumable, checksummed.

Uploads go through the library's own ``put_file`` (adlfs and s3fs move large files in
parallel blocks, several files at once here); downloads stream through s3fs's client or
the Azure SDK's and hash the object on the way in (``s3_get``, ``azure_get``). A copy is
then verified
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

import asyncio
import errno
import hashlib
import os
import posixpath
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
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
# A large S3 object comes in as ranges of at least S3_RANGE bytes, up to S3_STREAMS at once
# (rclone's default number of streams), each streamed to the file: nothing is held whole.
# Ranges are large because each is a request that a store serves separately (moto copies
# the whole object for each: one stream of 512 MiB came in at 500 MB/s there, four of
# 128 MiB at 240).
S3_STREAMS = 4
S3_RANGE = 512 * 1024 * 1024
# A blob comes in as requests of AZURE_GET bytes, read from the socket AZURE_READ at a time
# (the SDK's defaults: 4 MiB and 4 KiB).
AZURE_GET = 32 * 1024 * 1024
AZURE_READ = 1024 * 1024
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
    """One object to a local file through the library's ``get_file`` (a store other than
    S3 or Azure): written beside it, renamed when verified."""
    os.makedirs(os.path.dirname(item.dst) or ".", exist_ok=True)
    src.fs.get_file(item.src, item.dst + PARTIAL, callback=Progress(progress))
    settle(src, item, None)


def settle(src: Side, item: Item, computed: str | None) -> None:
    """The downloaded file renamed into place if verified, else removed."""
    if not verified(item.dst + PARTIAL, item.info, src, item.src, computed):
        os.unlink(item.dst + PARTIAL)
        raise mismatch(item.src, item.dst)
    os.replace(item.dst + PARTIAL, item.dst)


Fetch = Callable[..., Coroutine[Any, Any, str | None]]


def streamer(side: Side) -> Fetch | None:
    """How objects of ``side``'s store are streamed in, if hubdata does it itself."""
    protocol = getattr(side.fs, "fs", side.fs).protocol
    return s3_get if "s3" in protocol else azure_get if "abfs" in protocol else None


class Downloads:
    """Downloads from S3 or Azure, each a task on the library's own event loop (s3fs and
    adlfs are asyncio), ``workers`` at once: not a thread each that waits on the loop,
    which for many small files cost more CPU than the copies (the GIL passed between
    64 threads). Submitted and stopped as a thread pool's work is, for ``run``."""

    def __init__(self, src: Side, fetch: Fetch, workers: int, parts: int, progress: Any) -> None:
        self.src, self.fetch, self.parts, self.progress = src, fetch, parts, progress
        self.store = getattr(src.fs, "fs", src.fs)  # the library's, under a DirFileSystem
        self.limit = asyncio.Semaphore(workers)
        self.stopped = threading.Event()

    def submit(self, item: Item) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(self.one(item), self.store.loop)

    def stop(self) -> None:
        """Start no further download; those under way finish."""
        self.stopped.set()

    async def one(self, item: Item) -> None:
        async with self.limit:
            if self.stopped.is_set():
                raise asyncio.CancelledError
            os.makedirs(os.path.dirname(item.dst) or ".", exist_ok=True)
            path = self.src.fs._join(item.src) if self.store is not self.src.fs else item.src
            partial = item.dst + PARTIAL
            computed = await self.fetch(self.store, path, item, partial, self.parts, self.progress)
            await asyncio.to_thread(settle, self.src, item, computed)


class Writer:
    """Bytes of an object as they come in, from ``offset`` on: gathered into blocks (a
    list, not copied together), one block written to its place and hashed in a thread
    while the next comes, so that the download is one pass over the bytes."""

    def __init__(
        self, fd: int, offset: int, hasher: digest.Hasher | None, progress: Callable[[int], Any]
    ) -> None:
        self.fd, self.offset, self.hasher, self.progress = fd, offset, hasher, progress
        self.block: list[bytes] = []
        self.size = 0
        self.pending: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        self.block.append(chunk)
        self.size += len(chunk)
        if self.size >= CHUNK:
            await self.wait()
            self.pending = asyncio.ensure_future(asyncio.to_thread(self.keep, *self.passed()))

    async def close(self) -> int:
        """Write what is left; the offset after the last byte."""
        await self.wait()
        if self.block:
            await asyncio.to_thread(self.keep, *self.passed())
        return self.offset

    async def wait(self) -> None:
        """The block in the thread written; also when cancelled (another range failed),
        so that the file is closed only after the thread's last write."""
        if self.pending is not None:
            await asyncio.wait([self.pending])
            self.pending.result()
            self.pending = None

    def passed(self) -> tuple[list[bytes], int, int]:
        block, offset, size = self.block, self.offset, self.size
        self.block, self.offset, self.size = [], offset + size, 0
        return block, offset, size

    def keep(self, block: list[bytes], offset: int, size: int) -> None:
        written = os.pwritev(self.fd, block, offset)
        rest = memoryview(b"".join(block))[written:] if written < size else memoryview(b"")
        while rest:  # a full quota shows as a short write, then as EDQUOT
            written = os.pwrite(self.fd, rest, offset + size - len(rest))
            rest = rest[written:]
        if self.hasher is not None:
            for chunk in block:
                self.hasher.update(chunk)
        self.progress(size)


def created(partial: str) -> int:
    return os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


async def s3_get(
    s3: AbstractFileSystem,
    path: str,
    item: Item,
    partial: str,
    streams: int,
    progress: Callable[[int], Any],
) -> str | None:
    """An S3 object to ``partial`` as up to ``streams`` ranged GETs through s3fs's client,
    each streamed to its place in the file and hashed on the way (the store's digest,
    if it has one that is an MD5); the digest computed, or None.

    Not s3fs's ``get_file``: that GETs the whole object once before asking for ranges,
    holds each range whole in memory, and hashing it means reading the file again; this
    one pass costs a tenth of its CPU time (0.4 against 4 CPU-seconds for 512 MiB), which
    on a machine shared with the store is the throughput. A plain MD5 must be computed
    in order, so such an object comes in as one stream; a multipart one comes in ranges
    of whole parts, each hashed apart."""
    stored = digest.of(item.info)
    part = stored.part_size if stored else None
    if stored is not None and part is None:
        span = max(item.size, 1)
    else:
        unit = part or CHUNK
        span = max(unit, -(-S3_RANGE // unit) * unit)
    bucket, key, _ = s3.split_path(path)
    fd = created(partial)
    limit = asyncio.Semaphore(max(1, min(streams, S3_STREAMS)))

    async def fetch(start: int) -> digest.Hasher:
        hasher = digest.Hasher(part)
        end = min(start + span, item.size)
        writer = Writer(fd, start, hasher if stored else None, progress)
        async with limit:
            # s3fs's own call: its session, credentials, retries and error translation.
            answer = await s3._call_s3(  # type: ignore[attr-defined]
                "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            try:
                while chunk := await answer["Body"].read(CHUNK):
                    await writer.add(chunk)
            finally:
                answer["Body"].close()
                offset = await writer.close()
        if offset != end:
            raise OSError(
                errno.EIO, f"{item.src}: the store sent {offset - start} of {end - start} bytes"
            )
        return hasher

    try:
        async with asyncio.TaskGroup() as group:  # one range failing cancels the others
            tasks = [group.create_task(fetch(s)) for s in range(0, item.size, span)]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # what the caller knows (a full quota...)
    finally:
        os.close(fd)
    hashers = [task.result() for task in tasks]
    return digest.joined(hashers) if stored and hashers else None


async def azure_get(
    abfs: AbstractFileSystem,
    path: str,
    item: Item,
    partial: str,
    streams: int,
    progress: Callable[[int], Any],
) -> str | None:
    """An Azure blob to ``partial`` through the Azure SDK's own download, in order and
    hashed on the way (a blob's Content-MD5 is of the whole); the MD5, or None.

    Not adlfs's ``get_file``: that leaves the SDK's defaults (4 MiB a request, read 4 KiB
    at a time), and hashing its file means reading it again. The blob's client is the
    one adlfs would use (its URL and credential), with larger requests and reads."""
    # Imported here: the SDK takes a quarter of a second to import, which an S3 copy of a
    # few seconds would pay for nothing.
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob.aio import BlobClient

    container, blob, _ = abfs.split_path(path)
    service = abfs.service_client  # type: ignore[attr-defined]
    url = service.get_blob_client(container, blob).url
    stored = digest.of(item.info)
    fd = created(partial)
    writer = Writer(fd, 0, digest.Hasher() if stored else None, progress)
    try:
        async with BlobClient.from_blob_url(
            url,
            credential=service.credential,
            max_single_get_size=AZURE_GET,
            max_chunk_get_size=AZURE_GET,
            connection_data_block_size=AZURE_READ,
        ) as client:
            try:
                answer = await client.download_blob()
            except ResourceNotFoundError:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
            try:
                async for chunk in answer.chunks():
                    await writer.add(chunk)
            finally:
                size = await writer.close()
    finally:
        os.close(fd)
    if size != item.size:
        raise OSError(errno.EIO, f"{item.src}: the store sent {size} of {item.size} bytes")
    return writer.hasher.hexdigest() if writer.hasher is not None else None


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
    fetch = None if src.local else streamer(src)
    with ThreadPoolExecutor(workers) as pool:
        if fetch is not None:
            downloads = Downloads(src, fetch, workers, parts, progress)
            submit, stop = downloads.submit, downloads.stop
        else:
            one = partial(upload, dst) if src.local else partial(download, src)
            submit = partial(pool.submit, one, parts=parts, progress=progress)
            stop = partial(pool.shutdown, cancel_futures=True)
        futures = [(item, submit(item)) for item in items]
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
                    stop()
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
