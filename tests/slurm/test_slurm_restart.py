"""Slurm jobs outlive the hub: after ``kill -9`` and after ``SIGTERM`` the restarted hub
takes every running job's server back, with its kernel, and submits nothing twice."""

from __future__ import annotations

import asyncio
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import (
    kill_hub,
    one_of_each,
    single_user_servers,
    start_kernels,
    terminate_hub,
    wait_kernels_answer,
)
from hubtest import Hub, running_hub, wait_for

from hubstack.slurm.client import AccountedJob, Slurm, is_active
from hubstack.system import tool
from hubstack.usage.ledger import Ledger, SessionRow
from slurm.conftest import cluster_script, queued_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

SERVERS = ("", "one", "two")


@pytest.fixture(scope="module")
def shared_partition(slurm_cluster: Any) -> Iterator[str]:
    """A partition whose jobs share the node's cores (up to 4 a core), so that three servers
    run at once on the test cluster's one node.

    Made for this module only and deleted after it: a standing oversubscribed partition
    slows slurmctld's scheduling of every other partition's jobs (the benchmarks').
    """
    name = f"hs-shared-{secrets.token_hex(3)}"
    settings = ["Nodes=ALL", "MaxTime=01:00:00", "OverSubscribe=FORCE:4", "State=UP"]
    scontrol = tool("scontrol")
    subprocess.run([scontrol, "create", f"PartitionName={name}", *settings], check=True)
    try:
        yield name
    finally:
        subprocess.run([scontrol, "delete", f"PartitionName={name}"], check=True)


@pytest.fixture(scope="module")
def hub(shared_partition: str) -> Iterator[Hub]:
    fields = {"partition": {"choices": [shared_partition]}}
    slurm = {"poll_interval": "3s", "pending_poll_interval": "1s", "fields": fields}
    overrides = {
        "backend": {"type": "slurm", "slurm": slurm},
        "extra_jupyterhub_config": {"HubstackSpawner": {"poll_interval": 2}},
    }
    with running_hub(overrides) as running:
        yield running
        account = running.prefix + "erin"
        subprocess.run([tool("scancel"), f"--user={account}"], check=False, capture_output=True)
        wait_for(lambda: not queued_jobs(account), 60, f"{account}'s jobs to leave the queue")
        subprocess.run([tool("sacctmgr"), "-i", "delete", "user", account], capture_output=True)


def test_jobs_and_kernels_survive_kill_and_stop_of_the_hub(hub: Hub) -> None:
    account = hub.prefix + "erin"
    cluster_script("add-user", account, "research")
    erin = hub.new_user("erin")
    kernels = start_kernels([(erin, name, {}) for name in SERVERS], timeout=180)
    uid = pwd.getpwnam(account).pw_uid
    jobs = sorted(queued_jobs(account))
    processes = single_user_servers({uid})
    assert len(jobs) == len(SERVERS) == len(processes[uid]), (jobs, processes)
    wait_for(lambda: one_of_each(hub), 60, "the hub's proxy and services")

    for stop in (kill_hub, terminate_hub):
        stop(hub)
        assert sorted(queued_jobs(account)) == jobs, "the jobs outlive the hub"
        hub.start()
        wait_for(lambda: one_of_each(hub), 60, f"one proxy and each service after {stop.__name__}")
        wait_kernels_answer(kernels)
        assert sorted(queued_jobs(account)) == jobs, "no job was submitted twice"
        assert single_user_servers({uid}) == processes

    # A job that ends while the hub is down: its session is charged up to the job's end
    # in Slurm's accounting, not up to when the restarted hub finds it gone.
    kill_hub(hub)
    (gone,) = [row for row in erins_sessions(hub) if row.server == "two"]
    assert gone.job_id is not None and gone.stopped is None
    subprocess.run([tool("scancel"), gone.job_id], check=True)
    job = wait_for(lambda: ended_job(gone.job_id), 60, "sacct's record of the cancelled job")
    hub.start()
    row = wait_for(
        lambda: next(r for r in erins_sessions(hub) if r.id == gone.id and r.stopped), 90, "its end"
    )
    assert row.stopped == job.end
    assert row.cpu_seconds is not None and row.peak_memory is not None  # from sacct too

    for kernel in kernels:
        if kernel.server != "two":
            assert (erin.model(kernel.server) or {}).get("ready")
            erin.stop(kernel.server)
    wait_for(lambda: not queued_jobs(account), 60, "the stopped servers' jobs to end")
    # The ledger agrees with accounting (the ledger's start is when the server answered,
    # later than the job's start by the server's own start on a busy machine).
    reconciled = hub.cli("usage", "--reconcile", "--user=erin", "--tolerance=3m", "--since=1d")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "3 Slurm session(s), ledger and accounting agree" in reconciled.stdout


def erins_sessions(hub: Hub) -> list[SessionRow]:
    ledger = Ledger(f"sqlite:///{hub.data_dir / 'usage.sqlite'}")
    try:
        return ledger.sessions(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC), ["erin"])
    finally:
        ledger.engine.dispose()


def ended_job(job_id: str) -> AccountedJob | None:
    job = (asyncio.run(Slurm().accounted([job_id])) or {}).get(job_id)
    return job if job is not None and job.end is not None and not is_active(job.state) else None
