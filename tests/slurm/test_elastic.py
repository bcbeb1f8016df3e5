"""An elastic cluster for real: a slurmctld of its own whose nodes are CLOUD nodes that
`hubstack cluster apply` declared, and a hub whose servers are jobs on it. A start makes
slurmctld run hubstack's resume program, which boots a network-namespace node with its own
slurmd and address; the server runs there and is reached through the proxy; idle nodes
are released, failed boots reported and retried elsewhere, orphans released.

One controller and one hub serve every case, in order: the cases build on each other's
nodes (a node kept busy by one server makes the next start boot another), and the waits
Slurm's timers impose overlap with the next case's work where they can.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import Hub, Session, free_port_block, running_hub, wait_for

from hubstack.system import netns, tool

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

BRIDGE, SUBNET, HOST, PORT = "hst0", "10.214.0.0/24", "10.214.0.1", 6927
ADDRESSES = {"el1": "10.214.0.2", "el2": "10.214.0.3"}
IDLE_S = 30  # the shortest idle time cluster.node_groups allows
RESUME_TIMEOUT_S = 30

BASE_CONF = """\
ClusterName=hselastic
SlurmctldHost={host}({address})
SlurmctldPort={port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A job requeued from a failed node waits cred_expire (120 s by default) to start again.
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldPidFile={d}/slurmctld.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
ReturnToService=2
Include {d}/hubstack-cluster.conf
# For the test only, after the include (Slurm takes a key's last value): the power-saving
# thread looks every second instead of every 10 s, and a released node may boot again
# 5 s after its suspend instead of 30 s.
SlurmctldParameters=idle_on_node_suspend,power_save_interval=1,power_save_min_interval=0
SuspendTimeout=5
"""

CLUSTER = {
    "slurm_conf": "{d}/slurm.conf",
    "state_dir": "{d}/records",
    "resume_timeout": f"{RESUME_TIMEOUT_S}s",
    "retry_failed_after": "8s",  # long enough to see the failure in the status
    "local": {"bridge": BRIDGE, "subnet": SUBNET},
    "node_groups": [
        {
            "name": "el",
            "max_nodes": 2,
            "cpus": 1,
            "memory": "1G",
            "partition": "elastic",
            "idle": f"{IDLE_S}s",
        }
    ],
}


@dataclass(frozen=True)
class Elastic:
    directory: Path
    config: Path
    cluster: dict[str, Any]  # the config's cluster section, which the hub shares
    env: dict[str, str]

    def hubstack(self, *args: str) -> str:
        argv = [sys.executable, "-m", "hubstack.cli", "cluster", *args]
        proc = subprocess.run(
            [*argv, "--config", str(self.config)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def slurm(self, *argv: str) -> str:
        proc = subprocess.run(
            [tool(argv[0]), *argv[1:]], capture_output=True, text=True, env=self.env, check=True
        )
        return proc.stdout

    def rows(self) -> dict[str, dict[str, str]]:
        return {row["node"]: row for row in json.loads(self.hubstack("status", "--json"))}

    def status(self) -> dict[str, str]:
        return {node: row["status"] for node, row in self.rows().items()}

    def records(self) -> dict[str, Any]:
        records: dict[str, Any] = json.loads((self.directory / "records/nodes.json").read_text())
        return records

    def node(self, name: str) -> str:
        return self.slurm("scontrol", "show", "node", name)


@pytest.fixture(scope="module")
def elastic(slurm_cluster: object) -> Iterator[Elastic]:
    """The elastic controller (munge comes from the local cluster's fixture)."""
    d = Path(tempfile.mkdtemp(prefix="hs-elastic-", dir="/var/tmp"))
    d.chmod(0o755)  # users' sbatch reads slurm.conf here
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    host = os.uname().nodename
    conf.write_text(BASE_CONF.format(host=host, address=HOST, port=PORT, d=d))
    cluster = json.loads(json.dumps(CLUSTER).replace("{d}", str(d)))
    config = d / "hubstack.yaml"
    config.write_text(yaml.safe_dump({"hub": {"data_dir": str(d / "data")}, "cluster": cluster}))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    elastic = Elastic(d, config, cluster, env)
    applied = elastic.hubstack("apply")
    assert f"wrote {d}/hubstack-cluster.conf" in applied, applied
    assert conf.read_text().count("Include ") == 1, "apply keeps the site's own Include line"
    netns.ensure_bridge(BRIDGE, SUBNET)
    ctld = subprocess.Popen(
        [tool("slurmctld"), "-D", "-c", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: "elastic" in elastic.slurm("sinfo", "-h"), 30, "slurmctld up")
        yield elastic
    finally:
        subprocess.run([tool("scancel"), "--partition=elastic"], env=env, check=False)
        ctld.terminate()
        ctld.wait(30)
        for name in netns.names("hsn-el"):
            netns.delete(name)
        subprocess.run([tool("ip"), "link", "delete", BRIDGE], check=False)
        if not os.environ.get("HUBSTACK_KEEP_TEST_ROOT"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(elastic: Elastic) -> Iterator[Hub]:
    """A hub whose servers are jobs on the elastic cluster. Jobs reach it through its proxy
    at the bridge's address (``backend.slurm.hub_url``), as nodes reach a real hub."""
    port = free_port_block()
    slurm = {
        "hub_url": f"http://{HOST}:{port}/hub/api",
        "poll_interval": "2s",
        "pending_poll_interval": "1s",
        "fields": {"partition": {"choices": ["elastic"]}},
    }
    overrides = {
        "hub": {"bind": f"0.0.0.0:{port}"},
        "backend": {"type": "slurm", "slurm": slurm},
        "machines": [{"id": "small", "display": "Small", "cpu": 1, "memory": "512M"}],
        "cluster": elastic.cluster,
        "groups": {"lab": {"members": ["alice", "bob"], "champions": ["carol"]}},
        # The monitor's round runs the reconciler.
        "alerts": {"check_interval": "3s"},
        "extra_jupyterhub_config": {"HubstackSpawner": {"poll_interval": 2}},
    }
    with running_hub(overrides, port=port, env=elastic.env) as running:
        yield running


def progress_until(
    session: Session, server: str, stop: Callable[[str], bool], timeout: float
) -> list[str]:
    """The progress messages of ``server``'s start up to the first that ``stop`` accepts
    (or the end of the start)."""
    events = session.progress(server, timeout, lambda e: stop(str(e.get("message", ""))))
    return [str(event.get("message", "")) for event in events]


def jobs_of(elastic: Elastic, account: str) -> list[str]:
    return elastic.slurm("squeue", "-h", "-u", account, "-o", "%i").split()


def job_state(elastic: Elastic, job: str) -> str:
    return elastic.slurm("squeue", "-h", "-j", job, "-o", "%T").strip() or "GONE"


def submit(elastic: Elastic, script: str, *options: str) -> tuple[str, Path]:
    out = elastic.directory / f"job-{len(list(elastic.directory.glob('job-*')))}.out"
    argv = ["sbatch", "--parsable", "-p", "elastic", "-o", str(out), *options]
    return elastic.slurm(*argv, "--wrap", script).strip(), out


def reaches_its_server(session: Session, server: str = "") -> bool:
    """The server answers its owner through the proxy."""
    resp = requests.get(
        f"{session.server_url(server)}api/status",
        headers={"Authorization": f"token {session.token}"},
        timeout=30,
    )
    return resp.status_code == 200 and "started" in resp.json()


@contextlib.contextmanager
def unreachable(node: str) -> Iterator[None]:
    """The host drops what it would send to ``node`` (a blackhole route): the node's slurmd
    starts but cannot register, as if it had not started."""
    route = [tool("ip"), "route", "{}", "blackhole", f"{ADDRESSES[node]}/32"]
    subprocess.run([arg.format("add") for arg in route], check=True)
    try:
        yield
    finally:
        subprocess.run([arg.format("delete") for arg in route], check=False)


def machines() -> list[str]:
    return sorted(name.removeprefix("hsn-") for name in netns.names("hsn-el"))


def test_a_start_on_a_powered_down_cluster_boots_a_node_and_runs_there(
    elastic: Elastic, alice: Session
) -> None:
    assert set(elastic.status().values()) == {"powered down"}
    assert alice.start().status_code in (201, 202)
    said = progress_until(alice, "", lambda _: False, 180)
    assert any(re.fullmatch(r"Job \d+: starting a node for you", m) for m in said), said
    listens = [m for m in said if "the server listens on" in m]
    assert listens and listens[0].split()[-1].startswith(ADDRESSES["el1"] + ":"), said
    assert reaches_its_server(alice)
    row = elastic.rows()["el1"]
    assert row == {
        "node": "el1",
        "group": "el",
        "partition": "elastic",
        "status": "busy",
        "address": ADDRESSES["el1"],
    }
    assert machines() == ["el1"]


def test_the_hub_killed_while_a_node_boots_takes_the_start_back(
    elastic: Elastic, hub: Hub, bob: Session
) -> None:
    """alice's server keeps el1 busy, so bob's start boots el2; the hub is killed during
    the boot (slurmctld's resume program goes on without it) and started again. el2's
    slurmd cannot reach the controller until the hub is dead, so the boot is surely under
    way when the hub dies (slurmd retries its registration every second)."""
    booted = elastic.records()["boots"]["el"]
    typically = f"starting a node for you (typically ~{round(booted[0])} s)"
    with unreachable("el2"):
        assert bob.start().status_code in (201, 202)
        said = progress_until(bob, "", lambda m: typically in m, 120)
        assert typically in said[-1], said
        assert re.fullmatch(r"booting for \d+ s", elastic.status()["el2"]), elastic.status()
        (job,) = jobs_of(elastic, hub.prefix + "bob")
        kill_hub(hub)
    hub.start()
    # The restarted hub starts bob's server again itself, taking its job back.
    wait_for(lambda: (bob.model() or {}).get("ready"), 120, "bob's server to be taken back")
    assert reaches_its_server(bob)
    # One job, one boot, one machine per node: records, provider and Slurm agree.
    assert jobs_of(elastic, hub.prefix + "bob") == [job]
    assert elastic.slurm("squeue", "-h", "-j", job, "-o", "%N").strip() == "el2"
    records = elastic.records()
    assert len(records["boots"]["el"]) == 2, records
    assert machines() == ["el1", "el2"]
    for node, address in ADDRESSES.items():
        assert records["nodes"][node]["state"] == "up", records
        assert records["nodes"][node]["address"] == address, records
        assert f"NodeAddr={address} " in elastic.node(node)


def test_the_cluster_page_is_for_admins_and_champions(
    elastic: Elastic, hub: Hub, alice: Session
) -> None:
    admin = hub.login("admin", hub.admin_password)
    carol = hub.new_user("carol")
    shown = list(elastic.rows().values())  # both busy, with alice's and bob's servers
    assert [row["status"] for row in shown] == ["busy", "busy"]
    for session in (admin, carol):
        api = session.api("GET", "/cluster/nodes")
        assert api.status_code == 200, api.text
        assert api.json()["nodes"] == shown
        page = session.http.get(f"{hub.url}/hub/cluster", timeout=30)
        assert page.status_code == 200
        for row in shown:
            cells = "".join(
                f"<td>{row[key]}</td>" for key in ("node", "group", "partition", "address")
            )
            assert cells in re.sub(r">\s+<", "><", page.text), page.text
            assert '<td class="hs-node-status">busy</td>' in page.text
        home = session.http.get(f"{hub.url}/hub/home", timeout=30).text
        assert 'href="/hub/cluster"' in home, "the nav bar links the page"
    # A member of the group who is not its champion.
    assert alice.api("GET", "/cluster/nodes").status_code == 403
    assert alice.http.get(f"{hub.url}/hub/cluster", timeout=30).status_code == 403
    assert "hub/cluster" not in alice.http.get(f"{hub.url}/hub/home", timeout=30).text


def test_stopped_servers_nodes_are_released_after_their_idle_time(
    elastic: Elastic, alice: Session, bob: Session
) -> None:
    alice.stop()
    bob.stop()
    wait_for(lambda: not machines(), IDLE_S + 60, "the idle nodes to be released")
    wait_for(
        lambda: set(elastic.status().values()) == {"powered down"}, 30, "all nodes powered down"
    )
    assert {n["state"] for n in elastic.records()["nodes"].values()} == {"released"}


def test_a_machine_slurm_does_not_know_of_is_released_by_the_reconciler(
    elastic: Elastic, hub: Hub
) -> None:
    netns.create("hsn-el2", BRIDGE, f"{ADDRESSES['el2']}/24")  # e.g. left by a cut suspend
    wait_for(lambda: not machines(), 30, "the hub's reconciler to release el2's machine")
    # Logged once the reconciler's round is over, just after the release.
    said = "cluster: el2: a machine runs while Slurm has the node powered down; released it"
    wait_for(lambda: said in hub.log(), 30, "the hub to log the release")


def test_a_failed_boot_is_reported_and_its_job_runs_on_the_other_node(
    elastic: Elastic, hub: Hub
) -> None:
    """el1 boots first; its slurmd starts but never reaches the controller (a blackhole
    route on the host), so Slurm hears from it as little as from a slurmd that did not
    start. Then the reconciler returns el1, which boots again for a job that needs it."""
    wait_for(lambda: all_idle_powered_down(elastic), 30, "no node powering down")
    with unreachable("el1"):
        job, out = submit(elastic, "echo $SLURMD_NODENAME; hostname -I")
        booting = wait_for(
            lambda: (s := elastic.status()["el1"]).startswith("booting for") and s, 30, "el1 boot"
        )
        assert re.fullmatch(r"booting for \d+ s", booting), booting
        reason = f"its slurmd did not register within {RESUME_TIMEOUT_S} s"
        try:
            wait_for(
                lambda: elastic.status()["el1"] == f"failed ({reason})",
                RESUME_TIMEOUT_S + 30,
                "el1 failed",
            )
        except TimeoutError:
            raise AssertionError(elastic.node("el1")) from None
        shown = elastic.node("el1")
        assert f"Reason=hubstack: {reason}" in shown and "DOWN" in shown, shown
        assert "el1" not in machines(), "the failed node's machine is released"
    wait_for(lambda: job_state(elastic, job) == "GONE", 90, "the job to run on el2 and end")
    assert out.read_text().split() == ["el2", ADDRESSES["el2"]]
    # The hub's reconciler returns el1 to service once Slurm has powered it down, and it
    # boots again for the next job that needs it.
    try:
        wait_for(lambda: elastic.status()["el1"] == "powered down", 60, "el1 back in service")
    except TimeoutError:
        raise AssertionError(elastic.node("el1")) from None
    assert "cluster: el1: failed earlier; returned it to service, powered down" in hub.log()
    again, out = submit(elastic, "echo $SLURMD_NODENAME; hostname -I", "--nodelist=el1")
    wait_for(lambda: job_state(elastic, again) == "GONE", 90, "the job on el1 to end")
    assert out.read_text().split() == ["el1", ADDRESSES["el1"]]
    assert elastic.records()["nodes"]["el1"]["state"] == "up"


def all_idle_powered_down(elastic: Elastic) -> bool:
    """Every node powered down and none still powering down (Slurm's SuspendTimeout)."""
    shown = elastic.slurm("sinfo", "-h", "-N", "-o", "%T")
    return all(state == "idle~" for state in shown.split())
