"""Copy throughput of hubdata against fsspec's own put/get, on Azurite and moto's S3 server.

    uv run python benchmarks/data_copy.py [--total 2G] [--files 1000]

Two data sets: ``--total`` in ``--files`` files, and one file of ``--total``. Each is copied
out (disk -> store) and in (store -> disk) by hubdata's copy engine (what ``hubdata cp -r``
runs: several files at once through the library's put_file/get_file, every file verified
against the store's digest of it, by hashing the local file) and by the baseline
(``s3fs``/``adlfs`` ``put``/``get`` with default settings, no verification), taking turns so
that noise hits both alike. Both stores run on loopback as emulators, so the numbers
compare the clients, not a network. The scratch directory (``TMPDIR``) holds the data, one
copy back and Azurite's objects: give it room for seven times ``--total``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubtest import DEFAULT_ENV
from storage_emulators import AZURITE_ACCOUNT, AZURITE_KEY, azurite, moto_s3

from hubstack.units import parse_size

WORKER = Path(__file__).with_name("data_copy_worker.py")


def make_data(root: Path, total: int, files: int) -> dict[str, Path]:
    many, one = root / "many", root / "one"
    many.mkdir()
    one.mkdir()
    block = os.urandom(1024 * 1024)
    for i in range(files):
        write(many / f"part-{i:05d}.bin", total // files, block)
    write(one / "big.bin", total, block)
    return {"many": many, "one": one}


def write(path: Path, size: int, block: bytes) -> None:
    with path.open("wb") as out:
        while size > 0:
            out.write(block[: min(size, len(block))])
            size -= len(block)


def timed(how: str, direction: str, store: tuple[str, dict], local: Path, remote: str) -> float:
    protocol, options = store
    argv = [str(DEFAULT_ENV / "bin/python"), str(WORKER), how, direction, protocol]
    argv += [json.dumps(options), str(local), remote]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        # A store can fail a copy (moto's server loses 2 GB multipart uploads at times):
        # the table says so and the run goes on.
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        print(f"{how} {direction} {remote} failed: {last}", file=sys.stderr)
        return math.nan
    return float(json.loads(proc.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", default="2G")
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    total = parse_size(args.total)
    work = Path(tempfile.mkdtemp(prefix="hubstack-data-bench-"))
    try:
        data = make_data(work, total, args.files)
        with moto_s3() as s3, azurite(work) as blob:
            stores = {
                "s3 (moto)": (
                    "s3",
                    {"key": "bench", "secret": "bench", "endpoint_url": s3.endpoint},
                ),
                "azure (Azurite)": (
                    "abfs",
                    {
                        "connection_string": f"DefaultEndpointsProtocol=http;AccountName="
                        f"{AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={blob.endpoint};"
                    },
                ),
            }
            print(f"{total / 1e9:.2f} GB as {args.files} files and as one file; MB/s")
            print(f"{'store':16} {'data':5} {'dir':4} {'hubdata':>8} {'baseline':>9}")
            for name, store in stores.items():
                setup = [str(DEFAULT_ENV / "bin/python"), "-c", MAKE_BUCKETS, *store_args(store)]
                subprocess.run(setup, check=True, timeout=120)
                for label, local in data.items():
                    rates = {}
                    for how in ("hubdata", "baseline"):
                        remote = f"bench-{how}/{label}"
                        out = timed(how, "out", store, local, remote)
                        back = work / f"back-{how}-{label}"
                        inn = timed(how, "in", store, back, remote)
                        rates[how] = (total / out / 1e6, total / inn / 1e6)
                        shutil.rmtree(back, ignore_errors=True)
                    for i, direction in enumerate(("out", "in")):
                        print(
                            f"{name:16} {label:5} {direction:4} {rates['hubdata'][i]:8.1f} "
                            f"{rates['baseline'][i]:9.1f}"
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


MAKE_BUCKETS = """
import fsspec, json, sys
fs = fsspec.filesystem(sys.argv[1], **json.loads(sys.argv[2]))
for name in ("bench-hubdata", "bench-baseline"):
    fs.mkdir(name)
"""


def store_args(store: tuple[str, dict]) -> list[str]:
    return [store[0], json.dumps(store[1])]


if __name__ == "__main__":
    main()
