"""An elastic Slurm cluster: node groups whose nodes exist only while someone needs them.

Slurm's own power saving does the scheduling (nodes declared ``State=CLOUD``; it calls a
resume program when it allocates one that is powered down, a suspend program when one has
been idle long enough). These keys say which nodes there may be and who provides them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from hubstack.config.base import AbsolutePath, Strict, problem
from hubstack.config.secrets import SecretSource
from hubstack.config.usage import Budget, Price
from hubstack.config.warm import Warm
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


Scalar = str | int | float | bool


class LibcloudNodes(Strict):
    """Cloud VMs through Apache libcloud, one driver interface for AWS, Azure, GCP,
    OpenStack and the rest: hubstack asks the driver to create, delete and list machines
    and does not speak any cloud's API itself."""

    driver: str = Field(description="a libcloud compute provider: ec2, azure_arm, gce, ...")
    credentials: dict[str, SecretSource] = Field(
        default_factory=dict,
        description="the driver's secret arguments (e.g. key, secret), each from a file or env",
    )
    driver_args: dict[str, Scalar] = Field(
        default_factory=dict, description="the driver's other arguments, e.g. region"
    )
    size: str = Field(description="the machine size, by id or name (e.g. m7i.large)")
    image: str = Field(description="the machine image, by id, with slurmd and munge")
    location: str | None = Field(None, description="a location by id or name; null: driver's")
    extra: dict[str, Scalar | list[Scalar] | dict[str, Scalar]] = Field(
        default_factory=dict, description="more create_node arguments (ex_keyname, ...)"
    )
    user_data_arg: str | None = Field(
        "ex_userdata",
        pattern=r"^[a-z_]+$",
        description="the create_node argument for the boot script (ex_customdata on Azure)",
    )
    name_prefix: str = Field(
        "hubstack-",
        pattern=r"^[a-z][a-z0-9-]{0,30}$",
        description="machines are named prefix + node; others are never touched",
    )
    quota: int | None = Field(
        None, ge=1, description="how many machines the cloud account may run (its quota)"
    )
    munge_key: AbsolutePath = Field(
        Path("/etc/munge/munge.key"), description="given to each machine in its boot script"
    )

    @model_validator(mode="after")
    def _a_libcloud_driver(self) -> Self:
        # Imported here: only a config with libcloud groups pays for libcloud's import.
        from libcloud.compute.providers import DRIVERS

        if self.driver not in DRIVERS:
            raise problem(
                ("driver",),
                f"is not a libcloud compute driver; use one of {', '.join(sorted(DRIVERS))}",
                self.driver,
            )
        return self


class NodeGroup(Strict):
    """Nodes of one size serving one partition, up to ``max_nodes`` at a time."""

    name: GroupName
    max_nodes: int = Field(ge=1, le=10_000)
    cpus: int = Field(ge=1, le=4096)
    memory: Size
    gpus: int = Field(0, ge=0, le=64)
    partition: PartitionName
    provider: Literal["local", "libcloud"] = Field("local", description="who makes the nodes")
    libcloud: LibcloudNodes | None = Field(None, description="the libcloud provider's settings")
    idle: Duration = Field(600, ge=30, description="idle time before a node is released")
    warm: list[Warm] = Field(
        default_factory=list, description="when to keep spare nodes up (schedules, learned)"
    )
    idle_outside_warm: Duration | None = Field(
        None, ge=1, description="idle time before release outside warm hours; null: idle"
    )
    price: Price = Field(0, description="money per node-hour, for the group's money budget")
    budget: Budget | None = Field(
        None, description="node time per usage period (money, core-hours); spent: no new node"
    )

    @model_validator(mode="after")
    def _settings_of_its_provider(self) -> Self:
        if (self.provider == "libcloud") != (self.libcloud is not None):
            raise problem(
                ("libcloud",), "is required with provider libcloud and only then", self.provider
            )
        if self.budget is not None and self.budget.money is not None and not self.price:
            raise problem(("price",), "must be set for a money budget", self.price)
        return self

    @model_validator(mode="after")
    def _warm_fits(self) -> Self:
        for index, warm in enumerate(self.warm):
            if warm.keep > self.max_nodes:
                raise problem(
                    ("warm", index, "keep"),
                    f"must be at most the group's max_nodes ({self.max_nodes})",
                    warm.keep,
                )
        if self.idle_outside_warm is not None and self.idle_outside_warm > self.idle:
            raise problem(
                ("idle_outside_warm",),
                f"must be at most idle ({self.idle} s): Slurm releases idle nodes after idle",
                self.idle_outside_warm,
            )
        return self

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
    timezone: str | None = Field(
        None, description="the zone of warm schedules (e.g. Europe/Paris); null: the host's"
    )

    @field_validator("timezone")
    @classmethod
    def _a_known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{value!r} is not a time zone name, e.g. Europe/Paris") from None
        return value

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
        self._within_quotas()
        return self

    def _within_quotas(self) -> None:
        """Groups on one cloud account (driver and arguments) together fit its quota."""
        accounts: dict[str, int] = {}
        for index, group in enumerate(self.node_groups):
            cloud = group.libcloud
            if cloud is None:
                continue
            account = f"{cloud.driver} {sorted(cloud.driver_args.items())}"
            accounts[account] = accounts.get(account, 0) + group.max_nodes
            if cloud.quota is not None and accounts[account] > cloud.quota:
                raise problem(
                    ("node_groups", index, "max_nodes"),
                    f"makes {accounts[account]} {cloud.driver} machines at most, more than "
                    f"its libcloud.quota of {cloud.quota}",
                    group.max_nodes,
                )
