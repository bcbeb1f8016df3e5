"""What a store says an object's bytes are, compared with a local file: a copy is verified
without moving the object a second time.

S3 gives every object an ETag: the MD5 of its bytes, or for a multipart upload the MD5 of
its parts' MD5s followed by ``-<parts>``. Azure keeps a blob's Content-MD5, which the
service sets on a single-shot upload and hubdata sets (with the service checking every
block it receives) on its own uploads. An ETag is not always an MD5 (S3 with KMS keys,
other S3-compatible stores), so a digest that does not match is never trusted alone: the
caller then compares SHA-256 of both sides, reading the object again.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

READ = 8 * 1024 * 1024
# Part sizes of S3 multipart uploads: s3fs's put_file default, and botocore's transfer
# manager's (the AWS CLI, boto3), which hubdata's uploads use too. The ETag names only the
# number of parts.
S3FS_PART = 50 * 2**20
BOTO_PART = 8 * 2**20
S3_MAX_PARTS = 10_000


@dataclass(frozen=True)
class StoreDigest:
    md5: str  # hex: of the whole object, or of its parts' MD5s (S3 multipart)
    part_size: int | None = None  # S3 multipart: each part's size but the last's


def of(info: Mapping[str, Any]) -> StoreDigest | None:
    """The store's digest of an object from its ``info()`` (s3fs or adlfs), if it has one."""
    md5 = (info.get("content_settings") or {}).get("content_md5")
    if md5:
        return StoreDigest(bytes(md5).hex())
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    whole, dash, parts = etag.partition("-")
    if len(whole) != 32 or not all(c in "0123456789abcdef" for c in whole):
        return None
    if not dash:
        return StoreDigest(whole)
    if not parts.isdigit():
        return None
    size = int(info.get("size") or 0)
    for part in (s3fs_part(size), BOTO_PART, hubdata_part(size)):
        if math.ceil(size / part) == int(parts):
            return StoreDigest(whole, part)
    return None


def s3fs_part(size: int) -> int:
    """The part size s3fs's ``put_file`` uploads a file of ``size`` bytes in."""
    return max(S3FS_PART, math.ceil(size / S3_MAX_PARTS))


def upload_part(size: int) -> int | None:
    """The part size hubdata uploads ``size`` bytes in; None when s3fs sends them in one
    request (as its put_file does: below twice its part size). Parts are botocore's 8 MiB,
    not s3fs's 50: an S3 server written in Python (moto) took a 2 GiB file half again as
    fast in them, its memory reused rather than mapped afresh for every part."""
    if size < min(5 * 2**30, 2 * s3fs_part(size)):
        return None
    return hubdata_part(size)


def hubdata_part(size: int) -> int:
    """botocore's part size, or larger when ``size`` needs more than S3's most parts."""
    return max(BOTO_PART, math.ceil(size / S3_MAX_PARTS))


class Hasher:
    """A digest in the store's form of bytes fed in order: MD5, or (``part_size``) the MD5
    of each part's MD5, so that a file is hashed as it is written or read, in one pass.
    Bytes starting at a part boundary may be hashed apart and the pieces joined
    (``joined``): a multipart object comes in as several ranges at once."""

    def __init__(self, part_size: int | None = None) -> None:
        self.part_size = part_size
        self.md5 = hashlib.md5(usedforsecurity=False)  # of the whole, or of the part begun
        self.parts: list[bytes] = []
        self.left = part_size or 0

    def update(self, data: bytes | memoryview) -> None:
        if self.part_size is None:
            self.md5.update(data)
            return
        view = memoryview(data)
        while view:
            take = min(self.left, len(view))
            self.md5.update(view[:take])
            self.left -= take
            view = view[take:]
            if self.left == 0:
                self.parts.append(self.md5.digest())
                self.md5, self.left = hashlib.md5(usedforsecurity=False), self.part_size

    def part_digests(self) -> list[bytes]:
        if self.left != self.part_size:
            return [*self.parts, self.md5.digest()]
        return self.parts

    def hexdigest(self) -> str:
        return joined([self])


def joined(hashers: list[Hasher]) -> str:
    """The digest of the bytes fed to ``hashers`` one after the other, each but the first
    starting at a part boundary (all with the same ``part_size``)."""
    if hashers[0].part_size is None:
        return hashers[0].md5.hexdigest()
    parts = [part for hasher in hashers for part in hasher.part_digests()]
    return hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()


def of_file(path: str, part_size: int | None = None) -> str:
    """A local file's digest in the store's form: MD5, or the MD5 of each part's MD5."""
    hasher = Hasher(part_size)
    with open(path, "rb", buffering=0) as src:
        while chunk := src.read(READ):
            hasher.update(chunk)
    return hasher.hexdigest()


def matches(path: str, info: Mapping[str, Any]) -> bool:
    """True if the store's digest of an object matches the local file at ``path``; False
    when it differs or the store gives none (the caller then compares otherwise)."""
    digest = of(info)
    if digest is None or int(info.get("size") or 0) != os.path.getsize(path):
        return False
    return of_file(path, digest.part_size) == digest.md5
