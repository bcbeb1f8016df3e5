"""The usage ledger and budgets in the hub: a spent budget refuses a start (HTTP 400,
whatever asks: form, REST API, named server), each poll of a running server meters it,
warns past ``warn_at`` and stops it once a spent budget's grace period is over.

The meter runs in the spawner's poll (JupyterHub's own periodic check of every running
server, also run for each server when a restarted hub takes it back), so no second loop
has to find the servers, and a restart resumes metering where the ledger left off. Polls
share one :class:`~hubstack.usage.meter.Meter`, which counts spending once per pass for
all servers. Budgets are the config's with admins' run-time changes
(:class:`~hubstack.usage.overrides.BudgetBook`), in force as soon as they are made.
Database work and cgroup reads run in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from tornado import web

from hubstack.config import Config
from hubstack.launch.profiles import LaunchRequest
from hubstack.usage.audit import record
from hubstack.usage.budgets import (
    Level,
    Standing,
    refusal,
    standings,
    stop_at,
    warning,
)
from hubstack.usage.ledger import Ledger, Opened, Reading, SessionRow, ledger_url
from hubstack.usage.meter import Meter
from hubstack.usage.overrides import BudgetBook
from hubstack.usage.pricing import rate_of

# Sessions whose server ended before this hub process saw it run ended while the hub was
# down: they are charged up to the last time they were seen running.
HUB_STARTED = datetime.now(UTC)


_LEDGERS_LOCK = threading.Lock()


def ledger_for(url: str) -> Ledger:
    """One ledger (engine and connection pool) per database; made once, though the
    threads that meter servers may ask for it at the same time."""
    with _LEDGERS_LOCK:
        return _ledger(url)


@functools.cache
def _ledger(url: str) -> Ledger:
    return Ledger(url)


@dataclass(frozen=True)
class Accounting:
    """The hub's ledger, its meter and the budgets in force."""

    ledger: Ledger
    meter: Meter
    book: BudgetBook


_ACCOUNTING: dict[str, Accounting] = {}


def accounting(config: Config) -> Accounting:
    """The one :class:`Accounting` of the hub's ledger (blocking the first time)."""
    url = ledger_url(config)
    with _LEDGERS_LOCK:
        if url not in _ACCOUNTING:
            ledger = _ledger(url)
            _ACCOUNTING[url] = Accounting(ledger, Meter(ledger), BudgetBook(ledger, config.usage))
        return _ACCOUNTING[url]


def pass_age(config: Config) -> timedelta:
    """How old the spending a poll or a start is judged by may be: half the meter
    interval, so a budget is found spent at most one interval late."""
    return timedelta(seconds=config.usage.meter_interval / 2)


# Beside JupyterHub's own at /hub/metrics (one registry, see hub.metrics); set by each
# meter pass for the budgets of the metered server's owner.
SPENT = Gauge(
    "hubstack_usage_spent",
    "Spent in the current budget period by a user or group with a budget",
    ["scope", "name", "unit"],
)
REMAINING = Gauge(
    "hubstack_budget_remaining",
    "What is left of a user's or group's budget in the current period",
    ["scope", "name", "unit"],
)
SESSIONS = Gauge(
    "hubstack_usage_sessions_running", "Running server sessions by machine type", ["machine"]
)


def _export(config: Config, found: list[Standing], running: dict[str, int]) -> None:
    for standing in found:
        scope = standing.scope
        for unit, spent, limit in (
            ("money", standing.spent.money, standing.budget.money),
            ("core_hours", standing.spent.core_hours, standing.budget.core_hours),
        ):
            if limit is not None:
                SPENT.labels(scope.kind, scope.name, unit).set(spent)
                REMAINING.labels(scope.kind, scope.name, unit).set(max(limit - spent, 0.0))
    for machine in config.machines:
        SESSIONS.labels(machine.id).set(running.get(machine.id, 0))


def _standings(config: Config, user: str, groups: frozenset[str], now: datetime) -> list[Standing]:
    books = accounting(config)
    settings = books.book.settings
    spent = books.meter.spent(settings, now, pass_age(config))
    return standings(settings, user, groups, spent, now)


async def refuse_spent_budget(config: Config, user: str, groups: frozenset[str]) -> None:
    """HTTP 400 naming the spent budget and when it resets, before anything starts."""
    found = await asyncio.to_thread(_standings, config, user, groups, datetime.now(UTC))
    message = refusal(config.usage, found)
    if message:
        raise web.HTTPError(400, message)


