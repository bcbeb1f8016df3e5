"""An elastic cluster for real: a slurmctld of its own whose nodes are CLOUD nodes that
`hubstack cluster apply` declared; jobs make slurmctld run hubstack's resume program, which
boots network-namespace nodes with their own slurmd and address; idle nodes are released."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hubtest import wait_for

from hubstack.system import netns, tool

BRIDGE, SUBNET, PORT = "hst0", "10.214.0.0/24", 6927
IDLE_S = 30

BASE_CONF = """\
ClusterName=hselastic
SlurmctldHost={host}(10.214.0.1)
SlurmctldPort={port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
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
"""

HUBSTACK_YAML = f"""\
hub:
  data_dir: {{d}}/data
cluster:
  slurm_conf: {{d}}/slurm.conf
  resume_timeout: 30s
  retry_failed_after: 1s
  local: {{{{bridge: {BRIDGE}, subnet: {SUBNET}}}}}
  node_groups:
    - {{{{name: el, max_nodes: 2, cpus: 1, memory: 256M, partition: elastic, idle: {IDLE_S}s}}}}
"""


@dataclass(frozen=True)
class Elastic:
    directory: Path
    config: Path
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

    def status(self) -> dict[str, str]:
        return {row["node"]: row["status"] for row in json.loads(self.hubstack("status", "--json"))}


@pytest.fixture(scope="module")
def elastic(slurm_cluster: object) -> Iterator[Elastic]:
    """The elastic controller (munge comes from the local cluster's fixture)."""
    d = Path(tempfile.mkdtemp(prefix="hs-elastic-", dir="/var/tmp"))
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(BASE_CONF.format(host=os.uname().nodename, port=PORT, d=d))
    config = d / "hubstack.yaml"
    config.write_text(HUBSTACK_YAML.format(d=d))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Elastic(d, config, env)
    applied = cluster.hubstack("apply")
    assert f"Include {d}/hubstack-cluster.conf" in conf.read_text(), applied
    netns.ensure_bridge(BRIDGE, SUBNET)
    ctld = subprocess.Popen(
        [tool("slurmctld"), "-D", "-c", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: "elastic" in cluster.slurm("sinfo", "-h"), 30, "slurmctld up")
        yield cluster
    finally:
        ctld.terminate()
        ctld.wait(30)
        for name in netns.names("hsn-el"):
            netns.delete(name)
        subprocess.run([tool("ip"), "link", "delete", BRIDGE], check=False)


def job_state(cluster: Elastic, job: str) -> str:
    return cluster.slurm("squeue", "-h", "-j", job, "-o", "%T").strip() or "GONE"


def submit(cluster: Elastic, script: str) -> tuple[str, Path]:
    out = cluster.directory / f"job-{len(list(cluster.directory.glob('job-*')))}.out"
    job = cluster.slurm(
        "sbatch", "--parsable", "-p", "elastic", "-o", str(out), "--wrap", script
    ).strip()
    return job, out


def all_powered_down(cluster: Elastic) -> bool:
    """Every node powered down and none still powering down (Slurm's SuspendTimeout)."""
    shown = cluster.slurm("sinfo", "-h", "-N", "-o", "%T")
    return all(state == "idle~" for state in shown.split())


def test_a_job_runs_on_a_node_with_its_own_address_and_idle_nodes_are_released(
    elastic: Elastic,
) -> None:
    job, out = submit(elastic, "echo $SLURMD_NODENAME; hostname -I")
    wait_for(lambda: job_state(elastic, job) == "GONE", 120, "the job to run and end")
    node, address = out.read_text().split()
    rows = json.loads(elastic.hubstack("status", "--json"))
    assert {"node": node, "group": "el", "status": "idle", "address": address} in rows
    # Released after their idle time: the machines are gone and Slurm has them powered down.
    wait_for(lambda: not netns.names("hsn-el"), IDLE_S + 90, "the idle nodes to be released")
    wait_for(lambda: elastic.status()[node] == "powered down", 60, f"{node} powered down")
    records = json.loads((elastic.directory / "data/cluster/nodes.json").read_text())
    assert records["boots"]["el"], "boot times are kept for the 'typically ~N s' estimate"


def test_a_machine_slurm_does_not_know_of_is_released_by_the_reconciler(
    elastic: Elastic,
) -> None:
    wait_for(lambda: elastic.status()["el2"] == "powered down", 60, "el2 powered down")
    netns.create("hsn-el2", BRIDGE, "10.214.0.3/24")  # e.g. left by a suspend cut short
    assert elastic.hubstack("reconcile") == (
        "el2: a machine runs while Slurm has the node powered down; released it\n"
    )
    assert netns.names("hsn-el") == []
    assert elastic.hubstack("reconcile") == ""


def test_a_node_that_fails_to_boot_is_reported_released_and_its_job_kept(
    elastic: Elastic,
) -> None:
    wait_for(lambda: all_powered_down(elastic), 90, "all nodes powered down")
    # el1 comes first, and its link cannot be made: a device has the name its host end needs.
    subprocess.run([tool("ip"), "link", "add", "vhsn-el1", "type", "bridge"], check=True)
    try:
        job, _ = submit(elastic, "true")
        try:
            failed = wait_for(
                lambda: (s := elastic.status()["el1"]).startswith("failed") and s, 60, "el1 failed"
            )
        except TimeoutError:
            raise AssertionError(elastic.slurm("scontrol", "show", "node", "el1")) from None
        assert failed.startswith("failed (could not create the node: "), failed
        shown = elastic.slurm("scontrol", "show", "node", "el1")
        assert "Reason=hubstack: could not create the node" in shown
        assert "DOWN" in shown
        assert not netns.names("hsn-el1"), "the failed node's machine is released"
        # Slurm keeps the job, to run on another node.
        assert job_state(elastic, job) in ("PENDING", "CONFIGURING", "RUNNING", "GONE")
        elastic.slurm("scancel", job)
    finally:
        subprocess.run([tool("ip"), "link", "delete", "vhsn-el1"], check=False)
    # The reconciler returns it to service, powered down, once its cool-down is over.
    # once Slurm has powered it down, at its ResumeTimeout, plus its SuspendTimeout
    try:
        returned = wait_for(lambda: elastic.hubstack("reconcile"), 120, "a reconciler finding")
    except TimeoutError:
        raise AssertionError(elastic.slurm("scontrol", "show", "node", "el1")) from None
    assert returned == "el1: failed earlier; returned it to service, powered down\n"
    try:
        wait_for(lambda: elastic.status()["el1"] == "powered down", 30, "el1 back in service")
    except TimeoutError:
        raise AssertionError(elastic.slurm("scontrol", "show", "node", "el1")) from None
