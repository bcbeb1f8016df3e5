"""Who makes a node: the small interface every provider implements, and the providers.

A provider creates a machine for a Slurm node name, deletes it, and lists the machines it
has, so the reconciler can compare its view with Slurm's. ``create`` reports the machine's
address through ``announce`` before the node's slurmd starts, because Slurm 22.05 must be
told a cloud node's address (``scontrol update nodeaddr=``) before it can talk to it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hubstack.config.cluster import ClusterSettings, NodeGroup
from hubstack.system import netns, run, tool

NAMESPACE_PREFIX = "hsn-"
_FRESH_CLOCK_MARGIN_S = 2.0
Announce = Callable[[str], None]


class Provider(Protocol):
    def create(self, node: str, group: NodeGroup, announce: Announce) -> str:
        """Make the machine for ``node`` and start its slurmd; its address."""
        ...

    def delete(self, node: str) -> None:
        """Remove the machine for ``node``; nothing if there is none."""
        ...

    def machines(self) -> dict[str, str]:
        """The machines this provider has: node name -> address."""
        ...


class LocalProvider:
    """Network namespaces on this host, one slurmd each (with the host's slurm.conf and
    munge: the same files, as a cloud image would have them baked in)."""

    def __init__(self, cluster: ClusterSettings) -> None:
        self.cluster = cluster
        net = ipaddress.IPv4Network(cluster.local.subnet)
        local = [g for g in cluster.node_groups if g.provider == "local"]
        nodes = [node for group in local for node in group.nodes()]
        # Fixed addresses (.2, .3, ... in config order): a node keeps its address across
        # boots, and the hub's records and Slurm's agree after any restart.
        self.addresses = {node: str(net.network_address + 2 + i) for i, node in enumerate(nodes)}
        self.prefixlen = net.prefixlen

    def create(self, node: str, group: NodeGroup, announce: Announce) -> str:
        address = self.addresses[node]
        netns.ensure_bridge(self.cluster.local.bridge, self.cluster.local.subnet)
        name = NAMESPACE_PREFIX + node
        netns.create(name, self.cluster.local.bridge, f"{address}/{self.prefixlen}")
        announce(address)
        # A machine's image has its slurmd's spool directory; this one shares the host's
        # disk, so each node's is made here (slurmd does not, and does not register without).
        _slurmd_spool(self.cluster.slurm_conf, node).mkdir(mode=0o755, parents=True, exist_ok=True)
        # slurmctld takes a powering-up node as booted only if its boot (now - uptime, the
        # uptime rounded up to whole seconds) is not before the power-up request: a clock
        # started less than that after the request would read as older, and be ignored.
        time.sleep(_FRESH_CLOCK_MARGIN_S)
        run([*netns.enter(name), tool("slurmd"), "-N", node, "-f", str(self.cluster.slurm_conf)])
        return address

    def delete(self, node: str) -> None:
        netns.delete(NAMESPACE_PREFIX + node)

    def machines(self) -> dict[str, str]:
        found = (n.removeprefix(NAMESPACE_PREFIX) for n in netns.names(NAMESPACE_PREFIX))
        return {node: self.addresses.get(node, "?") for node in found}


def _slurmd_spool(slurm_conf: Path, node: str) -> Path:
    """The node's SlurmdSpoolDir from slurm.conf (%n is the node's name; Slurm's default
    otherwise). Nodes on one host need %n in it, as Slurm's multiple-slurmd setups do."""
    spool = "/var/spool/slurmd"
    for line in slurm_conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "slurmdspooldir":
            spool = value.split("#")[0].strip()
    return Path(spool.replace("%n", node).replace("%h", node))


def provider_for(cluster: ClusterSettings, group: NodeGroup) -> Provider:
    """The provider of ``group``'s nodes."""
    if group.provider == "libcloud":
        from hubstack.cluster.cloud import LibcloudProvider

        return LibcloudProvider(cluster, group)
    return LocalProvider(cluster)
