"""The autoscaling policy: warm-hour keys, learned hours, and each round's decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubstack.cluster.autoscale import _starts, view
from hubstack.cluster.nodes import SlurmNode
from hubstack.cluster.policy import NodeView, learn, learned_hours, plan, warm_keep
from hubstack.cluster.records import NodeRecord
from hubstack.config.cluster import NodeGroup
from hubstack.config.load import ConfigError, validate
from hubstack.usage.ledger import Ledger, Opened, ledger_url
from hubstack.usage.pricing import Rate

# Monday 7 December 2026, 09:00 UTC.
MONDAY_9 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def base_group(**extra: object) -> dict[str, object]:
    return {"name": "cpu", "max_nodes": 3, "cpus": 2, "memory": "4G", "partition": "cloud"} | extra


def group(**extra: object) -> NodeGroup:
    return NodeGroup.model_validate(base_group(**extra))


def config_error(**extra: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate({"cluster": {"node_groups": [base_group(**extra)]}}, "test.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (
            {"warm": [{"schedule": "mon-fry 08:45-12:00"}]},
            "warm[0].schedule",
            "'mon-fry' is not a day",
        ),
        ({"warm": [{"schedule": "fri-mon 08:00-09:00"}]}, "warm[0].schedule", "runs backwards"),
        ({"warm": [{"schedule": "mon 8-12"}]}, "warm[0].schedule", "not a span of hours"),
        ({"warm": [{"schedule": "mon 08:61-09:00"}]}, "warm[0].schedule", "not a time of day"),
        ({"warm": [{"schedule": "mon 25:00-26:00"}]}, "warm[0].schedule", "not a time of day"),
        ({"warm": [{"schedule": "mon 22:00-02:00"}]}, "warm[0].schedule", "two entries"),
        ({"warm": [{"schedule": "weekdays"}]}, "warm[0].schedule", "not a schedule"),
        ({"warm": [{"keep": 1}]}, "warm[0].schedule", "either a schedule or learned"),
        (
            {"warm": [{"schedule": "mon 08:00-09:00", "learned": True}]},
            "warm[0].schedule",
            "either a schedule or learned",
        ),
        (
            {"warm": [{"schedule": "mon 08:00-09:00", "keep": 4}]},
            "warm[0].keep",
            "at most the group's max_nodes (3) (got 4)",
        ),
        ({"warm": [{"learned": True, "min_weeks": 5}]}, "warm[0].min_weeks", "at most weeks (4)"),
        ({"idle": "5m", "idle_outside_warm": "10m"}, "idle_outside_warm", "at most idle (300 s)"),
    ],
)
def test_bad_warm_keys_are_refused_naming_the_key(extra: dict, key: str, words: str) -> None:
    text = config_error(**extra)
    assert f"cluster.node_groups[0].{key}" in text, text
    assert words in text, text


def test_a_zone_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cluster.timezone: 'Mars/Olympus' is not a time zone"):
        validate({"cluster": {"timezone": "Mars/Olympus"}}, "test.yaml")


def test_schedules_read_back_as_written() -> None:
    g = group(
        warm=[{"schedule": "Mon-Fri 08:45-12:00", "keep": 2}, {"schedule": "sat,sun 0:00-24:00"}]
    )
    assert [str(w.schedule) for w in g.warm] == [
        "mon,tue,wed,thu,fri 08:45-12:00",
        "sat,sun 00:00-24:00",
    ]
    assert g.model_dump(mode="json")["warm"][0]["schedule"] == "mon,tue,wed,thu,fri 08:45-12:00"


def weekly(hour: datetime, weeks: list[int]) -> list[datetime]:
    return [hour - timedelta(weeks=w) + timedelta(minutes=5) for w in weeks]


@pytest.mark.parametrize(
    ("starts", "expected"),
    [
        # Monday 9:00 on 3 of the last 4 weeks, Tuesday 14:00 once: only Monday 9 is warm.
        (weekly(MONDAY_9, [1, 2, 3]) + weekly(MONDAY_9 + timedelta(days=1, hours=5), [1]), {9}),
        # Two starts in one week are one week.
        (weekly(MONDAY_9, [1, 1]), set()),
        # Older than the weeks looked at.
        (weekly(MONDAY_9, [4, 5, 6]), set()),
        # Starts after now (a clock step) are ignored.
        (weekly(MONDAY_9, [-1, 1]), set()),
        # Friday 16:00 two weeks running: hour 4 * 24 + 16.
        (weekly(MONDAY_9 - timedelta(days=3) + timedelta(hours=7), [0, 1]), {112}),
    ],
)
def test_hours_are_learned_from_starts_in_enough_weeks(
    starts: list[datetime], expected: set[int]
) -> None:
    assert learned_hours(starts, MONDAY_9, weeks=4, min_weeks=2) == expected


def test_hours_are_learned_in_the_zone_of_now() -> None:
    from zoneinfo import ZoneInfo

    paris = MONDAY_9.astimezone(ZoneInfo("Europe/Paris"))  # 10:00 there
    assert learned_hours(weekly(MONDAY_9, [1, 2]), paris, 4, 2) == {10}


SCHOOL = [{"schedule": "mon-fri 08:45-12:00", "keep": 2}, {"learned": True, "keep": 1}]


@pytest.mark.parametrize(
    ("now", "lead", "learned", "keep"),
    [
        (MONDAY_9, 0, set(), 2),
        (MONDAY_9.replace(hour=12), 0, set(), 0),  # the end is excluded
        (MONDAY_9.replace(hour=8, minute=40), 0, set(), 0),
        (MONDAY_9.replace(hour=8, minute=40), 360, set(), 2),  # booted ahead of 08:45
        (MONDAY_9.replace(hour=14), 0, {14}, 1),  # learned Monday 14:00
        (MONDAY_9.replace(hour=13, minute=59), 120, {14}, 1),
        (MONDAY_9 + timedelta(days=5), 0, set(), 0),  # Saturday
    ],
)
def test_warm_hours_keep_spares(now: datetime, lead: float, learned: set[int], keep: int) -> None:
    assert warm_keep(group(warm=SCHOOL), (frozenset(), frozenset(learned)), now, lead) == keep


def test_keep_never_exceeds_max_nodes() -> None:
    g = group(warm=[{"schedule": "mon 00:00-24:00", "keep": 3}])
    g.max_nodes = 2  # e.g. lowered after validation: still capped
    assert warm_keep(g, (frozenset(),), MONDAY_9, 0) == 2


T = MONDAY_9.timestamp()
WARM = [{"schedule": "mon 08:00-12:00", "keep": 2}]


def nodes(*states: str, idle_since: float = T - 100) -> list[NodeView]:
    return [
        NodeView(f"cpu{i}", s, idle_since if s == "idle" else None)  # type: ignore[arg-type]
        for i, s in enumerate(states, 1)
    ]


@pytest.mark.parametrize(
    ("warm", "states", "now", "power_up", "release_at"),
    [
        # Warm, nothing up: two spares booted, never beyond what is powered down.
        (WARM, ("down", "down", "down"), MONDAY_9, ("cpu1", "cpu2"), {}),
        # A busy node is no spare; a booting one is.
        (WARM, ("busy", "booting", "down"), MONDAY_9, ("cpu3",), {}),
        # All busy or failed: nothing to power up (max_nodes reached).
        (WARM, ("busy", "busy", "out"), MONDAY_9, (), {}),
        # Three idle: two kept as spares, the third goes after the (warm) idle time.
        (WARM, ("idle", "idle", "idle"), MONDAY_9, (), {"cpu3": T - 100 + 600}),
        # Outside warm hours: idle nodes go after idle_outside_warm; busy ones never.
        (
            WARM,
            ("idle", "busy", "booting"),
            MONDAY_9 + timedelta(hours=4),
            (),
            {"cpu1": T - 100 + 60},
        ),
        # No warm entries: only the short idle time.
        ([], ("idle", "down", "out"), MONDAY_9, (), {"cpu1": T - 100 + 60}),
    ],
)
def test_each_round_powers_up_spares_and_times_releases(
    warm: list, states: tuple[str, ...], now: datetime, power_up: tuple, release_at: dict
) -> None:
    g = group(warm=warm, idle="10m", idle_outside_warm="1m")
    decided = plan(g, nodes(*states), (frozenset(),) * len(warm), now)
    assert decided.power_up == power_up
    assert decided.release_at == release_at


def test_the_most_recently_idle_are_kept_and_due_ones_listed() -> None:
    g = group(warm=[{"schedule": "mon 08:00-12:00", "keep": 1}], idle="5m")
    views = [NodeView("cpu1", "idle", T - 400), NodeView("cpu2", "idle", T - 10)]
    decided = plan(g, views, (frozenset(),), MONDAY_9)
    assert decided.release_at == {"cpu1": T - 100}
    assert decided.due(T) == ["cpu1"]
    assert decided.due(T - 101) == []


def slurm(state: str, last_busy: float | None = None) -> SlurmNode:
    return SlurmNode("cpu1", state, "10.0.0.2", "", last_busy)


@pytest.mark.parametrize(
    ("node", "record", "expected"),
    [
        (slurm("IDLE+CLOUD+POWERED_DOWN"), None, NodeView("cpu1", "down")),
        (slurm("IDLE+CLOUD+POWERED_DOWN+POWER_UP"), None, NodeView("cpu1", "booting")),
        (slurm("IDLE+CLOUD+POWERING_UP"), None, NodeView("cpu1", "booting")),
        (slurm("DOWN+CLOUD+POWERED_DOWN"), None, NodeView("cpu1", "out")),
        (slurm("IDLE+CLOUD+POWERING_DOWN"), None, NodeView("cpu1", "out")),
        (slurm("IDLE+CLOUD+POWER_DOWN"), None, NodeView("cpu1", "out")),
        (slurm("MIXED+CLOUD"), None, NodeView("cpu1", "busy")),
        (slurm("IDLE+CLOUD+COMPLETING"), None, NodeView("cpu1", "busy")),
        (slurm("IDLE+CLOUD", 50.0), None, NodeView("cpu1", "idle", 50.0)),
        # A spare that never ran a job is idle since it came up.
        (slurm("IDLE+CLOUD", 50.0), NodeRecord("cpu", "up", 80.0), NodeView("cpu1", "idle", 80.0)),
        (None, None, NodeView("cpu1", "out")),
    ],
)
def test_slurm_states_as_the_policy_sees_them(
    node: SlurmNode | None, record: NodeRecord | None, expected: NodeView
) -> None:
    assert view("cpu1", node, record) == expected


def test_learned_hours_come_from_the_ledger_sessions_of_the_groups_partition(
    tmp_path: Path,
) -> None:
    warm = [{"learned": True, "keep": 1}]
    config = validate(
        {
            "hub": {"data_dir": str(tmp_path)},
            "cluster": {"node_groups": [base_group(warm=warm)]},
        },
        "test.yaml",
    )
    ledger = Ledger(ledger_url(config))
    for weeks, partition in [(1, "cloud"), (2, "cloud"), (1, "other"), (2, None)]:
        fields = {"machine": "small"} | ({"partition": partition} if partition else {})
        opened = Opened(
            "ann", "", "slurm", "small", fields, Rate(0.1, 1, 2**30, 0), "EUR", frozenset()
        )
        ledger.open(opened, MONDAY_9 - timedelta(weeks=weeks))
    ledger.engine.dispose()
    found = _starts(config, config.cluster.node_groups, MONDAY_9)
    assert {partition: sorted(starts) for partition, starts in found.items()} == {
        "cloud": [MONDAY_9 - timedelta(weeks=2), MONDAY_9 - timedelta(weeks=1)],
        "other": [MONDAY_9 - timedelta(weeks=1)],
    }
    g = config.cluster.node_groups[0]
    assert warm_keep(g, learn(g, found["cloud"], MONDAY_9), MONDAY_9, 0) == 1
