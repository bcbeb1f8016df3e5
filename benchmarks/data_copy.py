"""Copy throughput of hubdata against fsspec's own put/get, on Azurite and moto's S3 server.

    uv run python benchmarks/data_copy.py [--total 2G] [--files 1000] [--stores s3,azure]
        [--data many,one]

Two data sets: ``--total`` in ``--files`` files, and one file of ``--total``. Each is copied
out (disk -> store) and in (store -> disk) by hubdata's copy engine (what ``hubdata cp -r``
runs: several files at once, out through the library's put_file, in streamed through s3fs's
client or the Azure SDK's, every file verified against the store's digest of it) and by the
baseline (``s3fs``/``adlfs`` ``put``/``get`` with default settings, no verification) and,
when it is installed (Debian's ``rclone`` package; benchmark setup only, not the test
suite's), by ``rclone copy`` with its default settings (4 transfers, its own checksum
checks), taking turns so that noise hits them alike. rclone checks no checksum of a large
file it downloads in several streams (its default above 250 MiB), so the one file is also
copied by ``rclone copy --multi-thread-streams 0`` ("rclone md5"): one stream, its MD5
checked, as hubdata checks every file; with many files both rclone columns would be the same
copy. Both stores run on loopback as emulators, so the numbers compare the clients, not a
network. Each client gets a fresh store (nothing left by another client's copy), its process
confined to ``--store-memory`` in a cgroup of its own: moto's server reads a whole object
for every ranged GET, so concurrent ranges of a 2 GiB object can take more memory than the
machine has, and the kernel then stops the store, not the machine's other work (the row says
so). The scratch directory (``TMPDIR``) holds the data, one copy back and Azurite's objects:
give it room for five times ``--total``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubtest import DEFAULT_ENV
from storage_emulators import AZURITE_ACCOUNT, AZURITE_KEY, azurite, moto_s3

from hubstack.system import cgroups
from hubstack.units import parse_size

WORKER = Path(__file__).with_name("data_copy_worker.py")
RCLONE = shutil.which("rclone")
# The rclone columns and their options: its defaults, and one stream for a large file.
RCLONE_HOWS = {"rclone": [], "rclone-md5": ["--multi-thread-streams", "0"]}


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


def timed(how: str, direction: str, spec: tuple[str, dict], local: Path, remote: str) -> float:
    protocol, options = spec
    argv = [str(DEFAULT_ENV / "bin/python"), str(WORKER), how, direction, protocol]
    argv += [json.dumps(options), str(local), remote]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        # A store can fail a copy (s3fs's default read timeout, 15 s, is shorter than moto's
        # server takes to assemble a 2 GiB multipart upload, and the repeated request
        # fails; a store stopped at its memory limit): the table says so, the run goes on.
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        print(f"{how} {direction} {remote} failed: {last}", file=sys.stderr)
        return math.nan
    return float(json.loads(proc.stdout))


def timed_rclone(
    direction: str, remote_env: dict[str, str], local: Path, remote: str, options: list[str]
) -> float:
    """``rclone copy`` of a directory's contents, out or in, with its default settings and
    ``options``; the remote ``store:`` is described by environment variables (no
    rclone.conf)."""
    src, dst = (
        (str(local), f"store:{remote}") if direction == "out" else (f"store:{remote}", str(local))
    )
    # aws-sdk-go cannot add AWS_CA_BUNDLE to rclone's own HTTP transport (rclone fails with
    # "unsupported transport"); the stores here are plain HTTP on loopback.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env |= {**remote_env, "RCLONE_CONFIG": "/dev/null"}
    start = time.perf_counter()
    proc = subprocess.run(
        [RCLONE, "copy", *options, src, dst], capture_output=True, text=True, timeout=3600, env=env
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        print(f"rclone {direction} {remote} failed: {last}", file=sys.stderr)
        return math.nan
    return time.perf_counter() - start


def rclone_remote(protocol: str, options: dict) -> dict[str, str]:
    """The benchmark's store as an rclone remote named ``store``."""
    if protocol == "s3":
        return {
            "RCLONE_CONFIG_STORE_TYPE": "s3",
            "RCLONE_CONFIG_STORE_PROVIDER": "Other",
            "RCLONE_CONFIG_STORE_ACCESS_KEY_ID": options["key"],
            "RCLONE_CONFIG_STORE_SECRET_ACCESS_KEY": options["secret"],
            "RCLONE_CONFIG_STORE_ENDPOINT": options["endpoint_url"],
        }
    # rclone 1.60 (Debian's) reaches Azurite only as "the emulator", whose account and
    # key are Azurite's published ones, the benchmark's too.
    fields = dict(p.split("=", 1) for p in options["connection_string"].split(";") if p)
    return {
        "RCLONE_CONFIG_STORE_TYPE": "azureblob",
        "RCLONE_CONFIG_STORE_USE_EMULATOR": "true",
        "RCLONE_CONFIG_STORE_ENDPOINT": fields["BlobEndpoint"],
    }


