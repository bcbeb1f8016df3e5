"""The pure policy: rates fixed at start, periods, which budgets apply and what they say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hubstack.config.load import ConfigError, validate
from hubstack.config.usage import UsageSettings
from hubstack.launch import resolve
from hubstack.launch.access import Access
from hubstack.usage.budgets import (
    Level,
    Scope,
    period_of,
    refusal,
    scopes_of,
    standings,
    warning,
)
from hubstack.usage.pricing import Charge, charge, efficiency, rate_of

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def settings(**usage: object) -> UsageSettings:
    return validate({"usage": usage}).usage


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("month", T0, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        (
            "month",
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        ("1h", T0 + timedelta(minutes=5), T0, T0 + timedelta(hours=1)),
        ("1d", T0, T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1)),
    ],
)
def test_periods(period: str, now: datetime, start: datetime, end: datetime) -> None:
    assert period_of(settings(period=period), now) == (start, end)


def test_local_rate_is_the_machine_price_and_its_cores() -> None:
    config = validate({"usage": {"prices": {"machines": {"medium": 0.5}, "core_hour": 9}}})
    request = resolve(config, {"machine": "medium", "environment": "python"}, Access())
    rate = rate_of(config.usage.prices, request)
    # core_hour prices Slurm jobs only: a local machine type has one price.
    assert (rate.money, rate.cores, rate.gpus) == (0.5, 2.0, 0)


def test_slurm_rate_adds_cores_and_gpus() -> None:
    config = validate(
        {
            "backend": {"type": "slurm", "slurm": {"fields": {"gpus": {"max": 2}}}},
            "usage": {"prices": {"machines": {"small": 1}, "core_hour": 0.25, "gpu_hour": 2}},
        }
    )
    options = {"machine": "small", "environment": "python", "cores": "4", "gpus": "1"}
    rate = rate_of(config.usage.prices, resolve(config, options, Access()))
    assert (rate.money, rate.cores, rate.gpus) == (1 + 4 * 0.25 + 2, 4.0, 1)


@pytest.mark.parametrize(
    ("start", "end", "since", "until", "hours"),
    [
        (0, 2, 0, 10, 2),  # inside
        (0, 2, 1, 10, 1),  # began before the window
        (0, 5, 1, 3, 2),  # spans it
        (4, 5, 0, 3, 0),  # after it
    ],
)
def test_charge_counts_only_the_window(
    start: int, end: int, since: int, until: int, hours: float
) -> None:
    at = [T0 + timedelta(hours=h) for h in (start, end, since, until)]
    assert charge(3.0, 2.0, *at) == Charge(3.0 * hours, 2.0 * hours)


def test_efficiency_is_used_over_allocated() -> None:
    assert efficiency(1800, 2, T0, T0 + timedelta(hours=1)) == 0.25


def test_user_and_group_budgets_both_apply() -> None:
    usage = settings(
        budgets={
            "users": {"ada": {"money": 10}},
            "groups": {"physics": {"core_hours": 4}, "chemistry": {"money": 1}},
        }
    )
    assert list(scopes_of(usage, "ada", ["physics", "art"])) == [
        Scope("user", "ada"),
        Scope("group", "physics"),
    ]
    assert list(scopes_of(usage, "bob", [])) == []


@pytest.mark.parametrize(
    ("spent", "level"),
    [
        (Charge(money=1), Level.OK),
        (Charge(money=8), Level.WARN),
        (Charge(money=9.99), Level.WARN),
        (Charge(money=10), Level.SPENT),
        (Charge(money=1, core_hours=2), Level.SPENT),  # either measure spends it
    ],
)
def test_levels(spent: Charge, level: Level) -> None:
    usage = settings(budgets={"users": {"ada": {"money": 10, "core_hours": 2}}})
    (standing,) = standings(usage, "ada", [], {Scope("user", "ada"): spent}, T0)
    assert standing.level(usage.warn_at) is level


def test_a_zero_budget_allows_nothing() -> None:
    usage = settings(budgets={"groups": {"guests": {"money": 0}}})
    found = standings(usage, "ada", ["guests"], {}, T0)
    assert refusal(usage, found) is not None


def test_refusal_names_the_budget_and_when_it_resets() -> None:
    usage = settings(
        currency="EUR",
        budgets={"users": {"ada": {"money": 10}}, "groups": {"physics": {"money": 5}}},
    )
    spent = {Scope("user", "ada"): Charge(money=2), Scope("group", "physics"): Charge(money=5)}
    found = standings(usage, "ada", ["physics"], spent, T0)
    assert refusal(usage, found) == (
        "No new server can start: the group budget of physics: 5.00 of 5.00 EUR used. "
        "It resets on 2026-04-01 00:00 UTC."
    )
    assert warning(usage, found) is None
    spent[Scope("user", "ada")] = Charge(money=8.5)
    spent[Scope("group", "physics")] = Charge(money=1)
    message = warning(usage, standings(usage, "ada", ["physics"], spent, T0))
    assert message is not None and message.startswith("85 % of the user budget of ada is used")


@pytest.mark.parametrize(
    ("usage", "says"),
    [
        ({"prices": {"machines": {"huge": 1}}}, "usage.prices.machines.huge: is not a machine"),
        ({"budgets": {"users": {"ada": {}}}}, "usage.budgets.users.ada: a budget needs money"),
        ({"budgets": {"groups": {"lab": {"money": -1}}}}, "usage.budgets.groups.lab.money"),
        ({"period": "10s"}, "usage.period: must be 'month' or at least 1m"),
        ({"database": "mysql://db"}, "usage.database"),
    ],
)
def test_bad_usage_config_names_the_key(usage: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate({"usage": usage})
    assert says in str(error.value)
