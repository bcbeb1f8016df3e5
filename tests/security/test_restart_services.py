"""A hub killed with ``kill -9`` leaves nothing that stands in the way of its restart.

The services the hub starts (the binder service, the idle culler) end with it, so the
restarted hub's own services can take their ports; the proxy the killed hub left is ended
at the restart through its pid file, and only if that pid still is the proxy: a pid the
kernel has since given to someone else's process is left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubprocesses import hub_processes, kill_hub, one_of_each
from hubtest import Hub, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

BADGE = "/services/binder/badge.svg"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as running:
        yield running


def binder_answers(hub: Hub) -> bool:
    """The binder service answers through the proxy and on its own port."""
    direct = f"http://127.0.0.1:{hub.port + 3}{BADGE}"
    return all(requests.get(url, timeout=5).ok for url in (hub.url + BADGE, direct))


def restart_after_kill(hub: Hub) -> dict[str, int]:
    """``kill -9`` the hub, wait until nothing of it is left but its proxy, start it again."""
    before = wait_for(lambda: one_of_each(hub), 60, "the hub's proxy and services")
    kill_hub(hub)
    wait_for(
        lambda: not any(hub_processes(hub)[name] for name in ("binder", "idle-culler")),
        30,
        "the killed hub's services to end",
    )
    assert hub_processes(hub)["proxy"] == [before["proxy"]], "the proxy outlives the hub"
    hub.start()
    return before


def test_services_end_with_a_killed_hub_and_the_restart_runs_its_own(hub: Hub) -> None:
    before = restart_after_kill(hub)
    after = wait_for(lambda: one_of_each(hub), 60, "one proxy and one of each service")
    assert set(after.values()).isdisjoint(before.values()), "all of them are new processes"
    wait_for(lambda: binder_answers(hub), 60, "the restarted binder service")


def test_a_proxy_pid_given_to_another_process_is_not_killed(
    hub: Hub, free_ids: tuple[int, int]
) -> None:
    """The proxy's pid file outlives the proxy; its pid may be someone else's by now."""
    uid, _ = free_ids
    wait_for(lambda: one_of_each(hub), 60, "the hub's proxy and services")
    kill_hub(hub)
    proxy_pid_file = hub.data_dir / "proxy.pid"
    old_proxy = int(proxy_pid_file.read_text())
    os.kill(old_proxy, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{old_proxy}").exists(), 30, "the old proxy to end")
    # An ordinary account's process, now holding the pid the file names.
    bystander = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"]
    )
    try:
        proxy_pid_file.write_text(str(bystander.pid))
        hub.start()
        wait_for(lambda: one_of_each(hub), 60, "the restarted hub's proxy and services")
        assert bystander.poll() is None, "the hub killed a process that is not its proxy"
    finally:
        bystander.kill()
        bystander.wait()
