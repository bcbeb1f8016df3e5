"""The budget cap of a node group: no new node once the group's node time this period has
used up its budget (``node_groups[].budget``, in the usage budgets' period and currency).

What a group spends is its machines' lifetimes from the node records (a cloud bills a
machine from its request to its deletion, whoever uses it), at ``price`` per node-hour and
``cpus`` core-hours per node-hour. Pure: records and time in, a reason or None out, so the
resume program and the reconciler decide alike, and it is table-tested.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hubstack.cluster.records import Records
from hubstack.config.cluster import NodeGroup
from hubstack.config.usage import UsageSettings
from hubstack.usage.budgets import Level, Scope, Standing, period_of
from hubstack.usage.pricing import Charge


def node_hours(records: Records, group: str, since: float, until: float) -> float:
    """Hours the group's machines existed within ``[since, until]`` (running ones so far)."""
    running = [
        [record.started or record.since, until]
        for record in records.nodes.values()
        if record.group == group and record.state in ("booting", "up")
    ]
    seconds = sum(
        max(min(end, until) - max(start, since), 0.0)
        for start, end in [*records.spans.get(group, []), *running]
    )
    return seconds / 3600


def standing(
    group: NodeGroup, usage: UsageSettings, records: Records, now: datetime
) -> Standing | None:
    """The group's budget this period and what its machines have spent of it; None
    without a budget."""
    if group.budget is None:
        return None
    start, end = period_of(usage, now)
    hours = node_hours(records, group.name, start.timestamp(), now.timestamp())
    spent = Charge(money=hours * group.price, core_hours=hours * group.cpus)
    return Standing(Scope("node group", group.name), group.budget, spent, end)


def refusal(
    group: NodeGroup, usage: UsageSettings, records: Records, now: datetime | None = None
) -> str | None:
    """Why no node of ``group`` may start now (its budget is spent), else None."""
    found = standing(group, usage, records, now or datetime.now(UTC))
    if found is None or found.level(usage.warn_at) is not Level.SPENT:
        return None
    return (
        f"budget spent for node group {group.name}: {found.amounts(usage.currency)}; "
        f"it resets {found.resets:%Y-%m-%d %H:%M} UTC"
    )


def forget_past(records: Records, usage: UsageSettings, now: datetime | None = None) -> None:
    """Drop machine lifetimes that ended before the current period: no budget counts them."""
    start = period_of(usage, now or datetime.now(UTC))[0].timestamp()
    for group in list(records.spans):
        records.forget_spans(group, start)
