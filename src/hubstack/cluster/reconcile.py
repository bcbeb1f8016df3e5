"""The reconciler: Slurm's view, the provider's and hubstack's records, made to agree.

Slurm's hooks alone leave gaps every elastic cluster has met: a machine that still runs
while Slurm has its node powered down (a suspend that failed half-way, a hub host restarted
mid-boot), a node Slurm thinks is up whose machine is gone, a node failed once and left DOWN
forever. One pass looks at all three views and fixes what it can; what it did is returned,
one finding each, for the log and for admins.
"""

from __future__ import annotations

import time

from hubstack.cluster.autoscale import autoscale
from hubstack.cluster.budget import refusal
from hubstack.cluster.findings import Finding
from hubstack.cluster.nodes import Programs, SlurmNode
from hubstack.cluster.providers import provider_for
from hubstack.cluster.records import Records


def _orphan(node: SlurmNode | None) -> bool:
    """Slurm has the node powered down and is not powering it up: a machine is an orphan."""
    return node is not None and "POWERED_DOWN" in node.flags and "POWERING_UP" not in node.flags


def _lost(node: SlurmNode | None) -> bool:
    """Slurm counts on the node (up, not booting, not down) but it has no machine."""
    if node is None:
        return False
    return not node.flags & {"POWERED_DOWN", "POWERING_UP", "POWERING_DOWN", "DOWN"}


def _out_and_powered_down(node: SlurmNode | None) -> bool:
    """Out of service and powered down by Slurm (at its ResumeTimeout): safe to return."""
    return (
        node is not None
        and {"DOWN", "POWERED_DOWN"} <= node.flags
        and not node.flags & {"POWERING_UP", "POWERING_DOWN"}
    )


def _cooled_down(node: SlurmNode | None, records: Records, name: str, after: float) -> bool:
    """A node hubstack failed (its record says so: Slurm replaces the reason with its own
    at the ResumeTimeout), long enough ago to retry, and which Slurm has powered down."""
    record = records.nodes.get(name)
    return (
        _out_and_powered_down(node)
        and record is not None
        and record.state == "failed"
        and time.time() - record.since >= after
    )


def _budget_allows(node: SlurmNode | None, records: Records, name: str, programs: Programs) -> bool:
    """A node refused for its group's spent budget, which the budget now allows (a new
    period, or a raised budget)."""
    record = records.nodes.get(name)
    if not _out_and_powered_down(node) or record is None or record.state != "refused":
        return False
    return refusal(programs.groups[name], programs.usage, records) is None


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
                changing.machine_released(name, group.name)
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
        elif _budget_allows(node, records, name, programs):
            programs.slurm.power_down(name)
            with programs.records.change() as changing:
                changing.released(name, group.name)
            findings.append(
                Finding(name, "refused for a spent budget", "returned it to service, powered down")
            )
    return findings + autoscale(programs, slurm, records)
