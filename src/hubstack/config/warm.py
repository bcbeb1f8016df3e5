"""When a node group keeps nodes warm: schedules such as ``mon-fri 08:45-12:00`` and
hours learned from the session history.

A class that starts at 9:00 should not wait for a node to boot, and a cluster that waits
ten idle minutes before releasing every node pays for them all night. These keys say when a
group keeps spare nodes up (and how many), so the idle time outside those hours can be short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from hubstack.config.base import Strict, problem

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_FORM = "days and hours such as 'mon-fri 08:45-12:00' or 'sat,sun 10:00-14:00'"


@dataclass(frozen=True)
class Schedule:
    """Days of the week (0 is Monday) and a span of minutes after midnight, end excluded."""

    days: frozenset[int]
    start: int
    end: int

    def covers(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.start <= minute < self.end

    def __str__(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or range of days ({', '.join(DAYS)})")
        a, b = DAYS.index(first), DAYS.index(last or first)
        if b < a:
            raise ValueError(f"{part!r} runs backwards; write e.g. 'sat,sun' or 'mon-fri'")
        days.update(range(a, b + 1))
    return frozenset(days)


def _minutes(hour: str, minute: str) -> int:
    h, m = int(hour), int(minute)
    if m > 59 or h > 24 or (h == 24 and m):
        raise ValueError(f"{hour}:{minute} is not a time of day (00:00 to 24:00)")
    return h * 60 + m


def parse_schedule(value: object) -> Schedule:
    """``mon-fri 08:45-12:00`` as a :class:`Schedule`; an error saying the form otherwise."""
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a schedule; use {_FORM}")
    words = value.lower().split()
    if len(words) != 2:
        raise ValueError(f"{value!r} is not a schedule; use {_FORM}")
    match = _HOURS_RE.match(words[1])
    if not match:
        raise ValueError(f"{words[1]!r} is not a span of hours; use {_FORM}")
    start, end = _minutes(*match.groups()[:2]), _minutes(*match.groups()[2:])
    if end <= start:
        raise ValueError(f"{words[1]!r} ends before it starts; a span past midnight is two entries")
    return Schedule(_days(words[0]), start, end)


ScheduleText = Annotated[
    Schedule, BeforeValidator(parse_schedule), PlainSerializer(str, return_type=str)
]


class Warm(Strict):
    """One reason to keep ``keep`` spare nodes up: a schedule, or the hours of the week in
    which the group's partition usually starts servers (learned from the usage ledger)."""

    schedule: ScheduleText | None = Field(None, description="e.g. 'mon-fri 08:45-12:00'")
    learned: bool = Field(False, description="warm in the hours servers usually start")
    keep: int = Field(1, ge=1, description="spare (idle or booting) nodes to keep up")
    weeks: int = Field(4, ge=1, le=52, description="learned: how many past weeks to look at")
    min_weeks: int = Field(
        2, ge=1, description="learned: an hour is warm if servers started in it on this many"
    )

    @model_validator(mode="after")
    def _one_reason(self) -> Self:
        if (self.schedule is None) == (not self.learned):
            raise problem(
                ("schedule",),
                "give either a schedule or learned: true in each warm entry",
                str(self.schedule) if self.schedule else None,
            )
        if self.min_weeks > self.weeks:
            raise problem(("min_weeks",), f"must be at most weeks ({self.weeks})", self.min_weeks)
        return self
