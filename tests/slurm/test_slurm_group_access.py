"""Slurm choices by group on the local cluster: a partition for a group is offered to and
submitted for its members only, from the membership the hub has at each start."""

from __future__ import annotations

import copy
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import DEFAULT_ENV, Hub, Session, running_hub, wait_for

from hubstack.system import tool
from slurm.conftest import job_state

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
    with running_hub(copy.deepcopy(OVERRIDES)) as running:
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


@pytest.fixture
def held_partition(slurm_cluster: Any) -> Iterator[str]:
    """A partition that queues jobs but starts none (State=DOWN), for this test alone: a
    start stays under way however busy the cluster's node is."""
    name = f"hs-held-{secrets.token_hex(3)}"
    scontrol = tool("scontrol")
    subprocess.run(
        [scontrol, "create", f"PartitionName={name}", "Nodes=ALL", "State=DOWN"], check=True
    )
    try:
        yield name
    finally:
        subprocess.run([scontrol, "delete", f"PartitionName={name}"], check=False)


def restart_with(hub: Hub, members: list[str], partition: str, stop: Callable[[Hub], None]) -> None:
    """Restart the hub with ``members`` in the group and its partition for the group only."""
    fields = hub.overrides["backend"]["slurm"]["fields"]
    fields["partition"] = {"choices": [partition], "groups": {partition: [GROUP]}}
    hub.overrides["groups"] = {GROUP: {"members": members}}
    stop(hub)
    hub.write_config()
    hub.start()


def test_a_queued_start_is_ended_when_its_owner_left_the_group_during_a_restart(
    hub: Hub, sue: Session, held_partition: str
) -> None:
    """The restarted hub cannot take back a start the owner may no longer make: it ends the
    job instead of leaving it queued for the owner's next start to take back unasked."""
    account = hub.prefix + USER
    restart_with(hub, [USER], held_partition, Hub.stop)
    resp = sue.start("queued", {"partition": held_partition})
    assert resp.status_code in (201, 202), resp.text
    wait_for(lambda: jobs_of(account), 60, "the job in the queue")
    [job] = jobs_of(account)
    assert job.split()[1] == held_partition and job_state(job.split()[0]) == "PENDING"

    restart_with(hub, [], held_partition, kill_hub)
    wait_for(lambda: not jobs_of(account), 90, "the job of the refused start to end")
    model = sue.model("queued", include_stopped=True) or {}
    assert not model.get("ready") and not model.get("pending"), model
    home = sue.http.get(f"{hub.url}/hub/home", timeout=60).text.replace("&#39;", "'")
    assert "could not be started again after a hub restart" in home, home[-3000:]
    [notice] = re.findall(r"hub restart: ([^<]*)", home)
    assert f"{held_partition} is for groups: {GROUP}" in notice, notice
