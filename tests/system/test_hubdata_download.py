"""hubdata's downloads verified as they come in, against moto's S3 server and Azurite.

S3: the bytes land whole, an object sent in one request comes in one GET checked against
the store's own checksum of it (no MD5 computed), and a multipart one comes in as several
ranges at once, each hashed apart, checked against its ETag; the file is never read again.
One bit changed on the network stops either copy (botocore's CRC32, the ETag) and leaves
no file.
Azure: a large blob comes in as ranges, several at once, hashed in order even when a later
range is in first, and verified against its Content-MD5 without a second read; bytes that
differ from the blob's MD5 and a blob changed since it was listed stop the copy, and no
file or partial file is left.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import needs_default_env
from hubtest import DEFAULT_ENV
from storage_emulators import (
    AZURITE,
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Corrupting,
    azurite,
    moto_s3,
)

pytestmark = [needs_default_env]

# single.bin comes in one GET, multi.bin in 5 ranges of 32 MiB (4 parts each), 4 at once.
# ETag and CRC32 (botocore adds it to every upload) are moto's, from what it received.
CODE = """
import hashlib, json, os, sys
from fsspec.implementations.local import LocalFileSystem
from hubstack_data import copy
from hubstack_data.connection import filesystem

s3 = filesystem("s3", {"key": "k", "secret": "x", "endpoint_url": sys.argv[1]})
s3.mkdir("ranged")
single = os.urandom(5 * 2**20 + 12345)
s3.pipe_file("ranged/single.bin", single)
multi = os.urandom(130 * 2**20 + 7)
copy.S3_RANGE = 30 * 2**20  # rounded up to whole parts
part = 8 * 1024 * 1024  # botocore's part size, which the ETag's part count reveals
with s3.open("ranged/multi.bin", "wb", block_size=part) as out:
    for start in range(0, len(multi), part):
        out.write(multi[start : start + part])
etags = [s3.info(f"ranged/{n}")["ETag"] for n in ("single.bin", "multi.bin")]
reads, hashed = [], []
real_update = copy.digest.Hasher.update
def update(self, data):
    hashed.append(len(data))
    real_update(self, data)
copy.digest.Hasher.update = update
store = copy.Side(s3, "ranged", "ranged")
local = copy.Side(LocalFileSystem(), sys.argv[2], sys.argv[2])
real = copy.sha256_of
copy.sha256_of = lambda fs, path: reads.append(path) or real(fs, path)
gets = []
call = s3._call_s3
async def counted(method, *args, **kwargs):
    if method == "get_object":
        gets.append(kwargs.get("Range", "whole"))
    return await call(method, *args, **kwargs)
s3._call_s3 = counted
items = copy.plan(store, local, True, False)
done = copy.run(store, local, items, lambda n: None)
same = [
    open(os.path.join(sys.argv[2], n), "rb").read() == data
    for n, data in (("single.bin", single), ("multi.bin", multi))
]
names = sorted(os.listdir(sys.argv[2]))
waits = s3.config_kwargs["read_timeout"]
print(json.dumps([done, same, etags, reads, names, sorted(gets), sum(hashed), waits]))
"""


def test_objects_are_hashed_as_they_are_written_and_verified_without_a_second_read(
    tmp_path: Path,
) -> None:
    with moto_s3() as s3:
        proc = subprocess.run(
            [str(DEFAULT_ENV / "bin/python"), "-c", CODE, s3.endpoint, str(tmp_path / "in")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done, same, etags, reads, names, gets, hashed, waits = json.loads(proc.stdout)
    assert waits == 300, "a store assembling a large upload is waited for, not asked again"
    assert done == 2 and same == [True, True]
    assert "-" not in etags[0] and etags[1].endswith('-17"'), etags
    assert reads == [], "verified by the digest computed on the way in, not read again"
    assert names == ["multi.bin", "single.bin"]
    assert hashed == 130 * 2**20 + 7, "the multipart object hashed, the other checked by CRC32"
    mib = 2**20
    assert sorted(gets) == sorted(
        ["whole"]
        + [
            f"bytes={s}-{min(s + 32 * mib, 130 * mib + 7) - 1}"
            for s in range(0, 130 * mib, 32 * mib)
        ]
    ), "one GET for the object sent whole, ranges of whole parts for the multipart object"


# whole.bin (sent in one request: botocore's CRC32 with it) and parts.bin (sent in parts of
# 8 MiB: an ETag of their MD5s, ranges of one part each) read through a relay that changes
# one bit 2 MiB into the store's answers on each connection, then straight from the store.
CHANGED_CODE = """
import json, os, sys
from fsspec.implementations.local import LocalFileSystem
from hubstack_data import copy
from hubstack_data.connection import filesystem

