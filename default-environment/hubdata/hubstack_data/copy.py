"""Copies between a server's files and a storage connection: resumable, checksummed.

Every file is a task on the library's own event loop, several at once (``Transfers``).
Uploads go through the library's own ``_put_file`` (adlfs and s3fs move large files in
parallel blocks); downloads stream through s3fs's client or the Azure SDK's and are
checked on the way in (``s3_get``, ``AzureGet``). A copy is verified against the
store's own digest of the object (S3's ETag, Azure's Content-MD5; see ``digest``), taken
from one listing of the source (downloads) or of the destination after the uploads, or
against the checksum S3 sends with an object (checked by botocore as it comes in): the
object is not moved twice and no request is made per file. Where the store gives no
digest or it does not match, the object is read again and SHA-256 of both sides compared.
A local destination is written under a temporary name and renamed when verified, and an
object in a store appears only when its upload completes, so after an interruption a
file either is whole or is missing: a rerun copies what is missing or differs in size
(``checksum``: also what differs in content).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import posixpath
import sys
import threading
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import CancelledError, Future
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
# Bytes written to a file at a time: large writes cost more CPU time in the kernel than the
# same bytes in small pieces (2 GiB from buffers of 32 MiB just filled, written whole:
# 1.7-7 CPU-seconds; in pieces of 1 MiB: 0.7-2.6; 256 KiB: 0.5-1.9; 64 KiB: 0.6-1.0; the
# same for 1,000 files of 2 MiB), and one pwritev of several chunks more than a pwrite
# of each.
WRITE = 64 * 1024
# A large S3 object comes in as ranges of at least S3_RANGE bytes, up to S3_STREAMS at once
# (rclone's default number of streams), each streamed to the file: nothing is held whole.
# Ranges are large because each is a request that a store serves separately (moto copies
# the whole object for each: one stream of 512 MiB came in at 500 MB/s there, four of
# 128 MiB at 240).
S3_STREAMS = 4
S3_RANGE = 512 * 1024 * 1024
# A blob comes in as ranges of AZURE_GET bytes (one request each), up to AZURE_STREAMS at
# once (rclone's default number of streams for a large file), read from the socket
# AZURE_READ at a time (the SDK's defaults: 4 MiB a request, one at a time, 4 KiB reads).
# The SDK holds each range whole; ranges of 32 MiB or more cost a CPU-second more for 2 GiB
# (the C library maps fresh memory for each, never reusing it); smaller ones cost Azurite
# more requests.
AZURE_GET = 16 * 1024 * 1024
AZURE_READ = 1024 * 1024
AZURE_STREAMS = 4
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


def sha256_of(fs: AbstractFileSystem, path: str) -> str | None:
    """The SHA-256 of a file or object; None if the object's bytes are not those of the
    store's own checksum of it (an upload changed on the way, which botocore finds as the
    last byte is read): a digest no file has."""
    hasher = hashlib.sha256()
    try:
        with fs.open(path, "rb", block_size=CHUNK) as src:
            while chunk := src.read(CHUNK):
                hasher.update(chunk)
    except Exception as exc:
        # Only an S3 copy has botocore loaded; an Azure one need not import it.
        errors = sys.modules.get("botocore.exceptions")
        if errors is None or not isinstance(exc, errors.FlexibleChecksumError):
            raise
        return None
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


def library(side: Side) -> AbstractFileSystem:
    """The library's filesystem (s3fs, adlfs): a connection's is under a DirFileSystem."""
    return getattr(side.fs, "fs", side.fs)


def in_library(side: Side, path: str) -> str:
    """``path`` of ``side`` as the library's filesystem names it."""
    return side.fs._join(path) if library(side) is not side.fs else path  # type: ignore[attr-defined]


