"""The budget cap of a node group: when its machines' time this period has spent its
budget, no node starts (a table of cases; the real refusal is in
tests/slurm/test_elastic_budget.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hubstack.backends.slurm import SlurmBackend, describe_job
from hubstack.cluster.apply import describe
from hubstack.cluster.budget import forget_past, refusal
from hubstack.cluster.nodes import SlurmNode
from hubstack.cluster.records import NodeRecord, Records
from hubstack.config.cluster import NodeGroup
from hubstack.config.load import validate
from hubstack.config.usage import UsageSettings
from hubstack.hub.monitor import Monitor
from hubstack.slurm.client import JobInfo
from hubstack.slurm.watcher import Tracked
from hubstack.usage.budgets import period_of

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
H = 3600.0
T = NOW.timestamp()
MONTH_START = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
USAGE = UsageSettings(currency="EUR")


def group(**extra: object) -> NodeGroup:
    fields = {"name": "g", "max_nodes": 2, "cpus": 2, "memory": "1G", "partition": "p"}
    return NodeGroup.model_validate(fields | extra)


SPENT = "budget spent for node group g: "


@pytest.mark.parametrize(
    ("budget", "price", "spans", "nodes", "expected"),
    [
        # No budget: never refused.
        (None, 0, [[T - 100 * H, T]], {}, None),
        # 1 node-hour of 2 CPUs: 2 of 4 core-hours.
        ({"core_hours": 4}, 0, [[T - 2 * H, T - H]], {}, None),
        (
            {"core_hours": 4},
            0,
            [[T - 3 * H, T - H]],
            {},
            SPENT + "4.00 of 4 core-hours; it resets 2027-01-01 00:00 UTC",
        ),
        # Only the part within this month counts.
        ({"core_hours": 4}, 0, [[MONTH_START - 5 * H, MONTH_START + H / 2]], {}, None),
        # A machine still running counts up to now, from when it was asked for.
        (
            {"core_hours": 4},
            0,
            [],
            {"g1": NodeRecord("g", "up", T - H, started=T - 2 * H)},
            SPENT + "4.00 of 4 core-hours; it resets 2027-01-01 00:00 UTC",
        ),
        # Refused and released nodes have no machine: nothing counts.
        (
            {"core_hours": 4},
            0,
            [],
            {"g1": NodeRecord("g", "refused", T - 9 * H), "g2": NodeRecord("g", "released", 0)},
            None,
        ),
        # Another group's machines do not count.
        ({"core_hours": 4}, 0, [], {"h1": NodeRecord("h", "up", T - 9 * H)}, None),
        # Money at the group's price per node-hour.
        ({"money": 1.5}, 0.5, [[T - 2 * H, T]], {}, None),
        (
            {"money": 1.5, "core_hours": 100},
            0.5,
            [[T - 3 * H, T]],
            {},
            SPENT + "1.50 of 1.50 EUR and 6.00 of 100 core-hours; it resets 2027-01-01 00:00 UTC",
        ),
        # A zero budget allows nothing.
        (
            {"core_hours": 0},
            0,
            [],
            {},
            SPENT + "0.00 of 0 core-hours; it resets 2027-01-01 00:00 UTC",
        ),
    ],
)
def test_a_node_group_whose_budget_is_spent_starts_no_node(
    budget: dict[str, float] | None,
    price: float,
    spans: list[list[float]],
    nodes: dict[str, NodeRecord],
    expected: str | None,
) -> None:
    records = Records(nodes=nodes, spans={"g": spans})
    assert refusal(group(budget=budget, price=price), USAGE, records, NOW) == expected


def test_a_new_period_allows_nodes_again_and_forgets_the_old_one() -> None:
    records = Records(spans={"g": [[T - 30 * H, T - 20 * H]]})
    capped = group(budget={"core_hours": 4})
    assert refusal(capped, USAGE, records, NOW) is not None
    next_month = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    assert refusal(capped, USAGE, records, next_month) is None
    forget_past(records, USAGE, next_month)
    assert records.spans == {"g": []}
    daily = UsageSettings(period="1d")
    assert refusal(capped, daily, Records(spans={"g": [[T - 13 * H, T - 11 * H]]}), NOW) is None


def test_a_money_budget_needs_a_price() -> None:
    with pytest.raises(ValueError, match="must be set for a money budget"):
        group(budget={"money": 5})


def test_records_keep_machine_lifetimes_from_request_to_release() -> None:
    records = Records()
    records.booting("g1", "g")
    asked = records.nodes["g1"].started = records.nodes["g1"].since = time.time() - 100
    records.up("g1", "10.0.0.2")
    assert records.nodes["g1"].started == asked
    records.released("g1", "g")
    records.refused("g1", "g", "budget spent")
    records.released("g1", "g")  # no machine since the refusal: no second span
    [[start, end]] = records.spans["g"]
    assert start == asked and end - start >= 100


def test_status_shows_a_refused_node_with_its_reason() -> None:
    node = SlurmNode("g1", "DOWN+CLOUD+POWERED_DOWN", "g1", "ResumeTimeout reached")
    record = NodeRecord("g", "refused", 0, reason="budget spent for node group g: ...")
    assert describe("g1", "g", node, record, 1.0) == "refused (budget spent for node group g: ...)"


def test_the_spawn_progress_says_when_no_node_can_start(tmp_path: Path) -> None:
    nodes = {"name": "g", "max_nodes": 1, "cpus": 1, "memory": "1G", "partition": "cloud"}
    capped = nodes | {"price": 1, "budget": {"money": 0}}
    cluster = {"state_dir": str(tmp_path), "node_groups": [capped]}
    backend = SlurmBackend(validate({"backend": {"type": "slurm"}, "cluster": cluster}))
    tracked = Tracked("812")
    tracked.info = JobInfo("812", "PENDING", "ReqNodeNotAvail", None, "cloud", None, None)
    resets = period_of(USAGE, datetime.now(UTC))[1]
    assert describe_job(tracked, None, backend._no_node(tracked)) == (
        "Job 812 is queued on partition cloud, reason ReqNodeNotAvail, no node can start: "
        f"budget spent for node group g: 0.00 of 0.00 EUR; it resets {resets:%Y-%m-%d} 00:00 UTC"
    )
    tracked.info = JobInfo("812", "PENDING", "Priority", None, "other", None, None)
    assert backend._no_node(tracked) is None


def test_admins_are_alerted_to_nodes_refused_for_a_spent_budget(tmp_path: Path) -> None:
    monitor = Monitor(validate({"hub": {"data_dir": str(tmp_path)}}))
    reason = "budget spent for node group g: 4.00 of 4 core-hours; it resets 2027-01-01 00:00 UTC"
    out = {
        "g1": NodeRecord("g", "refused", 0, reason=reason),
        "g2": NodeRecord("g", "refused", 0, reason=reason),
    }
    [alert] = monitor._node_alerts(out)
    assert (alert.key, alert.summary) == (
        "cluster-budget-spent",
        f"elastic nodes were refused: {reason}",
    )
    out["h1"] = NodeRecord("h", "failed", 0, reason="no slurmd")
    assert [a.key for a in monitor._node_alerts(out)] == [
        "cluster-budget-spent",
        "cluster-nodes-failed",
    ]
