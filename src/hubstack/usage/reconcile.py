"""The ledger against Slurm's accounting, the source of truth for jobs: sessions whose job
accounting does not know, hubstack's jobs that ran with no session, and sessions whose
start, end or length differ from their job's by more than a tolerance. Pure: the caller
reads the sessions and asks ``sacct``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from hubstack.slurm.client import AccountedJob, is_active
from hubstack.usage.ledger import SessionRow


def is_hubstack_job(job: AccountedJob, account_prefix: str) -> bool:
    """Job names are ``hubstack-<account>-<server>`` (``launch.plan``), accounts
    ``<prefix><user>``."""
    return job.name.startswith(f"hubstack-{account_prefix}")


@dataclass(frozen=True)
class Finding:
    """One disagreement between the ledger and accounting."""

    problem: str  # "unknown to Slurm", "missing from the ledger", "start", "end", "elapsed"
    job_id: str
    user: str
    session: int | None = None
    ledger: str = ""  # what the ledger says (a time, a duration)
    slurm: str = ""  # what accounting says


def _when(moment: datetime | None) -> str:
    return "running" if moment is None else moment.isoformat(timespec="seconds")


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"


def compare(
    sessions: Iterable[SessionRow],
    jobs: Mapping[str, AccountedJob],
    account_prefix: str,
    tolerance: timedelta,
    now: datetime,
) -> list[Finding]:
    """What differs between the Slurm sessions of the ledger and the jobs accounting holds
    (``jobs``: those of the window and those the sessions name)."""
    found: list[Finding] = []
    linked: set[str] = set()
    for row in sessions:
        if row.backend != "slurm" or not row.job_id:
            continue
        linked.add(row.job_id)
        job = jobs.get(row.job_id)
        if job is None:
            found.append(Finding("unknown to Slurm", row.job_id, row.user, row.id))
            continue
        found.extend(_differences(row, job, tolerance, now))
    for job in jobs.values():
        ran = job.start is not None and job.elapsed > tolerance.total_seconds()
        if job.job_id not in linked and ran and is_hubstack_job(job, account_prefix):
            user = job.user.removeprefix(account_prefix)
            slurm = f"{_when(job.start)} to {_when(job.end)}"
            found.append(Finding("missing from the ledger", job.job_id, user, None, "", slurm))
    return sorted(found, key=lambda f: (f.job_id, f.problem))


def _differences(
    row: SessionRow, job: AccountedJob, tolerance: timedelta, now: datetime
) -> list[Finding]:
    """A session's start, end and length against its job's. The ledger's session starts
    once the server answers and ends when the hub sees it gone, so some difference is
    normal: only more than ``tolerance`` counts."""
    found = []

    def differ(problem: str, ours: str, theirs: str) -> None:
        found.append(Finding(problem, row.job_id or "", row.user, row.id, ours, theirs))

    if job.start is None or abs(row.started - job.start) > tolerance:
        differ("start", _when(row.started), _when(job.start) if job.start else "never")
    job_end = None if is_active(job.state) else job.end
    if (row.stopped is None) != (job_end is None) or (
        row.stopped is not None and job_end is not None and abs(row.stopped - job_end) > tolerance
    ):
        differ("end", _when(row.stopped), _when(job_end))
    if job.start is not None:
        ours = (row.stopped or now) - row.started
        theirs = timedelta(seconds=job.elapsed) if job_end else now - job.start
        if abs(ours - theirs) > tolerance:
            differ("elapsed", _seconds(ours), _seconds(theirs))
    return found


def as_table(findings: list[Finding]) -> str:
    header = ["JOB", "USER", "SESSION", "PROBLEM", "LEDGER", "SLURM"]
    body = [
        [
            f.job_id,
            f.user,
            "-" if f.session is None else str(f.session),
            f.problem,
            f.ledger or "-",
            f.slurm or "-",
        ]
        for f in findings
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    )


def as_json(findings: list[Finding], checked: int, since: datetime, until: datetime) -> str:
    return json.dumps(
        {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "sessions_checked": checked,
            "agree": not findings,
            "findings": [asdict(f) for f in findings],
        }
    )
