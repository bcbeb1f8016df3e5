"""The Slurm client against the real local cluster: submit as a user, watch, explain, cancel."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hubtest import wait_for

from hubstack.slurm.client import (
    ROOT_PATH,
    JobEnd,
    JobInfo,
    Slurm,
    SlurmError,
    reason_from_log,
)
from hubstack.system import tool

from .conftest import Cluster, User

pytestmark = pytest.mark.slurm

UNKNOWN_ID = "999999999"
SECRET = "hubstack-test-secret-token"
ALLOCATE_300M = "/usr/bin/python3 -c 'b = b\"x\" * (300 * 2**20); print(len(b))'"
WAIT_FOR_RELEASE = "while [ ! -e release-$SLURM_JOB_ID ]; do sleep 0.2; done"
SAY_WHO_AND_WHERE = 'id -u; echo "var=$HUBSTACK_TEST_VAR"; echo "token=$JUPYTERHUB_API_TOKEN"; pwd'
JOB_ENV = {"HUBSTACK_TEST_VAR": "hello world", "JUPYTERHUB_API_TOKEN": SECRET}


def script(body: str, *options: str) -> str:
    """A small batch script: 1 CPU, 64M and 5 minutes unless ``options`` say otherwise."""
    defaults = ("--cpus-per-task=1", "--mem=64M", "--time=5", "--output=job-%j.out")
    lines = ["#!/bin/sh", *(f"#SBATCH {o}" for o in (*defaults, *options)), body, ""]
    return "\n".join(lines)


class Jobs:
    """Submits test jobs as one user and cancels every one of them at the end of the test."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.slurm = Slurm()
        self.ids: list[str] = []

    def submit(self, body: str, *options: str, slurm: Slurm | None = None) -> str:
        client = slurm or self.slurm
        coro = client.submit(script(body, *options), self.user.name, JOB_ENV, self.user.home)
        job_id = asyncio.run(coro)
        self.ids.append(job_id)
        return job_id

    def info(self, job_id: str) -> JobInfo | None:
        return asyncio.run(self.slurm.queue([job_id])).get(job_id)

    def state(self, job_id: str, *states: str) -> JobInfo | None:
        """The job's info once squeue shows it in one of ``states``, else None."""
        info = self.info(job_id)
        return info if info is not None and info.state in states else None

    def ended(self, job_id: str) -> JobEnd | None:
        return asyncio.run(self.slurm.ended(job_id))

    def wait_ended(self, job_id: str, timeout: float = 60) -> JobEnd:
        return wait_for(lambda: self.ended(job_id), timeout, f"sacct's final record of {job_id}")

    def output(self, job_id: str) -> str:
        path = self.user.home / f"job-{job_id}.out"
        return path.read_text() if path.exists() else ""

    def release(self, job_id: str) -> None:
        """Let a job running WAIT_FOR_RELEASE finish."""
        (self.user.home / f"release-{job_id}").touch()

    def cancel_all(self) -> None:
        for job_id in self.ids:
            subprocess.run([tool("scancel"), job_id], check=False, capture_output=True)


@pytest.fixture
def jobs(slurm_user: User) -> Iterator[Jobs]:
    submitted = Jobs(slurm_user)
    yield submitted
    submitted.cancel_all()


@pytest.fixture(scope="module", autouse=True)
def overtime(slurm_user: User) -> Iterator[tuple[Jobs, str]]:
    """A job with a limit of one minute (Slurm's smallest) that would run for five, submitted
    as the module starts: Slurm ends it while the other tests run, and the time-limit test,
    the module's last, reads how it ended instead of waiting a minute or more for it."""
    submitted = Jobs(slurm_user)
    job_id = submitted.submit("sleep 300", "--time=1")
    yield submitted, job_id
    submitted.cancel_all()


