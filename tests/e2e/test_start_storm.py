"""A class arriving at once: ten users log in through the form and start their servers at
the same moment, on a hub that runs two starts at a time. Every one of them runs a cell on
their own server (their kernel runs as their own account and talks to it over IPC, taking
no TCP port another start could want), those beyond the first two saw their place in line,
and the hub then stops on SIGTERM with its services at once. Correctness only: no time is
asserted."""

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
from hubtest import Hub, Session, running_hub

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
        "backend": {"local": {"concurrent_starts": CONCURRENT}},
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
def storm(hub: Hub) -> dict[str, dict[str, Any]]:
    sessions = [hub.new_user(name) for name in USERS]
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
    # Ten starts arrive while the first two run: at least the last in line waited.
    assert len(places) >= 1, storm
    assert len(places) <= len(USERS) - 1
    for name, seen in places.items():
        assert seen == sorted(seen, reverse=True), (name, seen)  # only ever moves forward
        assert max(seen) <= len(USERS) - CONCURRENT - 1, (name, seen)


def test_the_hub_stops_with_its_services_on_sigterm(
    hub: Hub, storm: dict[str, dict[str, Any]]
) -> None:
    """After the storm, SIGTERM to the hub alone: it exits with status 0, its proxy and
    services are gone, and the binder service stopped on the hub's signal."""
    assert hub.proc is not None
    before = hub_processes(hub)
    assert all(before.values()), before
    os.kill(hub.proc.pid, signal.SIGTERM)
    assert hub.proc.wait(60) == 0
    assert not any(hub_processes(hub).values())
    assert "binder service stopped" in hub.log()
