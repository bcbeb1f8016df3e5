"""An elastic Slurm cluster: node groups whose nodes exist only while someone needs them.

Slurm's own power saving does the scheduling (nodes declared ``State=CLOUD``; it calls a
resume program when it allocates one that is powered down, a suspend program when one has
been idle long enough). These keys say which nodes there may be and who provides them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from hubstack.config.base import AbsolutePath, Strict, problem
from hubstack.units import Duration, Size

# Slurm node and partition names: letters, digits, dashes; a group's nodes are its name
# followed by a number (cpu1, cpu2, ...), the form Slurm's hostlists compress.
GroupName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
PartitionName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]


class LocalProvider(Strict):
    """Nodes as network namespaces on this machine, each with its own address on a bridge
    and its own slurmd: a real multi-node cluster on one host (tests, demos, small sites)."""

    bridge: str = Field("hsc0", pattern=r"^[a-z][a-z0-9]{0,11}$", description="bridge device")
    subnet: str = Field("10.213.0.0/24", description="the nodes' addresses; .1 is the host's")

    @model_validator(mode="after")
    def _a_private_subnet(self) -> Self:
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise problem(("subnet",), f"is not an IPv4 network ({exc})", self.subnet) from None
        if not net.is_private or net.num_addresses < 4:
            raise problem(
                ("subnet",), "must be a private IPv4 network with room for nodes", self.subnet
            )
        return self

    def capacity(self) -> int:
        """How many nodes the subnet holds (less network, broadcast and the host)."""
        return ipaddress.IPv4Network(self.subnet).num_addresses - 3


class NodeGroup(Strict):
    """Nodes of one size serving one partition, up to ``max_nodes`` at a time."""

    name: GroupName
    max_nodes: int = Field(ge=1, le=10_000)
    cpus: int = Field(ge=1, le=4096)
    memory: Size
    gpus: int = Field(0, ge=0, le=64)
    partition: PartitionName
    provider: Literal["local"] = Field("local", description="who makes the nodes")
    idle: Duration = Field(600, ge=30, description="idle time before a node is released")

    def nodes(self) -> list[str]:
        return [f"{self.name}{i}" for i in range(1, self.max_nodes + 1)]

    def hostlist(self) -> str:
        """The group's nodes as one Slurm hostlist expression."""
        return f"{self.name}[1-{self.max_nodes}]" if self.max_nodes > 1 else f"{self.name}1"


class ClusterSettings(Strict):
    node_groups: list[NodeGroup] = Field(default_factory=list)
    local: LocalProvider = Field(default_factory=LocalProvider)
    slurm_conf: AbsolutePath = Field(
        Path("/etc/slurm/slurm.conf"),
        description="the site's slurm.conf; `hubstack cluster apply` writes an include beside it",
    )
    resume_timeout: Duration = Field(300, ge=30, description="boot time before a node is failed")
    retry_failed_after: Duration = Field(
        600, ge=0, description="how long a node that failed to boot stays out of service"
    )

    state_dir: AbsolutePath | None = Field(
        None, description="records of nodes and boots; null: hub.data_dir/cluster"
    )

    @model_validator(mode="after")
    def _nodes_fit(self) -> Self:
        owner: dict[str, str] = {}
        for index, group in enumerate(self.node_groups):
            if group.name in {g.name for g in self.node_groups[:index]}:
                raise problem(("node_groups", index, "name"), "is used twice", group.name)
            for node in group.nodes():
                if node in owner:
                    raise problem(
                        ("node_groups", index, "name"),
                        f"gives node {node}, which group {owner[node]!r} also has; "
                        "choose names that are not a prefix of another followed by digits",
                        group.name,
                    )
                owner[node] = group.name
        local = sum(g.max_nodes for g in self.node_groups if g.provider == "local")
        if local > self.local.capacity():
            raise problem(
                ("local", "subnet"),
                f"has room for {self.local.capacity()} nodes, but the local node groups "
                f"may have {local}",
                self.local.subnet,
            )
        return self
