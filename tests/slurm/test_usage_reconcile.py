"""``hubstack usage --reconcile`` against the real cluster's accounting: a session that
agrees with its job, one whose end differs, one whose job accounting never saw, and a
hubstack job with no session; the exit code says whether they agree. Also the client's
``accounted`` query the comparison and the end of sessions use."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hubtest import wait_for

from hubstack.slurm.client import AccountedJob, Slurm, is_active
from hubstack.system import tool
from hubstack.usage.ledger import Ledger, Opened
from hubstack.usage.pricing import Rate

from .conftest import Cluster, User

pytestmark = pytest.mark.slurm

PREFIX = "ts-"  # the test accounts' prefix (conftest.new_slurm_user)
BUSY = "import time\nwhile time.process_time() < 2: pass"  # 2 CPU-seconds, however busy


def submit(user: User, name: str) -> str:
    """A job of ``user`` named as hubstack names its jobs, using 2 CPU-seconds."""
    argv = [tool("runuser"), "-u", user.name, "--", tool("sbatch"), "--parsable"]
    argv += [f"--job-name={name}"]
    argv += [f"--chdir={user.home}", "--output=/dev/null", "--mem=64M", "--time=2"]
    done = subprocess.run(
        argv,
        input=f"#!/bin/sh\nexec {tool('python3')} -c '{BUSY}'\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def ended(job_ids: list[str]) -> dict[str, AccountedJob] | None:
    jobs = asyncio.run(Slurm().accounted(job_ids))
    if jobs is None or len(jobs) < len(job_ids):
        return None
    return None if any(is_active(job.state) or job.end is None for job in jobs.values()) else jobs


@pytest.fixture(scope="module")
def jobs(slurm_cluster: Cluster, slurm_user: User) -> Iterator[dict[str, AccountedJob]]:
    if not slurm_cluster.accounting:
        pytest.skip("the local cluster runs without accounting")
    # slurmdbd now and then records a job it hears about without its name as "allocation"
    # (its fallback for a nameless start message); such a job is no longer recognisable as
    # hubstack's, which is what the tests compare, so submit the three again.
    for attempt in range(3):
        names = [f"hubstack-{slurm_user.name}-{attempt}{label}" for label in "abc"]
        ids = [submit(slurm_user, name) for name in names]
        jobs = wait_for(lambda ids=ids: ended(ids), 120, "the jobs' final records in sacct")
        if sorted(job.name for job in jobs.values()) == names:
            break
    yield jobs


def run_reconcile(
    tmp: Path, sessions: list[tuple[AccountedJob | str, timedelta]], user: str
) -> tuple[int, dict[str, Any]]:
    """``hubstack usage --reconcile --json`` over a ledger of ``sessions`` (a job, or a
    job id accounting does not know, and how far the session's end is from the job's)."""
    ledger_url = f"sqlite:///{tmp / 'usage.sqlite'}"
    ledger = Ledger(ledger_url)
    for job, shift in sessions:
        known = isinstance(job, AccountedJob)
        start = job.start if known and job.start else datetime.now(UTC) - timedelta(minutes=5)
        end = (job.end if known and job.end else start + timedelta(seconds=2)) + shift
        job_id = job.job_id if known else job
        opened = Opened(
            user, "", "slurm", "small", {}, Rate(1.0, 1.0, 2**26, 0), "EUR", frozenset(), job_id
        )
        ledger.close(ledger.open(opened, start), end)
    ledger.engine.dispose()
    config = {
        "hub": {"data_dir": str(tmp)},
        "accounts": {"prefix": PREFIX},
        "backend": {"type": "slurm"},
        "usage": {"database": ledger_url},
    }
    path = tmp / "hubstack.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "hubstack.cli", "usage", "--reconcile", "--json"]
    argv += ["--since=1h", "--tolerance=1s", f"--user={user}", "--config", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_reconcile_finds_each_kind_of_difference(
    jobs: dict[str, AccountedJob], slurm_user: User, tmp_path: Path
) -> None:
    a, b, c = sorted(jobs.values(), key=lambda job: int(job.job_id))
    assert a.name.endswith("a") and a.user == slurm_user.name
    assert a.start is not None and a.end is not None and 1 <= a.elapsed <= 30
    user = slurm_user.name.removeprefix(PREFIX)
    late = timedelta(minutes=10)
    code, found = run_reconcile(tmp_path, [(a, timedelta()), (b, late), ("999999999", late)], user)
    assert code == 1 and found["agree"] is False and found["sessions_checked"] == 3
    problems = sorted((f["problem"], f["job_id"]) for f in found["findings"])
    assert problems == sorted(
        [
            ("end", b.job_id),
            ("elapsed", b.job_id),
            ("unknown to Slurm", "999999999"),
            ("missing from the ledger", c.job_id),
        ]
    )
    assert {f["user"] for f in found["findings"]} == {user}


def test_reconcile_exits_0_when_the_ledger_and_accounting_agree(
    jobs: dict[str, AccountedJob], slurm_user: User, tmp_path: Path
) -> None:
    user = slurm_user.name.removeprefix(PREFIX)
    code, found = run_reconcile(tmp_path, [(job, timedelta()) for job in jobs.values()], user)
    assert (code, found["agree"], found["findings"]) == (0, True, [])


def test_accounting_tells_what_an_ended_job_used(jobs: dict[str, AccountedJob]) -> None:
    for job_id in jobs:
        cpu, peak = asyncio.run(Slurm().used(job_id))
        assert cpu is not None and 2.0 <= cpu <= 10, (job_id, cpu)
        assert peak is not None
