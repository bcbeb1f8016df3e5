"""hubdata's download of S3 objects verified as they come in, against moto's S3 server: the
bytes land whole, an object sent in one request comes in one GET checked against the
store's own checksum of it (no MD5 computed), and a multipart one comes in as several
ranges at once, each hashed apart, checked against its ETag; the file is never read again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import needs_default_env
from hubtest import DEFAULT_ENV
from storage_emulators import moto_s3

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
