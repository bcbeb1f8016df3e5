"""hubdata's digests: a local file compared with what S3 (ETag) and Azure (Content-MD5) say
of an object, so copies are verified without reading the object again."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "default-environment/hubdata"))

from hubstack_data import digest

MIB = 2**20


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(data: bytes, part: int) -> str:
    parts = b"".join(
        hashlib.md5(data[i : i + part], usedforsecurity=False).digest()
        for i in range(0, len(data), part)
    )
    return f'"{md5(parts)}-{-(-len(data) // part)}"'


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, bytes]:
    content = bytes(range(256)) * (17 * MIB // 256 + 3)
    path = tmp_path / "f.bin"
    path.write_bytes(content)
    return path, content


def test_single_part_etag_and_azure_md5_match_the_file(data: tuple[Path, bytes]) -> None:
    path, content = data
    s3 = {"ETag": f'"{md5(content)}"', "size": len(content)}
    azure = {
        "content_settings": {"content_md5": bytearray(hashlib.md5(content).digest())},
        "size": len(content),
    }
    assert digest.matches(str(path), s3) and digest.matches(str(path), azure)


def test_a_changed_byte_or_size_does_not_match(data: tuple[Path, bytes]) -> None:
    path, content = data
    changed = bytes([content[0] ^ 1]) + content[1:]
    assert not digest.matches(str(path), {"ETag": f'"{md5(changed)}"', "size": len(content)})
    assert not digest.matches(str(path), {"ETag": f'"{md5(content)}"', "size": len(content) + 1})


def test_multipart_etag_of_a_known_part_size_matches(data: tuple[Path, bytes]) -> None:
    path, content = data
    info = {"ETag": multipart_etag(content, digest.BOTO_PART), "size": len(content)}
    whole = info["ETag"].strip('"').split("-")[0]
    assert digest.of(info) == digest.StoreDigest(whole, digest.BOTO_PART)
    assert digest.matches(str(path), info)


def test_s3fs_part_size_is_tried_first() -> None:
    size = 120 * MIB  # three parts of s3fs's 50 MiB, fifteen of botocore's 8 MiB
    assert digest.of({"ETag": f'"{"a" * 32}-3"', "size": size}).part_size == digest.S3FS_PART
    assert digest.of({"ETag": f'"{"a" * 32}-15"', "size": size}).part_size == digest.BOTO_PART


@pytest.mark.parametrize(
    "info",
    [
        {"ETag": '"' + "a" * 32 + '-7"', "size": 120 * MIB},  # parts of an unknown size
        {"ETag": '"not-an-md5"', "size": 3},  # other S3-compatible stores
        {"content_settings": {"content_md5": None}, "etag": '"0x8DC"', "size": 3},  # Azure
        {"size": 3},
    ],
)
def test_no_usable_digest_is_none(info: dict) -> None:
    assert digest.of(info) is None


def test_uploads_are_sent_in_botocore_parts_and_their_etags_recognised() -> None:
    assert digest.upload_part(99 * MIB) is None, "sent in one request, as s3fs sends it"
    assert digest.upload_part(2 * 2**30) == digest.BOTO_PART
    huge = 100 * 2**30  # more than 10,000 parts of 8 MiB
    part = digest.upload_part(huge)
    assert part is not None and part > digest.BOTO_PART and -(-huge // part) <= 10_000
    etag = f'"{"a" * 32}-{-(-huge // part)}"'
    assert digest.of({"ETag": etag, "size": huge}).part_size == part
