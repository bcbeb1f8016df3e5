"""Usage accounting: a meter pass over 1,000 running sessions, and a report over a year.

    uv run python benchmarks/accounting.py [--database URL] [--running 1000] [--sessions 50000]

On a fresh ledger (SQLite in a temporary directory unless ``--database``), with 100 users
each with a user budget and half of them in one of 10 groups with a group budget:

1. Meter pass: ``--running`` sessions are open, and each is metered once as the hub does at
   each poll (hub.usage.meter_session's work, in one thread: leave the reading with the
   meter, get this period's spending, of which the first poll runs the pass that writes
   all readings and sums the running sessions, then judge the user's budgets). Printed:
   wall time of all polls, per session, and the CPU time of this process; for the first
   pass of a period (which also sums the period's stopped sessions) and a later one.
2. Yearly report: ``--sessions`` closed sessions spread over the last year, then
   ``hubstack usage``'s report over that year (everyone), timed three times.

Targets (issue 11): a meter pass under 100 ms, a yearly report under 1 s.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hubstack.config.load import validate
from hubstack.usage.budgets import refusal, standings, warning
from hubstack.usage.ledger import GroupRow, Ledger, Opened, Reading, SessionRow
from hubstack.usage.meter import Meter
from hubstack.usage.pricing import Rate
from hubstack.usage.report import Window, usage_report

USERS = [f"user{n:03}" for n in range(100)]
GROUPS = [f"group{n}" for n in range(10)]


def groups_of(user: str) -> frozenset[str]:
    number = int(user[4:])
    return frozenset({GROUPS[number % 10]}) if number % 2 else frozenset()


def fill_history(ledger: Ledger, count: int, now: datetime) -> None:
    """``count`` closed sessions over the last year, inserted in bulk."""
    rng = random.Random(11)
    rows = []
    for n in range(count):
        user = rng.choice(USERS)
        start = now - timedelta(seconds=rng.uniform(3600, 365 * 86400))
        end = start + timedelta(seconds=rng.uniform(600, 8 * 3600))
        rows.append(
            SessionRow(
                user=user,
                server="",
                backend="local",
                machine=rng.choice(["small", "medium"]),
                fields={},
                cores=2.0,
                memory=2**31,
                gpus=0,
                rate=0.1,
                currency="EUR",
                started=start,
                metered=end,
                stopped=end,
                cpu_seconds=rng.uniform(0, 3600),
                groups=[GroupRow(name=g) for g in groups_of(user)],
            )
        )
        if len(rows) == 5000 or n == count - 1:
            with ledger.begin() as db:
                db.add_all(rows)
            rows = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="a SQLAlchemy URL; default: SQLite in a temp dir")
    parser.add_argument("--running", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=50_000)
    args = parser.parse_args()
    config = validate(
        {
            "usage": {
                "budgets": {
                    "users": {u: {"money": 100} for u in USERS},
                    "groups": {g: {"money": 1000} for g in GROUPS},
                }
            }
        }
    )
    usage = config.usage
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(args.database or f"sqlite:///{Path(tmp) / 'usage.sqlite'}")
        now = datetime.now(UTC)
        fill_history(ledger, args.sessions, now)
        running = []
        for n in range(args.running):
            user = USERS[n % len(USERS)]
            opened = Opened(
                user, f"s{n}", "local", "small", {}, Rate(0.1, 1, 2**30, 0), "EUR", groups_of(user)
            )
            running.append((ledger.open(opened, now - timedelta(hours=1)), user))

        meter = Meter(ledger)
        for which in ("first", "later"):
            cpu, wall = time.process_time(), time.perf_counter()
            for n, (session_id, user) in enumerate(running):
                moment = datetime.now(UTC)
                meter.read(Reading(session_id, moment, 10.0 + n, 2**20))
                # The first poll of the pass finds the last pass too old and runs one.
                age = timedelta(0) if n == 0 else timedelta(hours=1)
                groups = groups_of(user)
                found = standings(usage, user, groups, meter.spent(usage, moment, age), moment)
                refusal(usage, found) or warning(usage, found)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"meter pass over {args.running} running sessions ({which} of the period): "
                f"{wall * 1000:.0f} ms ({wall / args.running * 1000:.3f} ms a session), "
                f"{cpu * 1000:.0f} ms of CPU (target: 100 ms a pass)"
            )

        window = Window(now - timedelta(days=365), now)
        for attempt in range(3):
            wall = time.perf_counter()
            lines = usage_report(ledger, usage, window)
            wall = time.perf_counter() - wall
            print(
                f"yearly report over {args.sessions + args.running} sessions "
                f"({len(lines)} lines), run {attempt + 1}: {wall * 1000:.0f} ms (target: 1 s)"
            )


if __name__ == "__main__":
    main()
