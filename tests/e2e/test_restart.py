"""Users' servers outlive the hub: after ``kill -9`` and after ``SIGTERM`` the restarted hub
takes them back, with their routes, kernels and notices, and runs one proxy and one of each
service; ``hubstack up --stop-servers`` stops them with the hub."""

from __future__ import annotations

import pwd
import signal
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import (
    kill_hub,
    one_of_each,
    single_user_servers,
    start_kernels,
    terminate_hub,
    wait_kernels_answer,
)
from hubtest import Hub, Session, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

HUNGRY = "b = bytearray(900 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')"
OOM_NOTICE = "ran out of memory (limit 400M)"


def uid_of(hub: Hub, session: Session) -> int:
    return pwd.getpwnam(hub.prefix + session.name).pw_uid


def oom_notices(session: Session) -> int:
    home = session.http.get(f"{session.hub.url}/hub/home", timeout=30).text
    return home.count(OOM_NOTICE)


def test_servers_kernels_and_notices_survive_kill_and_stop_of_the_hub(
    hub: Hub, alice: Session, bob: Session
) -> None:
    tiny = {"machine": "tiny"}
    kernels = start_kernels(
        [(alice, "", {}), (alice, "one", {}), (alice, "two", tiny), (bob, "", {}), (bob, "one", {})]
    )
    uids = {uid_of(hub, alice), uid_of(hub, bob)}
    processes = single_user_servers(uids)
    assert sum(map(len, processes.values())) == 5
    wait_for(lambda: one_of_each(hub), 60, "the hub's proxy and services")

    kill_hub(hub)
    hub.start()
    wait_for(lambda: one_of_each(hub), 60, "one proxy and one of each service after kill -9")
    wait_kernels_answer(kernels)
    assert single_user_servers(uids) == processes, "the same servers, none started twice"

    # Out-of-memory kills after the restart are still noticed and told.
    assert alice.run_code(HUNGRY, "two").status == "died"
    wait_for(lambda: oom_notices(alice) == 1, 60, "the out-of-memory notice")

    terminate_hub(hub)
    assert single_user_servers(uids) == processes, "stopping the hub leaves the servers running"
    hub.start()
    wait_for(lambda: one_of_each(hub), 60, "one proxy and one of each service after SIGTERM")
    wait_kernels_answer(kernels)
    assert single_user_servers(uids) == processes
    assert oom_notices(alice) == 1, "the notice survives the restart"
    for kernel in kernels:
        assert (kernel.session.model(kernel.server) or {}).get("ready")
        kernel.session.stop(kernel.server, remove=bool(kernel.server))
    assert single_user_servers(uids) == {uid: [] for uid in uids}


def test_up_with_stop_servers_stops_them_with_the_hub(hub: Hub, alice: Session) -> None:
    uid = uid_of(hub, alice)
    start_kernels([(alice, "", {})])
    terminate_hub(hub)
    hub.up_args = ("--stop-servers",)
    try:
        hub.start()
        assert alice.model("")["ready"], "the restart takes the server back"
        terminate_hub(hub)
        assert single_user_servers({uid})[uid] == [], "the hub stopped its users' servers"
    finally:
        hub.up_args = ()
    hub.start()
    assert alice.model("") is None


def sigint_ignored(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (bit 1 of SigIgn in /proc's status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGINT - 1))
    raise AssertionError(f"no SigIgn for {pid}")


def test_a_hub_started_with_sigint_ignored_gives_its_services_sigint_back(hub: Hub) -> None:
    """As from a script's background (`nohup hubstack up &`): JupyterHub stops services with
    SIGINT first, so services that ignored it would each hold the hub's stop."""
    terminate_hub(hub)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        hub.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    services = wait_for(lambda: one_of_each(hub), 60, "one proxy and one of each service")
    assert hub.proc is not None and not sigint_ignored(hub.proc.pid)
    assert not any(sigint_ignored(pid) for name, pid in services.items() if name != "proxy")
    terminate_hub(hub)
    assert "binder service stopped" in hub.log()
    hub.start()
