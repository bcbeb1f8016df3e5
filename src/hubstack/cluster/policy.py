"""The autoscaling policy: how many spare nodes a group keeps up now, and when each idle
node may go.

Slurm's power saving alone knows one idle time per partition: long, and every node is paid
for that long after each use; short, and the class that starts at 9:00 waits for twenty
boots. Warm hours (schedules, or the hours of the week in which the group's partition
usually starts servers) keep spare nodes up and the long idle time; outside them idle nodes
go after the short one. Pure: the reconciler applies it to the real cluster each monitor
round, and ``benchmarks/autoscale.py`` steps the same functions through a simulated week.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from hubstack.config.cluster import NodeGroup
from hubstack.config.warm import Warm

WEEK_S = 7 * 24 * 3600
NodeState = Literal["down", "booting", "idle", "busy", "out"]


@dataclass(frozen=True)
class NodeView:
    """What the policy needs of a node: ``down`` (powered down, may be powered up),
    ``booting``, ``idle`` (since ``idle_since``, epoch seconds), ``busy``, or ``out``
    (failed, powering down: neither counted nor touched)."""

    name: str
    state: NodeState
    idle_since: float | None = None


@dataclass(frozen=True)
class Plan:
    """One round's decision for a group."""

    keep: int  # spare (idle or booting) nodes wanted now; 0 outside warm hours
    idle_limit: float  # seconds an idle node beyond the spares stays up
    power_up: tuple[str, ...]
    release_at: dict[str, float]  # each idle node not kept spare -> when it may go

    def due(self, now: float) -> list[str]:
        """The idle nodes whose release time has come."""
        return [node for node, at in self.release_at.items() if at <= now]


def hour_of_week(moment: datetime) -> int:
    """0 for Monday 00:00-00:59 ... 167 for Sunday 23:00-23:59, in ``moment``'s zone."""
    return moment.weekday() * 24 + moment.hour


def learned_hours(
    starts: Iterable[datetime], now: datetime, weeks: int, min_weeks: int
) -> frozenset[int]:
    """The hours of the week in which servers started in at least ``min_weeks`` of the
    last ``weeks`` weeks (rolling weeks back from ``now``, hours in ``now``'s zone): a
    class that meets every Monday at 9 makes Monday 9:00 warm after ``min_weeks`` weeks; a
    one-off start does not."""
    seen: dict[int, set[int]] = defaultdict(set)
    for start in starts:
        age = (now - start).total_seconds()
        if 0 <= age < weeks * WEEK_S:
            seen[hour_of_week(start.astimezone(now.tzinfo))].add(int(age // WEEK_S))
    return frozenset(hour for hour, found in seen.items() if len(found) >= min_weeks)


def learn(
    group: NodeGroup, starts: Sequence[datetime], now: datetime
) -> tuple[frozenset[int], ...]:
    """Per warm entry of ``group``, its learned hours (empty for a schedule); ``starts``
    are the starts of servers on the group's partition."""
    return tuple(
        learned_hours(starts, now, warm.weeks, warm.min_weeks) if warm.learned else frozenset()
        for warm in group.warm
    )


def _warm_at(warm: Warm, learned: frozenset[int], moment: datetime) -> bool:
    if warm.schedule is not None:
        return warm.schedule.covers(moment.weekday(), moment.hour * 60 + moment.minute)
    return hour_of_week(moment) in learned


def warm_keep(
    group: NodeGroup, learned: Sequence[frozenset[int]], now: datetime, lead: float
) -> int:
    """The spare nodes ``group`` keeps now: the largest ``keep`` among its warm entries
    that hold now or ``lead`` seconds from now (so nodes have booted when the hours
    begin); never more than ``max_nodes``."""
    ahead = now + timedelta(seconds=lead)
    keep = 0
    for warm, hours in zip(group.warm, learned, strict=True):
        if _warm_at(warm, hours, now) or _warm_at(warm, hours, ahead):
            keep = max(keep, warm.keep)
    return min(keep, group.max_nodes)


def plan(
    group: NodeGroup,
    nodes: Sequence[NodeView],
    learned: Sequence[frozenset[int]],
    now: datetime,
    lead: float = 0.0,
) -> Plan:
    """This round's decision for ``group`` (``nodes``: all of its nodes): power up
    powered-down nodes until ``keep`` are spare (a busy node is no spare: a class keeps
    finding one as it fills the nodes), keep the most recently idle as the spares, and
    give every other idle node its release time (the idle time in warm hours, the
    shorter ``idle_outside_warm`` outside them). Busy, booting and failed nodes are
    never released."""
    keep = warm_keep(group, learned, now, lead)
    outside = group.idle if group.idle_outside_warm is None else group.idle_outside_warm
    limit = float(group.idle if keep else outside)
    booting = sum(1 for n in nodes if n.state == "booting")
    idle = sorted(
        (n for n in nodes if n.state == "idle"), key=lambda n: n.idle_since or 0.0, reverse=True
    )
    spares = idle[: max(0, keep - booting)]
    missing = max(0, keep - booting - len(idle))
    down = [n.name for n in nodes if n.state == "down"]
    stamp = now.timestamp()
    return Plan(
        keep,
        limit,
        tuple(down[:missing]),
        {
            n.name: (stamp if n.idle_since is None else n.idle_since) + limit
            for n in idle[len(spares) :]
        },
    )
