"""The Slurm lines for the node groups: an include file `hubstack cluster apply` writes.

Pure: config in, text out. The power-saving settings are the ones Slurm 22.05's cloud
guide asks for (``State=CLOUD`` nodes, resume and suspend programs, ``PrivateData=cloud`` so
powered-down nodes are listed, a ``TreeWidth`` no smaller than the node count because
slurmds do not know each other's addresses); the idle time is per partition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hubstack.config.cluster import ClusterSettings, NodeGroup

INCLUDE_NAME = "hubstack-cluster.conf"
HEADER = "# Written by `hubstack cluster apply` from hubstack.yaml; edits here are overwritten.\n"


@dataclass(frozen=True)
class Programs:
    """Where apply put the programs slurmctld runs (absolute paths)."""

    resume: Path
    suspend: Path
    resume_fail: Path


def node_line(group: NodeGroup) -> str:
    memory_mb = group.memory // 2**20
    gres = f" Gres=gpu:{group.gpus}" if group.gpus else ""
    return (
        f"NodeName={group.hostlist()} CPUs={group.cpus} RealMemory={memory_mb}{gres} "
        f"Feature=hubstack,{group.name} State=CLOUD"
    )


def partition_lines(groups: list[NodeGroup]) -> list[str]:
    """One line per partition; groups serving the same partition share it, and it takes
    the shortest idle time among them (Slurm's SuspendTime is per partition)."""
    served: dict[str, list[NodeGroup]] = defaultdict(list)
    for group in groups:
        served[group.partition].append(group)
    return [
        f"PartitionName={name} Nodes={','.join(g.hostlist() for g in members)} "
        f"SuspendTime={min(g.idle for g in members)} State=UP"
        for name, members in served.items()
    ]


def render(cluster: ClusterSettings, programs: Programs) -> str:
    if not cluster.node_groups:
        return HEADER + "# no node groups\n"
    nodes = sum(g.max_nodes for g in cluster.node_groups)
    lines = [
        f"ResumeProgram={programs.resume}",
        f"SuspendProgram={programs.suspend}",
        f"ResumeFailProgram={programs.resume_fail}",
        f"ResumeTimeout={cluster.resume_timeout}",
        "SuspendTimeout=30",
        "ResumeRate=0",
        "SuspendRate=0",
        "PrivateData=cloud",
        f"TreeWidth={max(nodes, 50)}",
        "SlurmctldParameters=idle_on_node_suspend",
        *(node_line(g) for g in cluster.node_groups),
        *partition_lines(cluster.node_groups),
    ]
    return HEADER + "\n".join(lines) + "\n"
