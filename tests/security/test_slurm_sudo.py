"""A hub that is not root submits each job as its user through sudo, and never as itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hubtest import DEFAULT_ENV
from slurm.conftest import (
    User,
    hub_account,
    non_root_hub_account,
    slurm_cluster,
    slurm_user,
)
from system.conftest import RunAs

pytestmark = pytest.mark.slurm

__all__ = ["hub_account", "slurm_cluster", "slurm_user"]  # fixtures, used by name

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv/bin/python"

# Runs as the hub's account: one start of a PAM user's server, up to the recorded submission.
START = r"""
import asyncio, json, os, sys
from hubstack.backends.base import ServerSpec, StartFailed
from hubstack.backends.slurm import SlurmBackend
from hubstack.config.load import validate
from hubstack.launch.profiles import resolve

user, home_base, prefix = sys.argv[1:]
config = validate({
    "auth": {"type": "pam"},
    "backend": {
        "type": "slurm",
        "slurm": {"submit_as": "sudo", "shared": {"home_base": home_base}},
    },
    "environments": [{"id": "python", "display": "Python", "prefix": prefix}],
})

async def main():
    backend = SlurmBackend(config)
    env = {"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"}
    spec = ServerSpec(user, "", resolve(config, {}), env, 0)
    recorded = asyncio.get_running_loop().create_future()
    start = asyncio.ensure_future(backend.start(spec, lambda m: None, recorded.set_result))
    await asyncio.wait({start, recorded}, return_when=asyncio.FIRST_COMPLETED)
    if recorded.done():
        print(json.dumps({"job": recorded.result()["job_id"]}))
    else:
        try:
            start.result()
        except StartFailed as exc:
            print(json.dumps({"failed": exc.message}))
    sys.stdout.flush()
    os._exit(0)

asyncio.run(main())
"""


def start_as(hub: str, user: User) -> dict[str, Any]:
    """What one start does when the hub runs as the account ``hub``."""
    as_hub = ["/usr/bin/setpriv", f"--reuid={hub}", f"--regid={hub}", "--init-groups"]
    # The checkout (and its .venv) may lie in a folder only root can enter, e.g. a fresh
    # clone in a 0700 temporary folder: the account may read it, and gains nothing else
    # (it writes nothing more, and sudo and the job drop the capability).
    as_hub += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    argv = [*as_hub, str(PYTHON), "-c", START, user.name, str(user.home.parent), str(DEFAULT_ENV)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", check=False)
    assert done.returncode == 0 and done.stdout, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def jobs_of(account: str) -> list[str]:
    squeue = ["/usr/bin/squeue", "-h", "--states=all", f"--user={account}", "--format=%i"]
    return subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.split()


def job_uid(job: str) -> int:
    squeue = ["/usr/bin/squeue", "-h", "--states=all", f"--jobs={job}", "--format=%U"]
    return int(subprocess.run(squeue, capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def jobs_dir(slurm_user: User, run_as: RunAs) -> None:
    """``~/.hubstack/jobs``, which the site provides when the hub is not root."""
    code = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True)"
    made = run_as(slurm_user.uid, slurm_user.gid, code, str(slurm_user.home / ".hubstack/jobs"))
    assert made.returncode == 0, made.stderr


@pytest.mark.usefixtures("jobs_dir")
def test_the_job_of_a_hub_that_is_not_root_runs_as_its_user(
    slurm_user: User, hub_account: str
) -> None:
    outcome = start_as(hub_account, slurm_user)
    assert "job" in outcome, outcome
    try:
        assert job_uid(outcome["job"]) == slurm_user.uid
        assert jobs_of(hub_account) == []
    finally:
        subprocess.run(["/usr/bin/scancel", outcome["job"]], check=False)


@pytest.mark.usefixtures("jobs_dir")
def test_when_sudo_refuses_the_start_fails_with_its_words(slurm_user: User) -> None:
    before = jobs_of(slurm_user.name)
    with non_root_hub_account(None) as hub:
        outcome = start_as(hub, slurm_user)
        assert jobs_of(hub) == []
    assert jobs_of(slurm_user.name) == before
    assert "failed" in outcome, outcome
    assert "sudo" in outcome["failed"] and "password is required" in outcome["failed"]
