"""Slurm choices by group on the local cluster: a partition for a group is offered to and
submitted for its members only, from the membership the hub has at each start."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, Session, running_hub, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

REPO = Path(__file__).resolve().parents[2]
GROUP = "lab-a"
USER = "gacc-sue"
REFUSAL = "The partition 'long' is for groups: lab-a, and you are in none of them."
OVERRIDES: dict[str, Any] = {
    "backend": {
        "type": "slurm",
        "slurm": {
            "poll_interval": "3s",
            "pending_poll_interval": "1s",
            "fields": {
                "partition": {
                    "choices": ["long", "debug"],
                    "default": "long",
                    "groups": {"long": [GROUP]},
                },
                "account": {"choices": ["research", "teaching"], "groups": {"teaching": ["t"]}},
                "walltime": {"default": "10m", "min": "1m", "max": "1h"},
                "cores": None,
                "memory": None,
            },
        },
    },
    "machines": [{"id": "small", "display": "Small", "cpu": 1, "memory": "512M"}],
    "environments": [{"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)}],
}


@pytest.fixture(scope="module")
def hub(slurm_cluster: Any) -> Iterator[Hub]:
    with running_hub(OVERRIDES) as running:
        yield running
        account = running.prefix + USER
        subprocess.run(["scancel", f"--user={account}"], check=False, capture_output=True)
        subprocess.run(["sacctmgr", "-i", "delete", "user", account], capture_output=True)


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    session = hub.login("admin", hub.admin_password)
    assert session.api("POST", f"/groups/{GROUP}").status_code == 201
    return session


@pytest.fixture(scope="module")
def sue(hub: Hub) -> Session:
    """Sue may charge the Slurm account research."""
    subprocess.run(
        [str(REPO / "scripts/slurm-cluster.sh"), "add-user", hub.prefix + USER, "research"],
        check=True,
        capture_output=True,
    )
    return hub.new_user(USER)


def jobs_of(account: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-u", account, "-t", "PD,R,CG", "-o", "%i %P"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def offered(hub: Hub, session: Session, field: str) -> list[str]:
    page = session.http.get(f"{hub.url}/hub/spawn/{session.name}", timeout=60)
    assert page.status_code == 200, page.text[-2000:]
    select = re.search(rf'<select[^>]*name="{field}".*?</select>', page.text, re.S)
    assert select, page.text[-3000:]
    return re.findall(r'<option value="([^"]*)"', select.group(0))


def set_member(admin: Session, user: str, member: bool) -> None:
    method = "POST" if member else "DELETE"
    resp = admin.api(method, f"/groups/{GROUP}/users", json={"users": [user]})
    assert resp.status_code == 200, resp.text


def test_a_group_partition_is_submitted_for_members_only(
    hub: Hub, admin: Session, sue: Session
) -> None:
    account = hub.prefix + USER
    assert offered(hub, sue, "partition") == ["debug"]
    assert offered(hub, sue, "account") == ["research"]
    resp = sue.start("job", {"partition": "long"})
    assert resp.status_code == 400 and REFUSAL in resp.json()["message"], resp.text
    assert jobs_of(account) == []

    set_member(admin, USER, True)
    assert offered(hub, sue, "partition") == ["long", "debug"]
    resp = sue.start("job", {})  # the configured default, now open to her
    assert resp.status_code in (201, 202), resp.text
    sue.wait_ready("job", timeout=180)
    assert [line.split()[1] for line in jobs_of(account)] == ["long"]
    sue.stop("job")
    wait_for(lambda: not jobs_of(account), 60, "the stopped server's job to leave the queue")

    set_member(admin, USER, False)
    resp = sue.api("POST", sue.server_path("job"))  # again, with its saved options
    assert resp.status_code == 400 and REFUSAL in resp.json()["message"], resp.text
    assert jobs_of(account) == []
