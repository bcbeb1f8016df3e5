"""The elastic cluster's pure parts: node-group config, the Slurm lines, node status words."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hubstack.cluster.apply import describe
from hubstack.cluster.nodes import SlurmNode, _pairs
from hubstack.cluster.records import NodeRecord, Records
from hubstack.cluster.slurmconf import Programs, render
from hubstack.config.cluster import ClusterSettings

PROGRAMS = Programs(Path("/etc/slurm/hubstack/resume"), Path("/s"), Path("/f"))


def group(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "max_nodes": 4, "cpus": 2, "memory": "4G", "partition": "cloud"} | extra


@pytest.mark.parametrize(
    ("groups", "local", "words"),
    [
        ([group("cpu", max_nodes=12), group("cpu1")], {}, "gives node cpu11, which group 'cpu'"),
        ([group("cpu"), group("cpu")], {}, "is used twice"),
        ([group("cpu", max_nodes=300)], {}, "has room for 253 nodes"),
        ([group("cpu", max_nodes=8)], {"subnet": "10.0.0.0/29"}, "has room for 5 nodes"),
        ([group("cpu")], {"subnet": "8.8.8.0/24"}, "must be a private IPv4 network"),
        ([group("cpu", provider="aws")], {}, "Input should be 'local'"),
        ([group("Cpu")], {}, "String should match pattern"),
    ],
)
def test_bad_node_groups_are_refused_with_the_reason(
    groups: list[dict[str, object]], local: dict[str, str], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        ClusterSettings.model_validate({"node_groups": groups, "local": local})


def test_the_slurm_lines_declare_cloud_nodes_and_per_partition_idle_times() -> None:
    cluster = ClusterSettings.model_validate(
        {
            "node_groups": [
                group("cpu", idle="10m"),
                group("big", max_nodes=1, cpus=8, memory="32G", idle="5m"),
                group("gpu", gpus=2, partition="gpu"),
            ]
        }
    )
    text = render(cluster, PROGRAMS)
    lines = text.splitlines()
    assert "ResumeProgram=/etc/slurm/hubstack/resume" in lines
    assert "NodeName=cpu[1-4] CPUs=2 RealMemory=4096 Feature=hubstack,cpu State=CLOUD" in lines
    assert "NodeName=big1 CPUs=8 RealMemory=32768 Feature=hubstack,big State=CLOUD" in lines
    assert (
        "NodeName=gpu[1-4] CPUs=2 RealMemory=4096 Gres=gpu:2 Feature=hubstack,gpu State=CLOUD"
        in lines
    )
    assert "PartitionName=cloud Nodes=cpu[1-4],big1 SuspendTime=300 State=UP" in lines
    assert "PartitionName=gpu Nodes=gpu[1-4] SuspendTime=600 State=UP" in lines
    # Power saving only where hubstack's partitions ask for it: the site's nodes stay up.
    assert not any(line.startswith("SuspendTime=") for line in lines)


@pytest.mark.parametrize(
    ("state", "record", "expected"),
    [
        ("IDLE+CLOUD+POWERED_DOWN", None, "powered down"),
        (
            "ALLOCATED+CLOUD+NOT_RESPONDING+POWERING_UP",
            NodeRecord("g", "booting", 958.0),
            "booting for 42 s",
        ),
        ("IDLE+CLOUD", NodeRecord("g", "up", 0), "idle"),
        ("MIXED+CLOUD", None, "busy"),
        (
            "DOWN+CLOUD+POWERED_DOWN",
            NodeRecord("g", "failed", 0, reason="no slurmd"),
            "failed (no slurmd)",
        ),
        ("DOWN+CLOUD", None, "down (site reason)"),
    ],
)
def test_node_status_words(state: str, record: NodeRecord | None, expected: str) -> None:
    node = SlurmNode("g1", state, "10.0.0.2", "site reason")
    assert describe("g1", "g", node, record, now=1000.0) == expected


def test_scontrol_lines_keep_reasons_with_spaces() -> None:
    line = (
        "NodeName=el1 Arch=x86_64 State=DOWN+CLOUD NodeAddr=10.0.0.2 "
        "Reason=hubstack: no link [root@2026]"
    )
    fields = dict(_pairs(line))
    assert fields["State"] == "DOWN+CLOUD"
    assert fields["Reason"] == "hubstack: no link [root@2026]"


def test_boot_times_give_the_typical_wait() -> None:
    records = Records()
    assert records.typical_boot("g") is None
    for node in ("g1", "g2", "g3"):
        records.booting(node, "g")
        records.nodes[node].since -= {"g1": 40, "g2": 60, "g3": 50}[node]
        records.up(node, None)
    assert records.typical_boot("g") == pytest.approx(50, abs=1)


def test_a_released_machine_leaves_a_failed_nodes_record() -> None:
    """Slurm suspends a failed boot's node (and the reconciler may find its machine) while
    the failure is being recorded: the record keeps why the node is out of service."""
    records = Records()
    records.booting("g1", "g")
    records.failed("g1", "g", "its slurmd did not register within 30 s")
    records.machine_released("g1", "g")
    assert records.nodes["g1"].state == "failed"
    records.booting("g2", "g")
    records.machine_released("g2", "g")
    assert records.nodes["g2"].state == "released"