direct, relayed, top = sys.argv[1:]
s3 = filesystem("s3", {"key": "k", "secret": "x", "endpoint_url": direct})
s3.mkdir("sent")
s3.pipe_file("sent/whole/whole.bin", os.urandom(5 * 2**20))
part = 8 * 2**20
with s3.open("sent/parts/parts.bin", "wb", block_size=part) as out:
    for _ in range(3):
        out.write(os.urandom(part))
copy.S3_RANGE = part
etags = [s3.info(f"sent/{n}/{n}.bin")["ETag"] for n in ("whole", "parts")]

def copied(endpoint, name):
    fs = filesystem("s3", {"key": "k", "secret": "x", "endpoint_url": endpoint})
    store = copy.Side(fs, f"sent/{name}", f"sent/{name}")
    local = copy.Side(LocalFileSystem(), f"{top}/{name}", f"{top}/{name}")
    try:
        copy.run(store, local, copy.plan(store, local, True, False), lambda n: None)
        outcome = "copied"
    except copy.CopyStopped as stop:
        outcome = str(stop)
    return [outcome, sorted(os.listdir(local.path)) if os.path.isdir(local.path) else []]

changed = [copied(relayed, name) for name in ("whole", "parts")]
straight = [copied(direct, name) for name in ("whole", "parts")]
print(json.dumps([etags, changed, straight]))
"""


def test_bytes_changed_on_the_way_in_stop_the_copy_and_leave_no_file(tmp_path: Path) -> None:
    """The store's CRC32 (checked by botocore) and a multipart object's ETag (checked by
    hubdata) each catch one bit changed on the network; the same copies straight from the
    store go through, so it is the changed bit that stops them."""
    with moto_s3() as s3, Corrupting(s3.endpoint, at=2 * 2**20) as relay:
        argv = [str(DEFAULT_ENV / "bin/python"), "-c", CHANGED_CODE, s3.endpoint, relay.endpoint]
        proc = subprocess.run([*argv, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    etags, changed, straight = json.loads(proc.stdout)
    assert "-" not in etags[0] and etags[1].endswith('-3"'), etags
    for name, (message, left) in zip(("whole", "parts"), changed, strict=True):
        assert message.startswith("checksum mismatch: ") and f"{name}.bin" in message, message
        assert left == [], f"nothing of {name}.bin is left, not even a partial file"
    assert straight == [["copied", ["whole.bin"]], ["copied", ["parts.bin"]]]


# big.bin (10 MiB + 7, with the Content-MD5 hubdata sets on its uploads) comes in as ranges
# of 2 MiB, up to 4 at once; the first range is written only after three later ones, so its
# hashing, and every later range's, waits for it. Then: a range whose bytes differ from the
# blob's (as if corrupted on the way), and a blob changed after it was listed.
AZURE_CODE = """
import asyncio, json, os, sys
from fsspec.implementations.local import LocalFileSystem
from azure.storage.blob.aio import BlobClient
from hubstack_data import copy
from hubstack_data.connection import filesystem

