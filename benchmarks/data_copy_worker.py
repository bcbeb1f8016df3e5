"""The measured part of benchmarks/data_copy.py, run with the default environment's Python
(where fsspec, adlfs, s3fs and hubdata are): one copy, its seconds printed as JSON."""

from __future__ import annotations

import json
import sys
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem
from hubstack_data import copy
from hubstack_data.connection import filesystem


def main() -> None:
    how, direction, protocol, options, local, remote = sys.argv[1:7]
    start = time.perf_counter()
    if how == "baseline":
        # The library's own put/get with default settings, as a user would call them.
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **json.loads(options))
        if direction == "out":
            fs.put(local, remote, recursive=True)
        else:
            fs.get(remote, local, recursive=True)
    else:
        # The store's client as hubdata makes it for a connection.
        fs = filesystem(protocol, json.loads(options))
        disk = copy.Side(LocalFileSystem(), local, local)
        store = copy.Side(fs, remote, remote)
        src, dst = (disk, store) if direction == "out" else (store, disk)
        copy.run(src, dst, copy.plan(src, dst, True, False), lambda _: None)
    print(json.dumps(time.perf_counter() - start))


if __name__ == "__main__":
    main()