async def open_session(
    config: Config,
    user: str,
    server: str,
    request: LaunchRequest,
    groups: frozenset[str],
    job_id: str | None,
) -> int:
    """Record a started server at the rate in force now."""
    opened = Opened(
        user=user,
        server=server,
        backend=config.backend.type,
        machine=request.machine.id,
        fields=request.as_user_options(),
        rate=rate_of(config.usage.prices, request),
        currency=config.usage.currency,
        groups=groups,
        job_id=job_id,
    )
    ledger = ledger_for(ledger_url(config))
    return await asyncio.to_thread(ledger.open, opened, datetime.now(UTC))


async def close_session(
    config: Config,
    session_id: int,
    seen_ended_now: bool = True,
    ended_at: datetime | None = None,
    used: tuple[float | None, int | None] | None = None,
) -> None:
    """The session's server has ended: at ``ended_at`` if the backend knows (Slurm's
    accounting); else now, or, if this hub never saw it run (it ended while the hub was
    down), when it was last seen running. ``used``: what it used, known only at its end
    (Slurm's accounting)."""

    def end(row: SessionRow) -> datetime:
        if ended_at is not None:
            return min(max(ended_at, row.started), datetime.now(UTC))
        if not seen_ended_now or row.metered < HUB_STARTED:
            return row.metered
        return datetime.now(UTC)

    def close() -> None:
        meter = accounting(config).meter
        if used is not None and ended_at is not None:
            meter.read(Reading(session_id, min(ended_at, datetime.now(UTC)), *used))
        meter.close(session_id, end)
        _export(config, [], meter.running_by_machine())

    await asyncio.to_thread(close)


@dataclass(frozen=True)
class Verdict:
    """What a meter pass found for one server: a notice to give, and whether to stop it."""

    notice: str | None = None
    stop: bool = False


async def meter_session(
    config: Config,
    session_id: int,
    user: str,
    groups: frozenset[str],
    measured: tuple[float | None, int | None],
    warned: bool,
) -> Verdict:
    """Meter a running server up to now and judge its budgets."""
    usage = config.usage

    def judge() -> Verdict:
        now = datetime.now(UTC)
        meter = accounting(config).meter
        meter.read(Reading(session_id, now, *measured))
        found = _standings(config, user, groups, now)
        _export(config, found, meter.running_by_machine())
        spent = [s for s in found if s.level(usage.warn_at) is Level.SPENT]
        since = meter.over_budget_since(session_id)
        if not spent:
            if since is not None:  # a new period or a raised budget
                meter.mark_over_budget(session_id, None)
            message = warning(usage, found)
            return Verdict(None if warned or message is None else message)
        if since is None:
            meter.mark_over_budget(session_id, now)
            until = stop_at(usage, now).strftime("%Y-%m-%d %H:%M:%S UTC")
            return Verdict(f"{spent[0].describe(usage.currency)}; this server stops at {until}.")
        if now >= stop_at(usage, since):
            return Verdict(f"it was stopped because {spent[0].describe(usage.currency)}", stop=True)
        return Verdict()

    return await asyncio.to_thread(judge)


def session_state(state: dict[str, Any]) -> int | None:
    value = state.get("usage_session")
    return value if isinstance(value, int) else None


async def audit(
    config: Config,
    handler: Any,
    action: str,
    user: str,
    server: str,
    actor: str | None = None,
    **detail: Any,
) -> None:
    """Add to the audit log: ``handler`` is the request that asked (its user, unless
    ``actor`` is given, and address), None when the hub acts on its own (a budget, a poll,
    a stop JupyterHub asked for)."""
    if actor is None:
        who = getattr(handler, "current_user", None) if handler is not None else None
        actor = getattr(who, "name", None) or "hub"
    source = handler.request.remote_ip if handler is not None else None
    ledger = ledger_for(ledger_url(config))
    await asyncio.to_thread(
        record, ledger, datetime.now(UTC), actor, action, user, server, source, **detail
    )


def _price_line(config: Config) -> str | None:
    prices, currency = config.usage.prices, config.usage.currency
    parts = [
        f"{machine.display} {prices.machines[machine.id]:.2f} {currency}"
        for machine in config.machines
        if machine.id in prices.machines
    ]
    if config.backend.type == "slurm":
        parts += [
            f"{text} {price:.2f} {currency}"
            for text, price in (("each core", prices.core_hour), ("each GPU", prices.gpu_hour))
            if price
        ]
    return f"Price per hour: {', '.join(parts)}." if parts else None


async def form_lines(config: Config, user: str, groups: frozenset[str]) -> list[str]:
    """What the spawn form says about cost: the prices per hour, and each budget of the
    user with what is used of it and when it resets."""
    found = await asyncio.to_thread(_standings, config, user, groups, datetime.now(UTC))
    lines = [
        f"{standing.describe(config.usage.currency)} (resets {standing.resets:%Y-%m-%d %H:%M} UTC)."
        for standing in found
    ]
    price = _price_line(config)
    return ([price] if price else []) + [line[0].upper() + line[1:] for line in lines]
