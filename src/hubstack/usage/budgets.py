"""Which budgets apply to a user, how much of each is spent, and what that means: a
warning, a refused start, servers stopped after the grace period. Pure, so it is
table-tested; the ledger supplies what was spent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from hubstack.config.usage import Budget, UsageSettings
from hubstack.usage.pricing import Charge

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_of(settings: UsageSettings, now: datetime) -> tuple[datetime, datetime]:
    """The budget period ``now`` is in: a calendar month (UTC) or the ``period``-long
    window counted from 1970-01-01 UTC."""
    if settings.period == "month":
        start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    length = timedelta(seconds=settings.period)
    start = EPOCH + length * ((now - EPOCH) // length)
    return start, start + length


@dataclass(frozen=True)
class Scope:
    """Whose budget: ``user`` or ``group``, and the name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"the {self.kind} budget of {self.name}"


def scopes_of(settings: UsageSettings, user: str, groups: Iterable[str]) -> dict[Scope, Budget]:
    """The budgets a server of ``user`` (in ``groups``) counts against."""
    budgets = settings.budgets
    found = {Scope("user", user): budgets.users[user]} if user in budgets.users else {}
    for group in sorted(groups):
        if group in budgets.groups:
            found[Scope("group", group)] = budgets.groups[group]
    return found


class Level(Enum):
    OK = 0
    WARN = 1
    SPENT = 2


@dataclass(frozen=True)
class Standing:
    """One budget's state in the current period."""

    scope: Scope
    budget: Budget
    spent: Charge
    resets: datetime

    @property
    def fraction(self) -> float:
        """The largest share spent of the budget's money and core-hours."""
        shares = [
            spent / limit if limit else 1.0  # a zero budget allows nothing
            for spent, limit in (
                (self.spent.money, self.budget.money),
                (self.spent.core_hours, self.budget.core_hours),
            )
            if limit is not None
        ]
        return max(shares)

    def level(self, warn_at: float) -> Level:
        if self.fraction >= 1:
            return Level.SPENT
        return Level.WARN if self.fraction >= warn_at else Level.OK

    def amounts(self, currency: str) -> str:
        """What is spent of what: "1.20 of 5.00 EUR and 3.00 of 10 core-hours"."""
        parts = []
        if self.budget.money is not None:
            parts.append(f"{self.spent.money:.2f} of {self.budget.money:.2f} {currency}")
        if self.budget.core_hours is not None:
            parts.append(f"{self.spent.core_hours:.2f} of {self.budget.core_hours:g} core-hours")
        return " and ".join(parts)

    def describe(self, currency: str) -> str:
        return f"{self.scope}: {self.amounts(currency)} used"


def standings(
    settings: UsageSettings,
    user: str,
    groups: Iterable[str],
    spent: Mapping[Scope, Charge],
    now: datetime,
) -> list[Standing]:
    """Every budget that applies to ``user``, with what is spent of it this period."""
    resets = period_of(settings, now)[1]
    return [
        Standing(scope, budget, spent.get(scope, Charge()), resets)
        for scope, budget in scopes_of(settings, user, groups).items()
    ]


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def refusal(settings: UsageSettings, found: list[Standing]) -> str | None:
    """Why no new server may start (a spent budget, and when it resets), else None."""
    for standing in found:
        if standing.level(settings.warn_at) is Level.SPENT:
            return (
                f"No new server can start: {standing.describe(settings.currency)}. "
                f"It resets on {_when(standing.resets)}."
            )
    return None


def warning(settings: UsageSettings, found: list[Standing]) -> str | None:
    """The notice for a budget past ``warn_at`` but not spent, else None."""
    for standing in found:
        if standing.level(settings.warn_at) is Level.WARN:
            return (
                f"{int(standing.fraction * 100)} % of {standing.scope} is used "
                f"({standing.describe(settings.currency)}); it resets on "
                f"{_when(standing.resets)}."
            )
    return None


def stop_at(settings: UsageSettings, spent_since: datetime) -> datetime:
    """When servers running on a spent budget stop: the grace period after it was spent."""
    return spent_since + timedelta(seconds=settings.grace)
