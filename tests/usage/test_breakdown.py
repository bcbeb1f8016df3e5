"""The usage page's numbers, pure: spending split at UTC midnights per machine type, per
group as budgets count it, the chart's bars, and the window its dates ask for."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from tornado import web

from hubstack.config import Config
from hubstack.hub.usage_page import window_of
from hubstack.usage.breakdown import per_day, per_group
from hubstack.usage.chart import nice_top, stacked_bars
from hubstack.usage.ledger import Ledger, Opened
from hubstack.usage.pricing import Rate

T0 = datetime(2026, 3, 14, 20, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    for user, machine, groups, start, hours in (
        ("ann", "small", {"optics"}, T0, 6),  # 4 h on the 14th, 2 h on the 15th
        ("bob", "large", {"optics", "lasers"}, T0 + 10 * HOUR, 1),
        ("cid", "small", set(), T0 - 48 * HOUR, 1),  # before the window
    ):
        opened = Opened(user, "", "local", machine, {}, Rate(2.0, 2.0, 1, 0), "EUR", groups)
        ledger.close(ledger.open(opened, start), start + hours * HOUR)
    return ledger


def test_spending_is_split_at_midnight_per_machine_type(ledger: Ledger) -> None:
    since, until = datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 16, 12, tzinfo=UTC)
    days = per_day(ledger.charged(since, until), since, until)
    assert [d.day for d in days] == [date(2026, 3, 14), date(2026, 3, 15), date(2026, 3, 16)]
    assert [d.by_machine for d in days] == [{"small": 8.0}, {"small": 4.0, "large": 2.0}, {}]


def test_a_session_counts_for_each_of_its_groups(ledger: Ledger) -> None:
    since, until = T0, T0 + 24 * HOUR
    lines = per_group(
        ledger.charged(since, until), ledger.session_groups(since, until), since, until
    )
    assert [(g.group, g.sessions, g.cost, g.core_hours) for g in lines] == [
        ("optics", 2, 14.0, 14.0),
        ("lasers", 1, 2.0, 2.0),
    ]
    only = ledger.session_groups(since, until, users=["bob"])
    assert list(only.values()) == [{"optics", "lasers"}]


def test_the_chart_stacks_machine_types_on_a_round_axis(ledger: Ledger) -> None:
    since, until = datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 16, tzinfo=UTC)
    chart = stacked_bars(per_day(ledger.charged(since, until), since, until), "EUR")
    assert [label.text for label in chart.y_labels] == ["0", "2.5", "5", "7.5", "10"]
    assert [machine for machine, _ in chart.legend] == ["large", "small"]
    first, *second = chart.bars
    assert first.title == "2026-03-14 small: 8.00 EUR" and len(second) == 2
    # Stacked: the second day's upper part sits on its lower one.
    assert second[1].y + second[1].height == pytest.approx(second[0].y)
    assert first.y + first.height == pytest.approx(chart.baseline)
    assert (nice_top(0), nice_top(0.3), nice_top(7), nice_top(10)) == (1, 0.5, 10, 10)


def test_the_window_runs_from_the_first_days_midnight_to_the_end_of_the_last() -> None:
    config = Config.model_validate({"usage": {"period": "month"}})
    now = datetime(2026, 3, 20, 15, tzinfo=UTC)
    window = window_of(config, "2026-03-01", "2026-03-02", now)
    assert (window.since, window.until) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 3, 3, tzinfo=UTC),
    )
    assert window_of(config, "2026-03-19", "2026-03-25", now).until == now
    assert window_of(config, None, None, now).since == datetime(2026, 3, 1, tzinfo=UTC)
    for start, end, message in (
        ("2026-3-1", None, "from: '2026-3-1' is not a date like 2026-01-31"),
        ("2026-02-30", None, "from: '2026-02-30' is not a date"),
        ("2026-03-02", "2026-03-01", "to: 2026-03-01 is before from: 2026-03-02"),
        ("2024-01-01", "2026-03-01", "from, to: at most 366 days at a time"),
    ):
        with pytest.raises(web.HTTPError) as refused:
            window_of(config, start, end, now)
        assert refused.value.status_code == 400
        assert message in str(refused.value.log_message)