async def send(dst: Side, parts: int, progress: Callable[[int], Any], item: Item) -> None:
    """One file into the store through the library's own ``_put_file``; verified
    afterwards, with the others (``verify_uploads``)."""
    store = library(dst)
    options: dict[str, Any] = {"max_concurrency": parts}
    hashing = None
    if item.size > AZURE_SINGLE_PUT and "abfs" in store.protocol:
        # Azure sets Content-MD5 itself only for a blob sent in one request; a larger one
        # gets the file's, for later copies to verify against, and the service checks
        # every block it receives against the MD5 of what was read (validate_content).
        item.md5 = await asyncio.to_thread(digest.of_file, item.src)
        md5 = bytearray(bytes.fromhex(item.md5))
        options |= {"content_settings": {"content_md5": md5}, "validate_content": True}
    else:
        # The file's digest in the store's form (MD5, or the part MD5s of an S3 multipart
        # upload), for the store's of what it received to be checked against: computed
        # in a thread while the file is sent, not read again after all the uploads.
        part = digest.upload_part(item.size) if "s3" in store.protocol else None
        if part is not None:
            options["chunksize"] = part
        hashing = asyncio.ensure_future(asyncio.to_thread(digest.of_file, item.src, part))
    try:
        await store._put_file(  # type: ignore[attr-defined]
            item.src, in_library(dst, item.dst), callback=Progress(progress), **options
        )
    except Exception as exc:
        if refused_digest(exc):
            raise mismatch(item.src, item.dst, kept="not kept") from None
        raise
    finally:
        if hashing is not None:
            await asyncio.wait([hashing])  # the thread is not left reading the file
    if hashing is not None:
        item.md5 = hashing.result()


# A download: the digest it computed, True if the library checked it, or None.
Fetch = Callable[..., Coroutine[Any, Any, str | bool | None]]


async def receive(
    src: Side, fetch: Fetch, parts: int, progress: Callable[[int], Any], made: set[str], item: Item
) -> None:
    """One object to a local file, written beside it and renamed when verified."""
    folder = os.path.dirname(item.dst) or "."
    if folder not in made:
        os.makedirs(folder, exist_ok=True)
        made.add(folder)
    partial = item.dst + PARTIAL
    computed = await fetch(in_library(src, item.src), item, partial, parts, progress)
    stored = digest.of(item.info)
    if computed is True or (stored is not None and stored.md5 == computed):
        os.replace(partial, item.dst)  # verified on the way in: no thread needed
    else:
        await asyncio.to_thread(settle, src, item, computed)


def settle(src: Side, item: Item, computed: str | None) -> None:
    """The downloaded file renamed into place if verified, else removed."""
    if not verified(item.dst + PARTIAL, item.info, src, item.src, computed):
        os.unlink(item.dst + PARTIAL)
        raise mismatch(item.src, item.dst)
    os.replace(item.dst + PARTIAL, item.dst)


Transfer = Callable[[Item], Coroutine[Any, Any, None]]


