"""The autoscaling policy on the real elastic cluster: the reconciler powers up spare nodes
in warm hours and powers idle ones down outside them, never a busy node, never more than
the group has. Same controller and nodes as test_elastic.py (run one at a time:
``flock /tmp/elastic.lock``)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from conftest import needs_root
from hubtest import wait_for

from hubstack.system import netns
from slurm.test_elastic import Elastic, elastic, job_state, submit  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, needs_root]

ALWAYS_WARM = {"warm": [{"schedule": "mon-sun 00:00-24:00", "keep": 1}]}
NEVER_WARM = {"idle_outside_warm": "1s"}


def reconcile(cluster: Elastic, policy: dict[str, object]) -> str:
    """One reconciler round with the group's policy keys set to ``policy``."""
    data = yaml.safe_load(cluster.config.read_text())
    data["cluster"]["node_groups"][0] |= policy
    config = cluster.directory / "policy.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "hubstack.cli", "cluster", "reconcile", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def released(cluster: Elastic, node: str) -> bool:
    return f"hsn-{node}" not in netns.names("hsn-el") and cluster.status()[node] == "powered down"


def test_spares_are_booted_in_warm_hours_and_idle_nodes_released_outside(
    elastic: Elastic,  # noqa: F811
) -> None:
    assert set(elastic.status().values()) == {"powered down"}
    asked = time.monotonic()
    assert (
        reconcile(elastic, ALWAYS_WARM) == "el1: warm hours want 1 spare node(s); powered it up\n"
    )
    wait_for(lambda: elastic.status()["el1"] == "idle", 90, "the spare el1 up")
    print(f"\nspare node: power_up to idle in {time.monotonic() - asked:.1f} s")
    assert reconcile(elastic, ALWAYS_WARM) == "", "one spare is up: nothing more to do"

    # A job takes the spare at once; a busy node is no spare, so el2 boots (and no more:
    # the group has two nodes).
    job, _ = submit(elastic, "sleep 300")
    wait_for(lambda: job_state(elastic, job) == "RUNNING", 30, "the job on the spare")
    assert (
        reconcile(elastic, ALWAYS_WARM) == "el2: warm hours want 1 spare node(s); powered it up\n"
    )
    wait_for(lambda: elastic.status()["el2"] == "idle", 90, "the spare el2 up")

    # Outside warm hours the idle el2 goes after its second; the busy el1 stays.
    done = wait_for(lambda: reconcile(elastic, NEVER_WARM), 15, "el2 past its idle time")
    assert done == "el2: idle past its 1 s outside warm hours; powered it down\n"
    assert elastic.status()["el1"] == "busy"
    assert job_state(elastic, job) == "RUNNING"

    elastic.slurm("scancel", job)
    wait_for(lambda: elastic.status()["el1"] == "idle", 60, "el1 idle after its job")
    done = wait_for(lambda: reconcile(elastic, NEVER_WARM), 15, "el1 past its idle time")
    assert done == "el1: idle past its 1 s outside warm hours; powered it down\n"
    wait_for(lambda: released(elastic, "el1") and released(elastic, "el2"), 60, "both released")
    print(f"boots recorded: {elastic.records()['boots']}")
