"""The processes one test hub runs beside itself: its proxy and its services.

A restart must leave exactly one of each, children of the hub that runs now; these helpers
find them by what ties them to one hub (its ports), whoever their parent is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from hubtest import Execution, Hub, Session, execute, wait_for

SERVICES = ("binder", "idle-culler")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended, or is not readable
        return b""


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (0 once it has ended)."""
    stat = _read(Path(f"/proc/{pid}/stat")).decode()
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else 0


def hub_processes(hub: Hub) -> dict[str, list[int]]:
    """Pids of ``hub``'s proxy and of each of its services, alive now (zombies left out)."""
    api = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.port + 2}/hub/api".encode()
    found: dict[str, list[int]] = {"proxy": [], **{name: [] for name in SERVICES}}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or b") Z " in _read(entry / "stat"):
            continue
        argv = _read(entry / "cmdline").split(b"\0")
        if any(arg.endswith(b"configurable-http-proxy") for arg in argv):
            if str(hub.port + 1).encode() in argv:
                found["proxy"].append(int(entry.name))
            continue
        environ = _read(entry / "environ").split(b"\0")
        if api in environ:
            for name in SERVICES:
                if f"JUPYTERHUB_SERVICE_NAME={name}".encode() in environ:
                    found[name].append(int(entry.name))
    return found


def one_of_each(hub: Hub) -> dict[str, int]:
    """The proxy and services of ``hub`` if there is exactly one of each, all the hub's
    children; else a falsy value (for ``wait_for``)."""
    assert hub.proc is not None
    found = hub_processes(hub)
    if any(len(pids) != 1 for pids in found.values()):
        return {}
    if any(parent_of(pids[0]) != hub.proc.pid for pids in found.values()):
        return {}
    return {name: pids[0] for name, pids in found.items()}


def kill_hub(hub: Hub) -> None:
    """``kill -9`` of the hub process alone, as a crash or the OOM killer would do it."""
    assert hub.proc is not None
    os.kill(hub.proc.pid, 9)
    hub.proc.wait(30)


def terminate_hub(hub: Hub) -> None:
    """``SIGTERM`` to the hub process alone (as ``kill`` or a service manager sends it), and
    wait until it has shut down."""
    assert hub.proc is not None
    os.kill(hub.proc.pid, 15)
    hub.proc.wait(90)


@dataclass(frozen=True)
class Kernel:
    """A kernel on a user's server that was told ``x = 42``."""

    session: Session
    server: str
    id: str

    def run(self, code: str) -> Execution:
        base = self.session.server_url(self.server)
        return execute(base, self.id, self.session.token, code, 60)

    def holds_x(self) -> bool:
        """The same kernel still answers, through the proxy, with what it was told."""
        run = self.run("print(x)")
        return run.status == "ok" and run.stdout.strip() == "42"


def start_kernels(
    servers: list[tuple[Session, str, dict[str, Any]]], timeout: float = 120
) -> list[Kernel]:
    """Start every server with its options (all at once), then one kernel on each holding
    ``x = 42``."""
    for session, server, options in servers:
        assert session.start(server, options).status_code in (201, 202)
    kernels = []
    for session, server, _ in servers:
        session.wait_ready(server, timeout)
        headers = {"Authorization": f"token {session.token}"}
        url = f"{session.server_url(server)}api/kernels"
        created = requests.post(url, headers=headers, json={}, timeout=60)
        created.raise_for_status()
        kernel = Kernel(session, server, created.json()["id"])
        assert kernel.run("x = 42").status == "ok"
        kernels.append(kernel)
    return kernels


def wait_kernels_answer(kernels: list[Kernel], timeout: float = 60) -> None:
    """Wait until each kernel answers with ``x = 42`` again (after a hub restart).

    Retried: output and reply come on different channels, and under load the reply may
    come first (a lost kernel never prints 42).
    """
    for kernel in kernels:
        what = f"{kernel.server!r} of {kernel.session.name} to answer with its kernel"
        wait_for(kernel.holds_x, timeout, what)


def single_user_servers(uids: set[int]) -> dict[int, list[int]]:
    """Pids of the single-user server processes of each of ``uids``."""
    found: dict[int, list[int]] = {uid: [] for uid in uids}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            owner = entry.stat().st_uid
        except OSError:
            continue
        argv = _read(entry / "cmdline").split(b"\0")
        # ``<python> jupyterhub-singleuser ...``, on the local backend through listen_fd.py:
        # ``<python> -c <code> jupyterhub-singleuser ...``.
        if owner in uids and any(a.endswith(b"jupyterhub-singleuser") for a in argv[:4]):
            found[owner].append(int(entry.name))
    return found
