"""A server is started when it answers as itself, not when something listens on its port:
another program (or another user's server) on that port is never taken for it, and no other
account can even listen there, since the hub binds the port and hands the socket over."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, Session, new_test_root, running_hub, wait_for
from system.conftest import PYTHON

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

# Serves on the socket the hub handed over (as the server would) and answers as a server for
# someone else would: Jupyter's JSON at another user's prefix, 404 everywhere else. It logs
# each path it is asked for.
FOREIGN = f"""#!{DEFAULT_ENV}/bin/python
import http.server, os, socket, urllib.parse

PORT = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port


def handed_over():
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        if s.family == socket.AF_INET and s.getsockname()[1] == PORT:
            return s
        s.detach()
    raise SystemExit("no socket on " + str(PORT))


class Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("asked for", self.path, flush=True)
        mine = self.path == "/user/someone-else/api"
        body = b'{{"version": "2.14.0"}}' if mine else b"not here"
        self.send_response(200 if mine else 404)
        self.send_header("Content-Type", "application/json" if mine else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.HTTPServer(("127.0.0.1", PORT), Foreign, bind_and_activate=False)
server.socket.close()
server.socket = handed_over()
server.serve_forever()
"""


# Never answers: tells the test which port the hub chose, so that another account can try it.
SILENT = f"""#!{DEFAULT_ENV}/bin/python
import os, time
print("port", os.environ["JUPYTERHUB_SERVICE_URL"].rsplit(":", 1)[1], flush=True)
time.sleep(300)
"""

# Another account's program on that port, answering exactly as the user's server would.
IMPOSTER = """
import http.server, sys

port, prefix = int(sys.argv[1]), sys.argv[2]


class Imposter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("asked for", self.path, flush=True)
        body = b'{"version": "2.14.0"}'
        self.send_response(200 if self.path == prefix + "api" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


try:
    server = http.server.HTTPServer(("127.0.0.1", port), Imposter)
except OSError as exc:
    print(exc.strerror, flush=True)
    raise SystemExit(1)
print("listening", flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def envs() -> Iterator[Path]:
    base = new_test_root()
    for name, script in (("foreign", FOREIGN), ("silent", SILENT)):
        (base / name / "bin").mkdir(parents=True, mode=0o755)
        server = base / name / "bin/jupyterhub-singleuser"
        server.write_text(script)
        server.chmod(0o755)
        # The hub runs a local server through its environment's Python (listen_fd.py).
        python = base / name / "bin/python3"
        python.write_text(f'#!/bin/sh\nexec {DEFAULT_ENV}/bin/python3 "$@"\n')
        python.chmod(0o755)
        (base / name).chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(envs: Path) -> Iterator[Hub]:
    overrides = {
        "environments": [
            {"id": name, "display": name.title(), "prefix": str(envs / name)}
            for name in ("foreign", "silent")
        ],
        "extra_jupyterhub_config": {"HubstackSpawner": {"start_timeout": 15}},
    }
    with running_hub(overrides) as running:
        yield running


def start_fails(session: Session, server: str, status: int) -> None:
    """The start of ``server`` (answered with ``status``) ends failed, never ready."""
    if status == 202:
        events = session.progress(server, timeout=120)
        assert events[-1].get("failed"), events
    else:
        assert status >= 400, status
    model = session.model(server, include_stopped=True)
    assert model is not None and not model["ready"], model


def test_a_foreign_listener_on_the_port_is_not_the_users_server(hub: Hub) -> None:
    frank = hub.new_user("frank")
    log = hub.data_dir / "logs" / f"{hub.prefix}frank" / "foreign.log"
    resp = frank.start("foreign")
    wait_for(
        lambda: log.exists() and "asked for /user/frank/foreign/api" in log.read_text(),
        60,
        "the hub to ask the listener for the server's own API",
    )
    start_fails(frank, "foreign", resp.status_code)
    assert "failed to start in 15 seconds" in hub.log()


def test_another_account_cannot_listen_on_the_port_the_server_was_given(
    hub: Hub, free_ids: tuple[int, int]
) -> None:
    """A server's prefix can be guessed: another account could answer just as Jupyter
    would, if it could listen on the server's port. It cannot: the port is bound before
    the hub names it, and stays so while the server starts."""
    gina = hub.new_user("gina")
    log = hub.data_dir / "logs" / f"{hub.prefix}gina" / "silent.log"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(gina.start, "silent", {"environment": "silent"})
        port = wait_for(
            lambda: log.exists() and re.search(r"port (\d+)", log.read_text()),
            60,
            "the port the hub chose",
        )[1]
        uid = free_ids[0]
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        imposter = subprocess.Popen(
            [*setpriv, PYTHON, "-c", IMPOSTER, port, "/user/gina/silent/"],
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        try:
            assert imposter.stdout is not None
            assert imposter.stdout.readline() == "Address already in use\n"
            assert imposter.wait(30) == 1
            resp = started.result()
            start_fails(gina, "silent", resp.status_code)
        finally:
            imposter.kill()
            imposter.wait()