class Transfers:
    """Copies to or from the store, each a task on the library's own event loop (s3fs and
    adlfs are asyncio), ``workers`` at once: not a thread each that waits on the loop,
    which for many small files cost more CPU than the copies (the GIL passed between
    64 threads). Submitted and stopped as a thread pool's work is, for ``run``."""

    def __init__(
        self,
        store: AbstractFileSystem,
        one: Transfer,
        workers: int,
        close: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.store, self.one, self.closing = store, one, close
        self.limit = asyncio.Semaphore(workers)
        self.stopped = threading.Event()

    def submit(self, item: Item) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(self.limited(item), self.store.loop)

    def stop(self) -> None:
        """Start no further copy; those under way finish."""
        self.stopped.set()

    def close(self) -> None:
        """Release what the copies shared (the Azure SDK's client), on the loop."""
        if self.closing is not None:
            asyncio.run_coroutine_threadsafe(self.closing(), self.store.loop).result()

    async def limited(self, item: Item) -> None:
        async with self.limit:
            if self.stopped.is_set():
                raise asyncio.CancelledError
            await self.one(item)


class Writer:
    """Bytes of an object as they come in, from ``offset`` on: gathered into blocks (a
    list, not copied together), one block written to its place and hashed in a thread
    while the next comes, so that the download is one pass over the bytes. A block with
    nothing to hash is written on the loop, as the library's own ``get_file`` writes:
    handing it to a thread cost more than the write (for a thousand small objects, a
    tenth of the loop's time went to waking threads)."""

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
            if self.hasher is None:
                self.keep(*self.passed())
            else:
                self.pending = asyncio.ensure_future(asyncio.to_thread(self.keep, *self.passed()))

    async def close(self) -> int:
        """Write what is left; the offset after the last byte."""
        await self.wait()
        if self.block and self.hasher is None:
            self.keep(*self.passed())
        elif self.block:
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
        written(self.fd, block, offset, self.hasher)
        self.progress(size)


def written(fd: int, block: list[bytes], offset: int, hasher: digest.Hasher | None) -> None:
    """``block`` written to ``fd`` from ``offset`` on, and fed to ``hasher``, a piece at a
    time: each piece is hashed just after it is written, while it is in the CPU's cache."""
    for chunk in block:
        view = memoryview(chunk)
        for start in range(0, len(view), WRITE):
            piece = rest = view[start : start + WRITE]
            while rest:  # a full quota shows as a short write, then as EDQUOT
                done = os.pwrite(fd, rest, offset)
                offset += done
                rest = rest[done:]
            if hasher is not None:
                hasher.update(piece)


def hashed(hasher: digest.Hasher, block: list[bytes]) -> None:
    for chunk in block:
        hasher.update(chunk)


async def threaded(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a thread, waited for to its end even when the caller is cancelled
    (another range failed): a thread cannot be stopped, and the file it writes must not be
    closed under it."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    finally:
        if not work.done():
            await asyncio.wait([work])


def created(partial: str) -> int:
    return os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def made(partial: str, block: list[bytes], hasher: digest.Hasher | None) -> None:
    """``partial`` made with ``block`` in it, fed to ``hasher``."""
    fd = created(partial)
    try:
        written(fd, block, 0, hasher)
    finally:
        os.close(fd)


async def s3_get(
    s3: AbstractFileSystem,
    path: str,
    item: Item,
    partial: str,
    streams: int,
    progress: Callable[[int], Any],
) -> str | bool | None:
    """An S3 object to ``partial`` through s3fs's client, each part streamed to its place
    in the file: the digest computed on the way in (the store's, if it has one that is an
    MD5), True if botocore checked the bytes against the store's own checksum of the
    object, or None.

    Not s3fs's ``get_file``: that GETs the whole object once before asking for ranges,
    holds each range whole in memory, and hashing it means reading the file again; this
    one pass costs a tenth of its CPU time (0.4 against 4 CPU-seconds for 512 MiB), which
    on a machine shared with the store is the throughput. An object sent in one request
    comes in as one GET: S3 gives its checksum (CRC32 and the like, which botocore and
    other clients add to every upload) with it and botocore checks it as the last byte
    is read, so no MD5 is computed here (botocore computes that checksum in any case);
    without one, the plain MD5 is computed in order. A multipart object comes in as
    ranged GETs of whole parts, up to ``streams`` at once, each hashed apart."""
    # Imported here, as s3fs does: an Azure copy does not need botocore.
    from aiobotocore.httpchecksum import AioStreamingChecksumBody
    from botocore.exceptions import FlexibleChecksumError

    stored = digest.of(item.info)
    part = stored.part_size if stored else None
    if stored is not None and part is None:
        span = max(item.size, 1)
    else:
        unit = part or CHUNK
        span = max(unit, -(-S3_RANGE // unit) * unit)
    bucket, key, _ = s3.split_path(path)
    limit = asyncio.Semaphore(max(1, min(streams, S3_STREAMS)))

    async def fetch(start: int) -> tuple[bool, digest.Hasher | None]:
        end = min(start + span, item.size)
        whole = start == 0 and end == item.size
        ranged = {} if whole else {"Range": f"bytes={start}-{end - 1}"}
        async with limit:
            # s3fs's own call: its session, credentials, retries and error translation.
            answer = await s3._call_s3(  # type: ignore[attr-defined]
                "get_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED", **ranged
            )
            checked = whole and isinstance(answer["Body"], AioStreamingChecksumBody)
            hasher = digest.Hasher(part) if stored and not checked else None
            try:
                if fd is None:
                    # One block: its file made, written and hashed in a thread, not on the
                    # loop, which for a thousand small objects is busy all the copy long
                    # with the requests (it took 7.0 CPU-seconds of 2 GiB in 1,000 objects
                    # with the files made and written on it, 4.6 without).
                    block: list[bytes] = []
                    while chunk := await answer["Body"].read(CHUNK):
                        block.append(chunk)
                    offset = sum(map(len, block))
                    await threaded(made, partial, block, hasher)
                    progress(offset)
                else:
                    writer = Writer(fd, start, hasher, progress)
                    try:
                        while chunk := await answer["Body"].read(CHUNK):
                            await writer.add(chunk)
                    finally:
                        offset = await writer.close()
            except FlexibleChecksumError:
                raise mismatch(item.src, item.dst) from None
            finally:
                answer["Body"].close()
        if offset != end:
            raise OSError(
                errno.EIO, f"{item.src}: the store sent {offset - start} of {end - start} bytes"
            )
        return checked, hasher

    fd = await threaded(created, partial) if item.size > CHUNK else None
    try:
        async with asyncio.TaskGroup() as group:  # one range failing cancels the others
            tasks = [group.create_task(fetch(s)) for s in range(0, max(item.size, 1), span)]
    except BaseExceptionGroup as failed:
        if isinstance(failed.exceptions[0], CopyStopped) and os.path.lexists(partial):
            os.unlink(partial)  # what was read differs from the store's checksum
        raise failed.exceptions[0] from None  # what the caller knows (a full quota...)
    finally:
        if fd is not None:
            os.close(fd)
    results = [task.result() for task in tasks]
    if len(results) == 1 and results[0][0]:
        return True
    hashers = [hasher for _, hasher in results if hasher is not None]
    return digest.joined(hashers) if stored and hashers else None


class AzureGet:
    """Azure blobs to local files through the Azure SDK's own download, hashed on the way
    (a blob's Content-MD5 is of the whole).

    A large blob comes in as ranges, several at once as rclone reads it (one stream from
    Azurite came in at a third of rclone's four): each range is written to its place when
    in, and hashed once those before it are, so that MD5 runs beside the download, in
    order, with at most twice as many ranges held in memory as are coming in. Every range
    asks for the blob as listed (its ETag): a blob changed meanwhile stops its copy rather
    than mixing two versions.

    Not adlfs's ``get_file``: that leaves the SDK's defaults (4 MiB a request, one at a
    time, read 4 KiB at a time), and hashing its file means reading it again. One client
    for the whole copy, with adlfs's URL and credential and larger requests and reads, made
    on the library's loop at the first blob: its connections serve every blob (a client
    per blob cost a new HTTP session and connection each, more CPU than a small blob's
    bytes)."""

    def __init__(self, abfs: AbstractFileSystem) -> None:
        self.abfs = abfs
        self.client: Any = None

    async def __call__(
        self, path: str, item: Item, partial: str, streams: int, progress: Callable[[int], Any]
    ) -> str | None:
        """One blob to ``partial``; its MD5, or None."""
        # Imported here: the SDK takes a quarter of a second to import, which an S3 copy
        # of a few seconds would pay for nothing.
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.storage.blob.aio import BlobServiceClient

        if self.client is None:
            service = self.abfs.service_client  # type: ignore[attr-defined]
            self.client = BlobServiceClient(
                service.url,
                credential=service.credential,
                max_single_get_size=AZURE_GET,
                max_chunk_get_size=AZURE_GET,
                connection_data_block_size=AZURE_READ,
                # With the environment's settings on (the SDK's default), aiohttp looks
                # for a proxy and reads ~/.netrc in a thread at every request: two
                # hand-overs per blob, behind the threads writing and hashing. Only a proxy
                # set in the environment needs them (a .netrc entry for the store would
                # clash with the SDK's own Authorization header).
                use_env_settings=bool(urllib.request.getproxies_environment()),
            )
        container, blob, _ = self.abfs.split_path(path)
        client = self.client.get_blob_client(container, blob)
        hasher = digest.Hasher() if digest.of(item.info) else None
        etag = item.info.get("etag")
        listed = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        streams = max(1, min(streams, AZURE_STREAMS))
        limit = asyncio.Semaphore(streams)

        async def fetch(start: int, before: asyncio.Task[None] | None) -> None:
            """One range (the whole blob if it is one), written, then hashed once
            ``before``, the range ahead of it, is."""
            length = min(AZURE_GET, item.size - start)
            ranged = (start, length) if length < item.size else ()
            async with limit:
                try:
                    answer = await client.download_blob(*ranged, **listed)
                except ResourceNotFoundError:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
                except ResourceModifiedError:
                    raise CopyStopped(
                        f"{item.src} changed in the store while it was copied (not kept); "
                        "run the copy again"
                    ) from None
                block = [chunk async for chunk in answer.chunks()]
            size = sum(map(len, block))
            if size != length:
                raise OSError(
                    errno.EIO, f"{item.src}: the store sent {size} of {length} bytes from {start}"
                )
            if fd is None:  # the whole blob: its file made, written and hashed at once
                await threaded(made, partial, block, hasher)
            elif before is None or before.done():  # its turn: hashed as it is written
                await threaded(written, fd, block, start, hasher)
            else:
                await threaded(written, fd, block, start, None)
                progress(size)  # before hashing, which waits for the ranges ahead
                if hasher is not None:
                    await before
                    await threaded(hashed, hasher, block)
                return
            progress(size)

        # A file is made in a thread, as it is written: making one on the loop held it up
        # (a fifth of its time for a thousand blobs, waiting on the file system's journal
        # while other files were written).
        fd = await threaded(created, partial) if item.size > AZURE_GET else None
        try:
            async with asyncio.TaskGroup() as group:  # one range failing cancels the others
                ranges: list[asyncio.Task[None]] = []
                for start in range(0, max(item.size, 1), AZURE_GET):
                    if len(ranges) >= 2 * streams:
                        await asyncio.wait([ranges[-2 * streams]])
                    ranges.append(group.create_task(fetch(start, ranges[-1] if ranges else None)))
        except BaseExceptionGroup as failed:
            if isinstance(failed.exceptions[0], CopyStopped) and os.path.lexists(partial):
                os.unlink(partial)
            raise failed.exceptions[0] from None
        finally:
            if fd is not None:
                os.close(fd)
        return hasher.hexdigest() if hasher is not None else None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


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


def mismatch(src: str, dst: str, kept: str = "removed") -> CopyStopped:
    return CopyStopped(
        f"checksum mismatch: {dst} differs from what was read from {src} ({kept}); "
        "run the copy again"
    )


# The stores' answers to bytes that differ from the digest sent with them: Azure's to a
# block (validate_content), S3's to an object or part (its Content-MD5 or checksum).
REFUSED_DIGEST = {"Md5Mismatch", "BadDigest", "InvalidDigest"}


def refused_digest(exc: BaseException) -> bool:
    """Whether the store refused what it received as not matching its digest: the Azure
    SDK's error (its code in the answer's headers), or botocore's, which s3fs raises as the
    cause of its own."""
    for error in (exc, exc.__cause__):
        answer = getattr(error, "response", None)
        if isinstance(answer, dict):  # botocore's ClientError
            code = answer.get("Error", {}).get("Code")
        else:  # azure.core's HttpResponseError
            code = (getattr(answer, "headers", None) or {}).get("x-ms-error-code")
        if code in REFUSED_DIGEST:
            return True
    return False


class RefusedSiblings(logging.Filter):
    """Leaves out asyncio's "Task exception was never retrieved" for a block the store
    refused for its digest: the Azure SDK sends a file's blocks as tasks side by side and,
    once one fails, never reads the others' errors, which asyncio then prints whole at
    exit, after the copy has said what happened (a checksum mismatch)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not refused_digest(exc)


logging.getLogger("asyncio").addFilter(RefusedSiblings())


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
    if src.local:
        transfers = Transfers(library(dst), partial(send, dst, parts, progress), workers)
    else:
        store = library(src)
        fetch: Any = AzureGet(store) if "abfs" in store.protocol else partial(s3_get, store)
        one = partial(receive, src, fetch, parts, progress, set())
        transfers = Transfers(store, one, workers, getattr(fetch, "close", None))
    futures = [(item, transfers.submit(item)) for item in items]
    try:
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
                    transfers.stop()
            except CopyStopped as exc:
                failure = failure or exc
    finally:
        transfers.close()
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