Store = tuple[str, dict]


@contextlib.contextmanager
def store(kind: str, work: Path, memory: int) -> Iterator[Store]:
    """A fresh emulator of ``kind`` (``s3``, ``azure``) as an fsspec protocol and options,
    with the benchmark's buckets, in a cgroup limited to ``memory`` bytes."""
    with moto_s3() if kind == "s3" else azurite(work) as emulator, confined(emulator, memory):
        if kind == "s3":
            options = {"key": "bench", "secret": "bench", "endpoint_url": emulator.endpoint}
            spec: Store = ("s3", options)
        else:
            spec = (
                "abfs",
                {
                    "connection_string": f"DefaultEndpointsProtocol=http;AccountName="
                    f"{AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                    f"BlobEndpoint={emulator.endpoint};"
                },
            )
        setup = [str(DEFAULT_ENV / "bin/python"), "-c", MAKE_BUCKETS, *store_args(spec)]
        subprocess.run(setup, check=True, timeout=120)
        yield spec


@contextlib.contextmanager
def confined(emulator: Any, memory: int) -> Iterator[None]:
    """The emulator's process in a memory cgroup of its own, removed afterwards; an OOM
    kill in it is reported."""
    group = cgroups.detect().prepare(
        f"bench-store-{os.getpid()}", cgroups.Limits(cpu=None, memory=memory)
    )
    try:
        procs = group.procs_files()
        if procs is None:
            print("the store's memory is not limited here (no cgroup to join)", file=sys.stderr)
        for path in procs or []:
            Path(path).write_text(str(emulator.proc.pid))
        yield
    finally:
        if group.oom_kills():
            print(
                f"the store ran out of its {memory / 2**30:.0f} GiB and was stopped",
                file=sys.stderr,
            )
        group.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", default="2G")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--stores", default="s3,azure", help="which of s3, azure")
    parser.add_argument("--data", default="many,one", help="which of many, one")
    parser.add_argument("--store-memory", default="12G", help="each emulator's memory limit")
    args = parser.parse_args()
    hows = ("hubdata", "baseline") + (tuple(RCLONE_HOWS) if RCLONE else ())
    total = parse_size(args.total)
    memory = parse_size(args.store_memory)
    work = Path(tempfile.mkdtemp(prefix="hubstack-data-bench-"))
    names = {"s3": "s3 (moto)", "azure": "azure (Azurite)"}
    try:
        data = make_data(work, total, args.files)
        print(f"{total / 1e9:.2f} GB as {args.files} files and as one file; MB/s")
        print(f"{'store':16} {'data':5} {'dir':4}" + "".join(f" {h:>10}" for h in hows))
        for kind in args.stores.split(","):
            for label in args.data.split(","):
                local = data[label]
                rates = {}
                for how in hows:
                    if how == "rclone-md5" and label == "many":
                        # Files this small come in one stream each: rclone's own copy.
                        rates[how] = (math.nan, math.nan)
                        continue
                    remote = f"bench-{how}/{label}"
                    back = work / f"back-{how}-{label}"
                    with store(kind, work, memory) as spec:
                        if how in RCLONE_HOWS:
                            remote_env = rclone_remote(*spec)
                            options = RCLONE_HOWS[how]
                            out = timed_rclone("out", remote_env, local, remote, options)
                            inn = timed_rclone("in", remote_env, back, remote, options)
                        else:
                            out = timed(how, "out", spec, local, remote)
                            inn = timed(how, "in", spec, back, remote)
                    rates[how] = (total / out / 1e6, total / inn / 1e6)
                    shutil.rmtree(back, ignore_errors=True)
                for i, direction in enumerate(("out", "in")):
                    cells = "".join(
                        f" {rates[h][i]:10.1f}" if not math.isnan(rates[h][i]) else f" {'-':>10}"
                        for h in hows
                    )
                    print(f"{names[kind]:16} {label:5} {direction:4}{cells}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


MAKE_BUCKETS = """
import fsspec, json, sys
fs = fsspec.filesystem(sys.argv[1], **json.loads(sys.argv[2]))
for name in ("bench-hubdata", "bench-baseline", "bench-rclone", "bench-rclone-md5"):
    fs.mkdir(name)
"""


def store_args(spec: Store) -> list[str]:
    return [spec[0], json.dumps(spec[1])]


if __name__ == "__main__":
    main()
