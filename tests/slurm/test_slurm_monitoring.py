"""Monitoring on the local Slurm cluster: the queue wait of a real job in the metrics, and
the scheduler-unreachable alert when the hub's ``squeue`` cannot reach slurmctld.

Other people use the cluster at the same time, so the outage is the hub's alone: its
``backend.slurm.bin_dir`` holds the real Slurm commands, its ``squeue`` through a wrapper
that, while the test says so, points the real ``squeue`` at a copy of slurm.conf whose
controller port nobody listens on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alertsink import Received, scrape, value, webhook_receiver
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, free_port_block, new_test_root, running_hub, wait_for

from slurm.conftest import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

REPO = Path(__file__).resolve().parents[2]
SLURM_COMMANDS = ("sbatch", "scancel", "sacct", "sinfo", "sacctmgr", "scontrol")


def slurm_bin(folder: Path, cluster: Cluster) -> Path:
    """Real Slurm commands, ``squeue`` unreachable while ``<folder>/outage`` exists."""
    folder.mkdir(mode=0o755)
    for name in SLURM_COMMANDS:
        (folder / name).symlink_to(f"/usr/bin/{name}")
    unreachable = cluster.conf_with(folder, SlurmctldPort=str(free_port_block(1)))
    wrapper = folder / "squeue"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ -e {folder}/outage ] && export SLURM_CONF="{unreachable}"\n'
        'exec /usr/bin/squeue "$@"\n'
    )
    wrapper.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def setup(slurm_cluster: Cluster) -> Iterator[tuple[Hub, Received, Path]]:
    received = Received()
    webhook = webhook_receiver(received)
    bin_dir = slurm_bin(new_test_root() / "bin", slurm_cluster)
    overrides: dict[str, Any] = {
        "backend": {
            "type": "slurm",
            "slurm": {
                "bin_dir": str(bin_dir),
                "poll_interval": "1s",
                "pending_poll_interval": "1s",
                "unknown_grace": "3s",
            },
        },
        "machines": [{"id": "small", "display": "Small", "cpu": 1, "memory": "1G"}],
        "environments": [{"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)}],
        "alerts": {
            "webhook": {"url": f"http://127.0.0.1:{webhook.server_port}/"},
            "check_interval": "1s",
        },
    }
    try:
        with running_hub(overrides) as hub:
            yield hub, received, bin_dir
    finally:
        webhook.shutdown()
        subprocess.run(["rm", "-rf", str(bin_dir.parent)], check=False)


def test_queue_wait_and_an_unreachable_scheduler(setup: tuple[Hub, Received, Path]) -> None:
    hub, received, bin_dir = setup
    subprocess.run(
        [str(REPO / "scripts/slurm-cluster.sh"), "add-user", hub.prefix + "mon-cy", "research"],
        check=True,
        capture_output=True,
    )
    user = hub.new_user("mon-cy")
    admin = hub.login("admin", hub.admin_password)
    assert user.start(options={"machine": "small"}).status_code in (201, 202)
    user.wait_ready(timeout=300)
    waits = scrape(admin)["hubstack_slurm_queue_wait_seconds"]
    assert value(waits, "hubstack_slurm_queue_wait_seconds_count") == 1
    started = scrape(admin)["hubstack_spawn_duration_seconds"]
    assert value(started, "hubstack_spawn_duration_seconds_count", backend="slurm") == 1
    status = hub.cli("status")
    assert status.returncode == 0, status.stderr
    assert "Slurm jobs of the hub's servers: 1" in status.stdout
    job = next(
        line for line in status.stdout.splitlines() if "mon-cy" in line and "RUNNING" in line
    )
    assert job.split()[1:4] == ["mon-cy", "(default)", "RUNNING"]

    (bin_dir / "outage").touch()
    try:
        wait_for(lambda: received.alerts("scheduler-unreachable"), 60, "the scheduler alert")
        [alert] = received.alerts("scheduler-unreachable")
        assert "has not answered squeue" in alert["summary"]
        assert "scontrol ping" in alert["action"]
        assert user.model()["ready"], "the server is kept while the scheduler is unreachable"
    finally:
        os.unlink(bin_dir / "outage")
    wait_for(lambda: received.alerts("scheduler-unreachable", "resolved"), 60, "the alert to clear")
    assert len(received.alerts("scheduler-unreachable")) == 1
    user.stop()
