"""The address reporter a Slurm job runs before its server, run here as a job script would
run it (bash, ``exec`` into the server), against a small HTTP server standing in for the
hub's report route."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
from httpfake import QuietHandler, serving
from hubtest import wait_for

REPORTER = resources.files("hubstack.backends").joinpath("report_address.py").read_text()
# What the job script does: pick the port, then become the server (a stand-in here).
JOB = 'port=$(HUBSTACK_SERVER_PID=$$ "$PYTHON" -c "$REPORTER")\necho "port $port"\nexec sleep 60\n'


class Route(ThreadingHTTPServer):
    """Records reports; answers them with ``statuses`` in turn (the last one from then on),
    each after ``delay`` seconds."""

    def __init__(self, statuses: tuple[int, ...], delay: float = 0.0) -> None:
        self.statuses, self.delay = statuses, delay
        self.reports: list[tuple[str, dict[str, object]]] = []
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(QuietHandler):
    server: Route

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reports.append((self.headers["Authorization"], body))
        self.server.release.wait(self.server.delay)
        turn = min(len(self.server.reports), len(self.server.statuses)) - 1
        self.send_response(self.server.statuses[turn])
        self.end_headers()
        self.wfile.write(b'{"message": "not your server"}')


@pytest.fixture
def route(request: pytest.FixtureRequest) -> Iterator[Route]:
    statuses, delay = request.param
    with serving(Route(statuses, delay)) as server:
        yield server
        server.release.set()


def run_job(route: Route, log: Path) -> subprocess.Popen[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "REPORTER": REPORTER,
        "HUBSTACK_PORT_RANGE": "20000-29999",
        "HUBSTACK_REPORT_URL": f"http://127.0.0.1:{route.server_address[1]}/report",
        "JUPYTERHUB_API_TOKEN": "secret-token",
        "HUBSTACK_NODE_ADDRESS": "node7",
    }
    return subprocess.Popen(
        ["bash", "-c", JOB], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("route", [((200,), 120.0)], indirect=True)
def test_the_server_starts_while_the_report_is_on_its_way(route: Route, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    job = run_job(route, log)
    try:
        # The hub has not answered yet, and the server already runs with the port.
        line = wait_for(lambda: log.read_text().strip(), 30, "the job to pick its port")
        port = int(line.removeprefix("port "))
        assert 20000 <= port <= 29999
        wait_for(lambda: route.reports, 30, "the report")
        assert route.reports == [("token secret-token", {"host": "node7", "port": port})]
        assert job.poll() is None
    finally:
        job.kill()
        job.wait()


@pytest.mark.parametrize("route", [((403,), 0.0)], indirect=True)
def test_a_refused_report_stops_the_server_with_the_reason(route: Route, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    job = run_job(route, log)
    try:
        assert job.wait(30) != 0  # the server (sleep) was stopped
    finally:
        job.kill()
    assert "the hub refused this server's address: 403" in log.read_text()


@pytest.mark.parametrize("route", [((503, 204), 0.0)], indirect=True)
def test_a_hub_that_cannot_check_the_report_yet_is_asked_again(
    route: Route, tmp_path: Path
) -> None:
    """503: the hub could not ask the scheduler where the job runs; the server keeps running."""
    log = tmp_path / "job.log"
    job = run_job(route, log)
    try:
        wait_for(lambda: len(route.reports) == 2, 30, "the report to be sent again")
        assert route.reports[0] == route.reports[1]
        assert job.poll() is None
    finally:
        job.kill()
        job.wait()
    assert "retrying" in log.read_text()