az = filesystem("abfs", {"connection_string": sys.argv[1]})
az.mkdir("ranged")
top = sys.argv[2]
data = os.urandom(10 * 2**20 + 7)
os.makedirs(top + "/out")
with open(top + "/out/big.bin", "wb") as f:
    f.write(data)
copy.AZURE_SINGLE_PUT = 2**20  # sent in blocks, with the file's MD5 set by hubdata
copy.AZURE_GET = 2 * 2**20
out = copy.Side(LocalFileSystem(), top + "/out", top + "/out")
store = copy.Side(az, "ranged", "ranged")
copy.run(out, store, copy.plan(out, store, True, False), lambda n: None)

reads = []
real_sha = copy.sha256_of
copy.sha256_of = lambda fs, path: reads.append(path) or real_sha(fs, path)
gets, flowing = [], [0, 0]  # now, most
real_download = BlobClient.download_blob
async def download(self, offset=None, length=None, **kwargs):
    gets.append([offset, length, kwargs.get("etag")])
    flowing[0] += 1
    flowing[1] = max(flowing)
    try:
        return await real_download(self, offset, length, **kwargs)
    finally:
        flowing[0] -= 1
BlobClient.download_blob = download
written, corrupt, turn = [], [], []
real_threaded = copy.threaded
async def threaded(func, *args):
    if func is copy.written:
        fd, block, offset, hasher = args
        if not turn:
            turn.append(asyncio.Condition())
        async with turn[0]:
            if offset == 0:
                await turn[0].wait_for(lambda: len(written) >= 3)
            written.append(offset)
            turn[0].notify_all()
        if offset in corrupt:
            block[0] = bytes([block[0][0] ^ 1]) + block[0][1:]
    return await real_threaded(func, *args)
copy.threaded = threaded

back = copy.Side(LocalFileSystem(), top + "/back", top + "/back")
items = copy.plan(store, back, True, False)
done = copy.run(store, back, items, lambda n: None)
same = open(top + "/back/big.bin", "rb").read() == data
result = {"done": done, "same": same, "reads": reads[:], "written": written[:], "gets": gets[:],
          "most": flowing[1], "etag": items[0].info["etag"]}

def stopped(items):
    try:
        copy.run(store, back, items, lambda n: None)
    except copy.CopyStopped as stop:
        return [str(stop), sorted(os.listdir(top + "/back"))]
    return ["copied", sorted(os.listdir(top + "/back"))]

os.unlink(top + "/back/big.bin")
corrupt.append(4 * 2**20)
result["corrupt"] = stopped(copy.plan(store, back, True, False))
corrupt.clear()
listed = copy.plan(store, back, True, False)
az.pipe_file("ranged/big.bin", os.urandom(len(data)))
result["changed"] = stopped(listed)
print(json.dumps(result))
"""


@pytest.mark.skipif(not AZURITE.exists(), reason="run scripts/setup.sh --test (Azurite)")
def test_a_large_blob_comes_in_as_ranges_at_once_hashed_in_order(tmp_path: Path) -> None:
    with azurite(tmp_path / "store") as blob:
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={blob.endpoint};"
        )
        proc = subprocess.run(
            [str(DEFAULT_ENV / "bin/python"), "-c", AZURE_CODE, connection, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["done"] == 1 and result["same"], result
    assert result["reads"] == [], "verified by the MD5 computed on the way in, not read again"
    mib = 2**20
    starts = list(range(0, 10 * mib + 7, 2 * mib))
    assert sorted(result["gets"]) == sorted(
        [s, min(2 * mib, 10 * mib + 7 - s), result["etag"]] for s in starts
    ), "ranges of the blob as listed"
    assert result["most"] == 4, "four ranges at once"
    assert result["written"][0] != 0 and sorted(result["written"]) == starts
    message, left = result["corrupt"]
    assert "checksum mismatch" in message and left == [], result["corrupt"]
    message, left = result["changed"]
    assert "changed in the store" in message and left == [], result["changed"]
