"""The autoscaling policy (``cluster.policy``) applied to the real cluster in each
reconciler round: spare nodes powered up (``scontrol update state=power_up``), idle nodes
past their time powered down (``state=power_down``), both through Slurm, which runs the
resume and suspend programs as it does for its own decisions.

Slurm keeps its partition's ``SuspendTime`` (the group's ``idle``) as the backstop while
the hub is down; in warm hours a spare that Slurm releases after ``idle`` is powered up
again in the next round.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from hubstack.cluster.budget import refusal
from hubstack.cluster.findings import Finding
from hubstack.cluster.nodes import Programs, SlurmNode
from hubstack.cluster.policy import WEEK_S, NodeView, learn, plan
from hubstack.cluster.records import NodeRecord, Records
from hubstack.config import Config
from hubstack.config.cluster import NodeGroup

_OUT = {"DOWN", "DRAIN", "FAIL", "POWERING_DOWN", "POWER_DOWN", "NOT_RESPONDING", "REBOOT"}
_BUSY = {"ALLOCATED", "MIXED", "COMPLETING"}


def view(name: str, node: SlurmNode | None, record: NodeRecord | None) -> NodeView:
    """Slurm's state of a node as the policy sees it; idle since its last job or, for a
    spare that never ran one, since it came up."""
    flags = node.flags if node is not None else {"UNKNOWN"}
    if flags & _OUT or node is None:
        return NodeView(name, "out")
    if flags & {"POWERING_UP", "POWER_UP"}:
        return NodeView(name, "booting")
    if "POWERED_DOWN" in flags:
        return NodeView(name, "down")
    if flags & _BUSY:
        return NodeView(name, "busy")
    if "IDLE" in flags:
        up = record.since if record is not None and record.state == "up" else None
        moments = [m for m in (node.last_busy, up) if m is not None]
        return NodeView(name, "idle", max(moments) if moments else None)
    return NodeView(name, "out")


def zone(config: Config) -> tzinfo | None:
    """The zone of warm schedules: ``cluster.timezone``, else the host's (None)."""
    return ZoneInfo(config.cluster.timezone) if config.cluster.timezone else None


def _starts(config: Config, groups: list[NodeGroup], now: datetime) -> dict[str, list[datetime]]:
    """Server starts per partition over the longest history a learned entry looks at."""
    weeks = max((w.weeks for g in groups for w in g.warm if w.learned), default=0)
    if not weeks:
        return {}
    from hubstack.usage.ledger import Ledger, ledger_url

    ledger = Ledger(ledger_url(config))
    try:
        found = ledger.starts(now - timedelta(seconds=weeks * WEEK_S))
    finally:
        ledger.engine.dispose()
    by_partition: dict[str, list[datetime]] = defaultdict(list)
    for started, fields in found:
        if fields.get("partition"):
            by_partition[fields["partition"]].append(started)
    return by_partition


def autoscale(
    programs: Programs, slurm: dict[str, SlurmNode], records: Records, now: datetime | None = None
) -> list[Finding]:
    """One round of the policy for every group that has one (warm entries, or a shorter
    idle time outside them)."""
    groups = [g for g in programs.cluster.node_groups if g.warm or g.idle_outside_warm is not None]
    if not groups:
        return []
    now = (now or datetime.now(UTC)).astimezone(zone(programs.config))
    starts = _starts(programs.config, groups, now)
    interval = programs.config.alerts.check_interval
    findings: list[Finding] = []
    for group in groups:
        views = [view(n, slurm.get(n), records.nodes.get(n)) for n in group.nodes()]
        # Booted a boot and a round ahead: the spares are up when the warm hours begin.
        lead = (records.typical_boot(group.name) or 0.0) + interval
        decided = plan(group, views, learn(group, starts.get(group.partition, []), now), now, lead)
        spent = refusal(group, programs.usage, records) if decided.power_up else None
        for node in decided.power_up if spent is None else ():
            programs.slurm.power_up(node)
            findings.append(
                Finding(node, f"warm hours want {decided.keep} spare node(s)", "powered it up")
            )
        hours = "in warm hours" if decided.keep else "outside warm hours"
        for node in decided.due(now.timestamp()):
            programs.slurm.release(node)
            findings.append(
                Finding(
                    node,
                    f"idle past its {decided.idle_limit:.0f} s {hours}",
                    "powered it down",
                )
            )
    return findings
