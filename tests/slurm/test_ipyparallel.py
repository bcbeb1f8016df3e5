"""Parallel work from a notebook: ipyparallel engines run as Slurm jobs of the notebook's user.

A fresh Unix account runs the default environment's python with what a notebook would do: a
plain ``ipp.Cluster(n=2)`` (the environment's site config makes Slurm the default where
sbatch exists), a computation on the engines, and a stop. Slurm's own records then show
that the engines were that account's jobs, with the settings the site config promises.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hubtest import DEFAULT_ENV, wait_for

from .conftest import Cluster, User, new_slurm_user, queued_jobs

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not (DEFAULT_ENV / "bin/python").exists(),
        reason="run scripts/setup.sh first: the default environment is missing",
    ),
]

# What a notebook cell does; prints one JSON line for the test to check.
NOTEBOOK = """
import json
import ipyparallel as ipp

def where():
    import os, pwd, socket
    return {
        "host": socket.gethostname(),
        "job": os.environ.get("SLURM_JOB_ID"),
        "user": pwd.getpwuid(os.getuid()).pw_name,
    }

with ipp.Cluster(n=2) as client:  # leaving the block stops the engines and the controller
    view = client[:]
    total = sum(view.map_sync(lambda x: x * x, range(10)))
    engines = view.apply_sync(where)
    launcher = type(client.cluster.engine_set).__name__
print(json.dumps({"total": total, "engines": engines, "launcher": launcher}))
"""


@pytest.fixture(scope="module")
def slurm_user(slurm_cluster: Cluster) -> Iterator[User]:
    """A fresh account in the Slurm accounts research (its default) and teaching."""
    with new_slurm_user("research", "teaching") as user:
        yield user


def accounting(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sacct's records of these jobs by raw job id, once all of them have a final state."""
    fields = ["JobIDRaw", "User", "Partition", "Account", "Timelimit", "ReqMem", "State"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    records = {row["JobIDRaw"]: row for row in rows}
    wanted = {job: records.get(job) for job in job_ids}
    if all(r and not r["State"].startswith(("PENDING", "RUNNING")) for r in wanted.values()):
        return {job: r for job, r in wanted.items() if r}
    return {}


def test_notebook_runs_engines_as_its_users_slurm_jobs(slurm_user: User) -> None:
    """A plain ipp.Cluster from the default environment computes on Slurm jobs, then ends them."""
    user = slurm_user
    script = user.home / "notebook.py"
    script.write_text(NOTEBOOK)
    script.chmod(0o644)
    env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": f"{DEFAULT_ENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        # As inside a notebook that runs in a Slurm job: its engines inherit these two.
        "SLURM_JOB_PARTITION": "long",
        "SLURM_JOB_ACCOUNT": "teaching",
        # Small engine jobs, through sbatch's own override of the #SBATCH defaults.
        "SBATCH_MEM_PER_NODE": "300M",
    }
    run = subprocess.run(
        [str(DEFAULT_ENV / "bin/python"), str(script)],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        env=env,
        cwd=user.home,
        capture_output=True,
        text=True,
        timeout=420,  # the site config waits up to 300 s for queued engines
        check=False,
    )
    assert run.returncode == 0, f"notebook failed:\n{run.stdout}\n{run.stderr}"
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["total"] == sum(x * x for x in range(10))
    assert result["launcher"] == "SlurmEngineSetLauncher"
    engines = result["engines"]
    assert len(engines) == 2
    assert all(e["host"] and e["job"] and e["user"] == user.name for e in engines), engines
    job_ids = sorted({e["job"] for e in engines})
    assert len(job_ids) == 2, f"one single-CPU job per engine expected: {engines}"

    # Stopping the cluster cancels the engines' jobs: none of the user's is left.
    wait_for(lambda: not queued_jobs(user.name), 60, f"{user.name}'s jobs to leave the queue")
    records = wait_for(lambda: accounting(job_ids), 60, f"sacct's records of jobs {job_ids}")
    for job in job_ids:
        assert records[job]["User"] == user.name
        assert records[job]["Partition"] == "long"
        assert records[job]["Account"] == "teaching"
        assert records[job]["Timelimit"] == "01:00:00"
        assert records[job]["ReqMem"] == "300M"
        assert records[job]["State"].startswith("CANCELLED"), records[job]
