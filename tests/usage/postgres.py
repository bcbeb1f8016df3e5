"""A throwaway PostgreSQL cluster: initdb as the postgres account in a temporary
directory, listening on a loopback port only, removed afterwards."""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubtest import free_port_block

RUNUSER = "/usr/sbin/runuser"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh --test")
    return found[-1]


def _as_postgres(*argv: str) -> None:
    """Output to nothing: a pipe would be held open by the server pg_ctl leaves running."""
    subprocess.run(
        [RUNUSER, "-u", "postgres", "--", *argv],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A running cluster with database ``ledger``; its SQLAlchemy URL."""
    root = Path(tempfile.mkdtemp(prefix="hubstack-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port_block(1)
    _as_postgres(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "hubstack", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    _as_postgres(
        _bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"
    )
    try:
        _as_postgres(
            _bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hubstack", "ledger"
        )
        yield f"postgresql+psycopg://hubstack@127.0.0.1:{port}/ledger"
    finally:
        _as_postgres(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
