"""Users' servers outlive the hub: after ``kill -9`` and after ``SIGTERM`` the restarted hub
takes them back, with their routes, kernels and notices, and runs one proxy and one of each
service; ``hubstack up --stop-servers`` stops them with the hub. A declared environment
changed across restarts (one of them a ``kill -9`` during its build) gives new starts the
new build while running servers keep theirs."""

from __future__ import annotations

import json
import os
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

from hubstack.envs.cache import LAYER_KIND, STORE_KIND

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


# A declared environment's second definition: its postBuild waits for the test's go-ahead,
# so that the hub can be killed while it builds.
DECLARED_V1 = {"requirements": "tabulate==0.9.0"}
GATED_POST_BUILD = "#!/bin/bash\nwhile [ ! -e {gate} ]; do sleep 0.2; done\necho past the gate\n"
PREFIX_CODE = "import sys, tabulate; print(sys.prefix)"


def with_declared(hub: Hub, spec: dict[str, str] | None, restart: bool = True) -> None:
    """The module's environments plus ``declared`` of ``spec`` (None: without it), in the
    config file and, with ``restart``, in the hub."""
    environments = [e for e in hub.overrides["environments"] if e["id"] != "declared"]
    if spec is not None:
        environments.append({"id": "declared", "display": "Declared", "spec": spec})
    hub.overrides = {**hub.overrides, "environments": environments}
    hub.write_config()
    if restart:
        terminate_hub(hub)
        hub.start()


def started_once_built(session: Session, server: str) -> None:
    """Ask for a server of the declared environment until the hub accepts: while it is being
    built, each ask is refused with 400 and the reason."""

    def accepted() -> bool:
        answer = session.start(server, {"environment": "declared"})
        if answer.status_code == 400:
            assert "is being built" in answer.json()["message"], answer.text
            return False
        assert answer.status_code in (201, 202), answer.text
        return True

    wait_for(accepted, 600, "the declared environment's build", interval=2)
    session.wait_ready(server, timeout=120)


def build_logs_saying(hub: Hub, text: str) -> list[Path]:
    return [p for p in (hub.root / "binder/logs").glob("*.log") if text in p.read_text()]


def complete_builds(hub: Hub) -> set[str]:
    """The cache's environments (not the server layer and package store they share), once
    every entry is complete: a package store build the hub runs after a build may be under
    way, but a crash must leave none half-built."""
    envs = hub.root / "binder/envs"

    def all_complete() -> bool:
        return all((entry / "meta.json").is_file() for entry in envs.iterdir())

    wait_for(all_complete, 300, f"complete entries in {sorted(os.listdir(envs))}")
    metas = [
        json.loads((entry / "meta.json").read_text()) | {"key": entry.name}
        for entry in envs.iterdir()
    ]
    return {m["key"] for m in metas if m.get("kind") not in (LAYER_KIND, STORE_KIND)}


def layers(hub: Hub) -> list[Path]:
    """The cache's server layers (complete_builds makes sure no entry is half-built)."""
    metas = (hub.root / "binder/envs").glob("*/meta.json")
    return [m.parent for m in metas if json.loads(m.read_text()).get("kind") == LAYER_KIND]


def test_a_declared_environment_is_built_replaced_while_used_and_pruned(hub: Hub) -> None:
    gate = hub.root / "declared-gate"
    gate.mkdir(mode=0o755)
    declan = hub.new_user("declan")
    try:
        with_declared(hub, DECLARED_V1)
        # kill -9 of the hub while it builds the shared server layer, the first build of
        # this hub: the restarted hub builds the layer again, and uses only a complete one.
        wait_for(lambda: build_logs_saying(hub, "Building the shared server layer"), 300, "layer")
        kill_hub(hub)
        hub.start()
        started_once_built(declan, "")
        assert len(layers(hub)) == 1, "one complete layer, built again after the crash"
        old = Path(declan.run_code(PREFIX_CODE).stdout.strip())
        assert old.parent.parent == hub.root / "binder/envs", old
        assert complete_builds(hub) == {old.parent.name}

        # A changed definition: built anew at the restart, while the old server runs.
        gated = {**DECLARED_V1, "postBuild": GATED_POST_BUILD.format(gate=gate / "open")}
        with_declared(hub, gated)
        spawn_page = declan.http.get(f"{hub.url}/hub/spawn/declan/new", timeout=30).text
        assert "Being built; not ready yet" in spawn_page
        refused = declan.start("new", {"environment": "declared"})
        assert refused.status_code == 400 and "is being built" in refused.json()["message"]
        # kill -9 of the hub as soon as the build has begun (it cannot end: its postBuild
        # waits at the gate): the restarted hub builds again, and nothing half-built is
        # ever offered.
        wait_for(lambda: len(build_logs_saying(hub, "Creating the environment")) == 2, 300, "v2")
        kill_hub(hub)
        (gate / "open").touch()
        hub.start()
        started_once_built(declan, "new")
        new = Path(declan.run_code(PREFIX_CODE, "new").stdout.strip())
        assert new != old and complete_builds(hub) == {old.parent.name, new.parent.name}
        assert Path(declan.run_code(PREFIX_CODE).stdout.strip()) == old, "the old server keeps its"

        # Prune spares the old build while its server runs, and removes it after.
        pruned = hub.cli("env", "prune", "--unused-for", "0s")
        assert pruned.returncode == 0 and "removed 0 environment" in pruned.stdout, pruned.stdout
        declan.stop("")
        pruned = hub.cli("env", "prune", "--unused-for", "0s")
        assert f"removed {old.parent.name[:12]}" in pruned.stdout, pruned.stdout + pruned.stderr
        assert complete_builds(hub) == {new.parent.name}, "the current build stays"
        declan.stop("new", remove=True)
    finally:
        with_declared(hub, None, restart=False)  # the running hub's extra choice is harmless