def processes_with(variable: bytes) -> list[int]:
    """Processes whose environment holds ``variable`` (``NAME=value``)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if variable in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_ran_as_user_with_env(jobs: Jobs, job_id: str, user: User) -> None:
    """The job of SAY_WHO_AND_WHERE ran as ``user``, with the environment Jobs submits."""
    end = jobs.wait_ended(job_id)
    assert (end.state, end.reason, end.exit_code) == ("COMPLETED", "it exited", 0)
    lines = jobs.output(job_id).splitlines()
    assert lines == [str(user.uid), "var=hello world", f"token={SECRET}", str(user.home)]


@pytest.mark.parametrize("submit_as", ["runuser", "sudo", "su"])
def test_a_job_runs_as_its_user_with_the_given_environment(
    jobs: Jobs, slurm_user: User, submit_as: Any
) -> None:
    job_id = jobs.submit(SAY_WHO_AND_WHERE, slurm=Slurm(submit_as=submit_as))
    assert_ran_as_user_with_env(jobs, job_id, slurm_user)


def test_a_hub_that_is_not_root_submits_with_sudo_under_the_documented_rule(
    jobs: Jobs, slurm_user: User, hub_account: str
) -> None:
    env = {"PATH": ROOT_PATH, **JOB_ENV}
    argv = Slurm(submit_as="sudo").submit_argv(slurm_user.name, slurm_user.home, env)
    as_hub = [tool("setpriv"), f"--reuid={hub_account}", f"--regid={hub_account}", "--init-groups"]
    proc = subprocess.run(
        [*as_hub, *argv],
        input=script(SAY_WHO_AND_WHERE),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    jobs.ids.append(job_id)
    assert_ran_as_user_with_env(jobs, job_id, slurm_user)
    # The rule allows sbatch only: anything else as the user is refused.
    other = [tool("sudo"), "--non-interactive", f"--user={slurm_user.name}", "--", "/usr/bin/id"]
    refused = subprocess.run([*as_hub, *other], capture_output=True, text=True, check=False)
    assert refused.returncode != 0


@pytest.mark.parametrize("submit_as", ["runuser", "sudo", "su"])
def test_the_submit_command_line_names_no_value(slurm_user: User, submit_as: Any) -> None:
    env = {"PATH": "/opt/env/bin:/usr/bin", "JUPYTERHUB_API_TOKEN": SECRET, "X": "visible?"}
    argv = Slurm(submit_as=submit_as).submit_argv(slurm_user.name, slurm_user.home, env)
    for value in env.values():
        assert all(value not in arg for arg in argv)
    name, sbatch = slurm_user.name, ["/usr/bin/sbatch", "--parsable", f"--chdir={slurm_user.home}"]
    expected = {
        "runuser": ["-u", name, "--", *sbatch],
        "sudo": [
            "--non-interactive",
            "--preserve-env=JUPYTERHUB_API_TOKEN,PATH,X",
            f"--user={name}",
            "--",
            *sbatch,
        ],
        "su": [
            "--preserve-environment",
            "--shell=/bin/sh",
            f"--command=exec {' '.join(sbatch)}",
            name,
        ],
    }
    assert argv == [tool(submit_as), *expected[submit_as]]


def test_queue_follows_a_job_from_running_to_completed(jobs: Jobs) -> None:
    job_id = jobs.submit(WAIT_FOR_RELEASE)
    running = wait_for(lambda: jobs.state(job_id, "RUNNING"), 60, f"job {job_id} to run")
    assert running.partition == "debug"
    assert running.nodes
    assert running.reason is None
    assert running.position is None
    assert running.start_time is not None
    assert running.start_time <= datetime.now().astimezone()
    jobs.release(job_id)

    def finished() -> bool:
        info = jobs.info(job_id)
        return info is None or info.state == "COMPLETED"

    wait_for(finished, 60, f"job {job_id} to complete")


def test_pending_jobs_say_why_they_wait_where_they_are_and_when_they_start(jobs: Jobs) -> None:
    first = jobs.submit("true", "--begin=now+1hour")
    second = jobs.submit("true", "--begin=now+1hour")
    held = jobs.submit("true", "--hold")
    ids = [first, second, held, UNKNOWN_ID]

    def explained() -> dict[str, JobInfo] | None:
        found = asyncio.run(jobs.slurm.queue(ids))
        reasons = [found[j].reason if j in found else None for j in (first, second, held)]
        return found if reasons == ["BeginTime", "BeginTime", "JobHeldUser"] else None

    wait_for(explained, 30, "the scheduler to give the pending reasons")
    before = jobs.slurm.queries
    found = asyncio.run(jobs.slurm.queue(ids))
    assert jobs.slurm.queries == before + 1, "one squeue for any number of jobs"
    assert set(found) == {first, second, held}
    for info in found.values():
        assert (info.state, info.partition, info.nodes) == ("PENDING", "debug", None)
    expected = datetime.now().astimezone() + timedelta(hours=1)
    start = found[first].start_time
    assert start is not None
    assert abs(start - expected) < timedelta(minutes=2)
    positions = [found[j].position for j in (first, second, held)]
    assert all(isinstance(p, int) and p >= 1 for p in positions)
    assert positions == sorted(positions), "later jobs and held jobs (priority 0) come after"
    assert len(set(positions)) == 3


def test_queue_ignores_ids_it_no_longer_knows(jobs: Jobs) -> None:
    live = jobs.submit("true", "--hold")
    found = wait_for(lambda: asyncio.run(jobs.slurm.queue([UNKNOWN_ID, live])), 30, "squeue")
    assert list(found) == [live]
    assert found[live].state == "PENDING"
    assert asyncio.run(jobs.slurm.queue([UNKNOWN_ID])) == {}
    before = jobs.slurm.queries
    assert asyncio.run(jobs.slurm.queue([])) == {}
    assert jobs.slurm.queries == before, "no query for no jobs"


def test_a_cancelled_job_is_explained(jobs: Jobs) -> None:
    job_id = jobs.submit(WAIT_FOR_RELEASE)
    wait_for(lambda: jobs.state(job_id, "RUNNING"), 60, f"job {job_id} to run")
    asyncio.run(jobs.slurm.cancel(job_id))
    end = jobs.wait_ended(job_id)
    assert (end.state, end.reason) == ("CANCELLED", "it was cancelled by root")
    asyncio.run(jobs.slurm.cancel(job_id))  # again: not an error
    asyncio.run(jobs.slurm.cancel(UNKNOWN_ID))
    from_log = wait_for(lambda: reason_from_log(jobs.output(job_id)), 30, "slurmstepd's note")
    assert (from_log.state, from_log.reason) == ("CANCELLED", "it was cancelled")


def test_a_job_over_its_memory_is_explained(jobs: Jobs) -> None:
    job_id = jobs.submit(ALLOCATE_300M, "--mem=64M")
    end = jobs.wait_ended(job_id, timeout=90)
    assert (end.state, end.reason) == ("OUT_OF_MEMORY", "it ran out of memory (limit 64M)")
    log = jobs.output(job_id)
    assert "oom-kill event" in log
    from_log = reason_from_log(log)
    assert from_log is not None
    assert (from_log.state, from_log.reason) == ("OUT_OF_MEMORY", "it ran out of memory")


def test_a_failing_job_gives_its_exit_status(jobs: Jobs) -> None:
    job_id = jobs.submit("echo failing; exit 3")
    end = jobs.wait_ended(job_id)
    assert (end.state, end.reason, end.exit_code) == ("FAILED", "it exited with status 3", 3)
    assert reason_from_log(jobs.output(job_id)) is None


def test_a_refused_submission_says_why(jobs: Jobs) -> None:
    before = jobs.slurm.queries
    with pytest.raises(SlurmError) as caught:
        jobs.submit("true", "--partition=nope")
    message = str(caught.value)
    assert message.startswith(f"sbatch as {jobs.user.name} failed (exit code 1): ")
    assert "invalid partition specified: nope" in message
    assert jobs.slurm.queries == before + 1


def test_partitions_come_from_sinfo_and_are_cached(slurm_cluster: Cluster) -> None:
    slurm = Slurm()
    partitions = asyncio.run(slurm.partitions())
    debug, long = partitions["debug"], partitions["long"]
    assert (debug.max_time, debug.default_time, debug.default) == (3600, 1800, True)
    assert (long.max_time, long.default) == (86400, False)
    assert debug.state == "up"
    assert debug.nodes >= 1 and debug.cpus >= 1 and debug.memory_mb > 0
    assert asyncio.run(slurm.partitions()) == partitions
    assert slurm.queries == 1, "the second answer comes from the cache"


def test_user_accounts_come_from_accounting(slurm_user: User) -> None:
    slurm = Slurm()
    assert asyncio.run(slurm.user_accounts(slurm_user.name)) == ["research"]
    assert asyncio.run(slurm.user_accounts(slurm_user.name)) == ["research"]
    assert asyncio.run(slurm.user_accounts("ts-nobody")) == []
    assert slurm.queries == 2


def test_an_unreachable_controller_is_an_error_not_an_empty_queue(
    slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = slurm_cluster.conf_with(tmp_path, SlurmctldPort=str(closed_port()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(SlurmError, match=r"squeue failed .*Unable to contact slurm controller"):
        asyncio.run(Slurm().queue(["1", "2"]))


def test_a_command_that_hangs_is_stopped(
    slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = slurm_cluster.conf_with(tmp_path, SlurmctldPort=str(closed_port()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    slurm = Slurm(timeout=1)
    started = time.monotonic()
    with pytest.raises(SlurmError, match="sinfo did not answer within 1 s"):
        asyncio.run(slurm.partitions())
    assert time.monotonic() - started < 5
    assert processes_with(f"SLURM_CONF={conf}".encode()) == [], "killed, not left running"


def test_without_accounting_there_is_no_record_and_no_account(
    jobs: Jobs, slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = jobs.submit("true")
    jobs.wait_ended(job_id)
    conf = slurm_cluster.conf_with(tmp_path, AccountingStorageType="accounting_storage/none")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    slurm = Slurm()
    assert asyncio.run(slurm.ended(job_id)) is None
    assert asyncio.run(slurm.user_accounts(jobs.user.name)) == []


def test_an_unreachable_accounting_daemon_is_an_error(
    jobs: Jobs, slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = slurm_cluster.conf_with(tmp_path, AccountingStoragePort=str(closed_port()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    slurm = Slurm()
    with pytest.raises(SlurmError, match=r"(?s)sacct failed .*Connection refused"):
        asyncio.run(slurm.ended("1"))
    with pytest.raises(SlurmError, match=r"(?s)sacctmgr failed .*Connection refused"):
        asyncio.run(slurm.user_accounts(jobs.user.name))


def test_a_node_is_known_by_its_name_host_name_and_address(slurm_cluster: Cluster) -> None:
    sinfo = [tool("sinfo"), "--noheader", "--Node", "--format=%N"]
    node = subprocess.run(sinfo, capture_output=True, text=True, check=True).stdout.split()[0]
    names = asyncio.run(Slurm().node_names(node))
    assert node in names
    assert "127.0.0.1" in names, "the local cluster's nodes are at 127.0.0.1"
    assert asyncio.run(Slurm().node_names("no-such-node")) == set()


def test_a_job_over_its_time_limit_is_explained(overtime: tuple[Jobs, str]) -> None:
    jobs, job_id = overtime
    end = jobs.wait_ended(job_id, timeout=180)
    assert (end.state, end.reason) == ("TIMEOUT", "it reached its wall time limit (0:01:00)")
    from_log = wait_for(lambda: reason_from_log(jobs.output(job_id)), 30, "slurmstepd's note")
    assert (from_log.state, from_log.reason) == ("TIMEOUT", "it reached its wall time limit")
