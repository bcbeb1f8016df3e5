"""The reconciler: Slurm's view, the provider's and hubstack's records, made to agree.

Slurm's hooks alone leave gaps every elastic cluster has met: a machine that still runs
while Slurm has its node powered down (a suspend that failed half-way, a hub host restarted
mid-boot), a node Slurm thinks is up whose machine is gone, a node failed once and left DOWN
forever. One pass looks at all three views and fixes what it can; what it did is returned,
one finding each, for the log and for admins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hubstack.cluster.nodes import Programs, SlurmNode
from hubstack.cluster.providers import provider_for
from hubstack.cluster.records import Records


@dataclass(frozen=True)
class Finding:
    node: str
    found: str
    done: str


def _orphan(node: SlurmNode | None) -> bool:
    """Slurm has the node powered down and is not powering it up: a machine is an orphan."""
    return node is not None and "POWERED_DOWN" in node.flags and "POWERING_UP" not in node.flags


def _lost(node: SlurmNode | None) -> bool:
    """Slurm counts on the node (up, not booting, not down) but it has no machine."""
    if node is None:
        return False
    return not node.flags & {"POWERED_DOWN", "POWERING_UP", "POWERING_DOWN", "DOWN"}


def _cooled_down(node: SlurmNode | None, records: Records, name: str, after: float) -> bool:
    """A node hubstack failed (its record says so: Slurm replaces the reason with its own
    at the ResumeTimeout), long enough ago to retry, and which Slurm has powered down."""
    record = records.nodes.get(name)
    return (
        node is not None
        and {"DOWN", "POWERED_DOWN"} <= node.flags
        and not node.flags & {"POWERING_UP", "POWERING_DOWN"}
        and record is not None
        and record.state == "failed"
        and time.time() - record.since >= after
    )


def reconcile(programs: Programs) -> list[Finding]:
    cluster = programs.cluster
    slurm = programs.slurm.nodes(list(programs.groups))
    records = programs.records.read()
    machines: dict[str, str] = {}
    for group in cluster.node_groups:
        machines |= provider_for(cluster, group).machines()
    findings: list[Finding] = []
    for name, group in programs.groups.items():
        node = slurm.get(name)
        if name in machines and _orphan(node):
            provider_for(cluster, group).delete(name)
            with programs.records.change() as changing:
                changing.released(name, group.name)
            findings.append(
                Finding(name, "a machine runs while Slurm has the node powered down", "released it")
            )
        elif name not in machines and _lost(node):
            reason = "its machine is gone"
            programs.slurm.set_down(name, f"hubstack: {reason}")
            with programs.records.change() as changing:
                changing.failed(name, group.name, reason)
            findings.append(
                Finding(name, "Slurm counts on it but it has no machine", "took it out of service")
            )
        elif _cooled_down(node, records, name, cluster.retry_failed_after):
            programs.slurm.power_down(name)
            with programs.records.change() as changing:
                changing.released(name, group.name)
            findings.append(Finding(name, "failed earlier", "returned it to service, powered down"))
    return findings
