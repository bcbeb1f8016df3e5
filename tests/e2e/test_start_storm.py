"""A class arriving at once: ten users log in through the form and start their servers at
the same moment, on a hub that runs two starts at a time and forks servers from a fork
server. Every one of them runs a cell on their own server (their kernel runs as their own
account and talks to it over IPC, taking no TCP port another start could want), those
beyond the first two saw their place in line, and the hub then stops on SIGTERM with its
services at once. Correctness only: no time is asserted."""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import hub_processes
from hubtest import Abort, Hub, Session, running_hub, stream_events, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

USERS = [f"storm{i}" for i in range(10)]
CONCURRENT = 2
# What each user's kernel reports: who it runs as, how it talks to its server, and the
# server it belongs to (JupyterHub's prefix, inherited from the server's environment).
WHO = (
    "import os; from ipykernel.kernelapp import IPKernelApp as k; "
    "print(os.getuid(), k.instance().transport, os.environ['JUPYTERHUB_SERVICE_PREFIX'])"
)
WAITING = re.compile(r"^Waiting to start: (you are next|(\d+) ahead of you)$")


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    overrides = {
        # Servers are forked from the environment's fork server, as a class's hub would
        # run them (tests/security/test_fork_server.py checks what a fork holds).
        "backend": {"local": {"concurrent_starts": CONCURRENT, "fork_server": True}},
        # Time in line counts towards a start's time limit: room for ten starts in a row
        # on a busy machine.
        "extra_jupyterhub_config": {"HubstackSpawner": {"start_timeout": 600}},
    }
    with running_hub(overrides) as running:
        yield running


def arrive(session: Session) -> dict[str, Any]:
    """One user's first minute: start the server, follow its progress, run a cell."""
    assert session.start().status_code in (201, 202)
    events = session.progress(timeout=600)
    run = session.run_code(WHO, timeout=300)
    return {"events": events, "run": run}


@pytest.fixture(scope="module")
def sessions(hub: Hub) -> list[Session]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(hub.new_user, USERS))


@pytest.fixture(scope="module")
def storm(sessions: list[Session]) -> dict[str, dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        results = pool.map(arrive, sessions)
        return dict(zip(USERS, results, strict=True))


def test_every_user_runs_a_cell_on_their_own_server(
    hub: Hub, storm: dict[str, dict[str, Any]]
) -> None:
    for name, result in storm.items():
        assert result["events"][-1].get("ready"), (name, result["events"])
        run = result["run"]
        assert run.status == "ok", (name, run)
        uid, transport, prefix = run.stdout.split()
        assert int(uid) == pwd.getpwnam(hub.prefix + name).pw_uid, (name, run.stdout)
        assert prefix == f"/user/{name}/", (name, run.stdout)
        assert transport == "ipc", (name, run.stdout)


def test_starts_beyond_the_limit_wait_in_line_and_see_their_place(
    storm: dict[str, dict[str, Any]],
) -> None:
    places: dict[str, list[int]] = {}
    for name, result in storm.items():
        for event in result["events"]:
            match = WAITING.match(event.get("message", ""))
            if match:
                places.setdefault(name, []).append(int(match[2] or 0))
    # Whether any of these starts overlapped depends on how fast the hub took them in (the
    # SIGTERM test below waits until one does); the first start never waits.
    assert len(places) <= len(USERS) - 1
    for name, seen in places.items():
        assert seen == sorted(seen, reverse=True), (name, seen)  # only ever moves forward
        assert max(seen) <= len(USERS) - CONCURRENT - 1, (name, seen)


def waits_in_line(session: Session, server: str) -> bool:
    """Whether the start of ``server`` is (or was) in line: its progress says so."""

    def started() -> dict[str, Any] | None:
        assert session.hub.proc is not None
        if session.hub.proc.poll() is not None:
            raise Abort("the hub has stopped")
        return session.model(server)

    wait_for(started, 60, f"{session.name}'s start of {server!r}")
    path = f"{session.server_path(server)}/progress"
    with session.api("GET", path, stream=True, timeout=120) as resp:
        for event in stream_events(resp):
            if WAITING.match(event.get("message", "")):
                return True
    return False


def test_the_hub_stops_with_its_services_on_sigterm_while_starts_wait(
    hub: Hub, sessions: list[Session], storm: dict[str, dict[str, Any]]
) -> None:
    """Every user starts a second server at once; while some are still in line, SIGTERM to
    the hub alone: it exits with status 0 (queued starts and the threads preparing storage
    do not hold it), its proxy and services are gone, and the binder service stopped on
    the hub's signal."""
    assert hub.proc is not None
    before = hub_processes(hub)
    assert all(before.values()), before
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        for session in sessions:
            pool.submit(session.start, "late")
        in_line = [pool.submit(waits_in_line, session, "late") for session in sessions]
        for seen in concurrent.futures.as_completed(in_line, timeout=300):
            if seen.result():
                break
        else:
            pytest.fail("no start waited in line")
        os.kill(hub.proc.pid, signal.SIGTERM)
        assert hub.proc.wait(60) == 0
    assert not any(hub_processes(hub).values())
    assert "binder service stopped" in hub.log()
