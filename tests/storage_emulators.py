"""Object stores on loopback for tests and benchmarks: Azurite (Microsoft's Azure Storage
emulator, from npm) and moto's S3 server (an S3 emulator), each a real server process."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from hubtest import Abort, free_port_block, wait_for

AZURITE = Path("/opt/hubstack/test-node/node_modules/.bin/azurite-blob")
# Azurite's one built-in account and its published key (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class Store:
    endpoint: str
    proc: subprocess.Popen[bytes]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait_up(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise Abort(f"{what} exited with {proc.returncode}")
        requests.get(url, timeout=5)
        return True

    wait_for(up, 60, what)


@contextlib.contextmanager
def azurite(workdir: Path) -> Iterator[Store]:
    """Azurite's blob service; its account is AZURITE_ACCOUNT with AZURITE_KEY."""
    port = free_port_block(1)
    location = workdir / f"azurite-{secrets.token_hex(3)}"
    location.mkdir(parents=True)
    argv = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    argv += ["--location", str(location), "--skipApiVersionCheck", "--silent", "--loose"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(proc, f"http://127.0.0.1:{port}/", "Azurite")
        yield Store(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", proc)
    finally:
        _stop(proc)
        shutil.rmtree(location, ignore_errors=True)


@contextlib.contextmanager
def moto_s3() -> Iterator[Store]:
    """moto's S3 server; it accepts any access key pair."""
    port = free_port_block(1)
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(proc, f"http://127.0.0.1:{port}/", "moto's S3 server")
        yield Store(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)
