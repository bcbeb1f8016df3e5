"""Shared folders on the local Slurm cluster: a job finds its groups' folders at ~/shared,
written by the champion's job and only read by the member's, by Unix permissions alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, Session, new_test_root, running_hub

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"partition": "debug", "walltime": "20m", "cores": 1, "memory": "512M"}
PROBE = """
import json, os
home = os.path.expanduser("~")
def attempt(f):
    try:
        return {"ok": f()}
    except OSError as exc:
        return {"errno": exc.errno}
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return True
print(json.dumps({
    "link": os.readlink(home + "/shared/sfl"),
    "write": attempt(lambda: write(home + "/shared/sfl/from-job.txt", os.environ["SLURM_JOB_ID"])),
    "read": attempt(lambda: open(home + "/shared/sfl/from-job.txt").read()),
}))
"""


@pytest.fixture(scope="module")
def groups_base() -> Iterator[Path]:
    """Where the hub mounts the folders: the local cluster's node is this machine, so a
    path of it is one every node sees."""
    root = new_test_root()
    try:
        yield root / "groups"
    finally:
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            if line.split()[1].startswith(f"{root}/"):
                subprocess.run(["umount", line.split()[1]], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(slurm_cluster: Any, groups_base: Path) -> Iterator[Hub]:
    overrides = {
        "backend": {
            "type": "slurm",
            "slurm": {
                "poll_interval": "3s",
                "pending_poll_interval": "1s",
                "fields": {"partition": {"choices": ["debug"]}, "memory": {"min": "64M"}},
                "shared": {"groups": str(groups_base)},
            },
        },
        "groups": {"sfl": {"shared": {"quota": "16M"}}},
        "machines": [{"id": "small", "display": "Small", "cpu": 1, "memory": "512M"}],
        "environments": [{"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)}],
    }
    with running_hub(overrides) as running:
        yield running
        for name in ("sfc", "sfm"):
            account = running.prefix + name
            subprocess.run(["scancel", "-u", account], check=False)
            subprocess.run(["sacctmgr", "-i", "delete", "user", account], capture_output=True)


def person(hub: Hub, name: str, groups: list[str]) -> Session:
    subprocess.run(
        [str(REPO / "scripts/slurm-cluster.sh"), "add-user", hub.prefix + name, "research"],
        check=True,
        capture_output=True,
    )
    session = hub.new_user(name)
    admin = hub.login("admin", hub.admin_password)
    for group in groups:
        assert admin.api("POST", f"/groups/{group}").status_code in (201, 409)
        added = admin.api("POST", f"/groups/{group}/users", json={"users": [name]})
        assert added.status_code == 200, added.text
    return session


def probe(session: Session) -> dict[str, Any]:
    assert session.start("", OPTIONS).status_code in (201, 202)
    session.wait_ready(timeout=180)
    run = session.run_code(PROBE)
    assert run.status == "ok", run.error
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_the_champions_job_writes_the_members_job_reads(hub: Hub, groups_base: Path) -> None:
    folder = str(groups_base / "sfl")
    champion = probe(person(hub, "sfc", ["sfl-champions"]))
    assert champion["link"] == folder
    assert champion["write"] == {"ok": True}
    member = probe(person(hub, "sfm", ["sfl"]))
    assert member["link"] == folder
    assert member["write"] == {"errno": 13}, "a member's job cannot write"
    assert member["read"]["ok"].isdigit(), "it reads what the champion's job wrote"
