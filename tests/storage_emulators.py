"""Object stores on loopback for tests and benchmarks: Azurite (Microsoft's Azure Storage
emulator, from npm) and moto's S3 server (an S3 emulator), each a real server process."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import requests
from hubtest import Abort, Session, free_port_block, wait_for

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
def moto_s3(free_requests: int | None = None) -> Iterator[Store]:
    """moto's S3 server; it accepts any access key pair, or with ``free_requests`` only
    that many before it checks every request against its IAM users and their policies."""
    port = free_port_block(1)
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = dict(os.environ)
    if free_requests is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(free_requests)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_up(proc, f"http://127.0.0.1:{port}/", "moto's S3 server")
        yield Store(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)


def hubdata(session: Session, *args: str, server: str = "") -> tuple[int, str, str]:
    """Run ``hubdata`` in the user's server, in their home, as they would in a terminal."""
    code = (
        "import json, os, subprocess, sys\n"
        "tool = os.path.join(os.path.dirname(sys.executable), 'hubdata')\n"
        f"r = subprocess.run([tool, *{list(args)!r}],"
        " capture_output=True, text=True, cwd=os.path.expanduser('~'), timeout=300)\n"
        "print(json.dumps([r.returncode, r.stdout, r.stderr]))\n"
    )
    run = session.run_code(code, server, timeout=320)
    assert run.status == "ok", run
    rc, out, err = json.loads(run.stdout)
    return rc, out, err


class Relay:
    """A TCP relay to ``endpoint``: a real network path between a client and the store,
    whose bytes each kind of relay may shape or change, not a stand-in for the store.
    Closed (no new connection taken) at the end of its ``with`` block."""

    CHUNK = 16 * 1024

    def __init__(self, endpoint: str) -> None:
        self.target = ("127.0.0.1", urllib.parse.urlsplit(endpoint).port)
        self.listener = socket.create_server(("127.0.0.1", free_port_block(1)))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def passed(self, chunk: bytes, before: int, answer: bool) -> bytes:
        """What the other end gets of ``chunk``, which comes ``before`` bytes into the
        store's answers (``answer``) or the client's requests on its connection."""
        return chunk

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        before = 0
        try:
            while chunk := src.recv(self.CHUNK):
                dst.sendall(self.passed(chunk, before, answers))
                before += len(chunk)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Throttle(Relay):
    """A relay whose answers, over all connections together, come at ``rate`` bytes per
    second: a store slow enough for a copy to be watched while it runs."""

    def __init__(self, endpoint: str, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()
        super().__init__(endpoint)

    def passed(self, chunk: bytes, before: int, answer: bool) -> bytes:
        if not answer:
            return chunk
        with self.lock:
            start = max(time.monotonic(), self.next_free)
            self.next_free = start + len(chunk) / self.rate
        time.sleep(max(0.0, start - time.monotonic()))
        return chunk


class Corrupting(Relay):
    """A relay that flips one bit of the byte ``at`` bytes into the answers (or, not
    ``answers``, the requests) on each connection: bytes changed on the way, which the
    store's checksums must catch."""

    def __init__(self, endpoint: str, at: int, answers: bool = True) -> None:
        self.at, self.answers = at, answers
        super().__init__(endpoint)

    def passed(self, chunk: bytes, before: int, answer: bool) -> bytes:
        if answer == self.answers and before <= self.at < before + len(chunk):
            flipped = bytearray(chunk)
            flipped[self.at - before] ^= 1
            return bytes(flipped)
        return chunk
