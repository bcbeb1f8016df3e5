"""Monitoring and alerting on a real hub: hubstack's metrics at JupyterHub's /hub/metrics,
alerts to a webhook and to an SMTP server the test runs, a full disk made with a small
loop-mounted file system, a proxy killed under the hub, and ``hubstack status``."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from alertsink import MailHandler, Received, scrape, value, webhook_receiver
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import DEFAULT_ENV, Hub, Session, free_port_block, new_test_root, wait_for

from hubstack.system import volumes

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

WEBHOOK_TOKEN = "webhook-secret-for-tests"
DISK_SIZE = 16 * 1024 * 1024


@dataclass
class Setup:
    hub: Hub
    received: Received
    disk: Path
    admin: Session


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    received = Received()
    webhook = webhook_receiver(received)
    smtp = Controller(MailHandler(received), hostname="127.0.0.1", port=free_port_block(1))
    smtp.start()
    root = new_test_root()
    disk = root / "disk"
    image = root / "disk.img"
    volumes.create_image(image, DISK_SIZE, 0, 0)
    disk.mkdir()
    volumes.mount(image, disk, 0, 0, mode=0o755)
    token_file = root / "webhook-token"
    token_file.write_text(WEBHOOK_TOKEN + "\n")
    token_file.chmod(0o600)
    overrides = {
        "environments": [
            {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
            # No Jupyter in it: every start fails.
            {"id": "broken", "display": "Broken", "prefix": "/usr"},
        ],
        "alerts": {
            "webhook": {
                "url": f"http://127.0.0.1:{webhook.server_port}/alerts",
                "token": {"file": str(token_file)},
            },
            "email": {
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "tls": "none",
                "from": "hub@example.org",
                "to": ["ops@example.org"],
            },
            "check_interval": "1s",
            "disks": [str(disk)],
            "spawn_failure_min": 1,
            "spawn_failure_rate": 0.3,
        },
    }
    hub = Hub(root, overrides)
    try:
        hub.start()
        yield Setup(hub, received, disk, hub.login("admin", hub.admin_password))
    finally:
        hub.cleanup()
        smtp.stop()
        webhook.shutdown()


def checks(admin: Session) -> float:
    return value(scrape(admin)["hubstack_monitor_checks"], "hubstack_monitor_checks_total") or 0


def after_checks(admin: Session, rounds: int) -> None:
    """Return once the monitor has completed ``rounds`` more checks."""
    start = checks(admin)
    wait_for(lambda: checks(admin) >= start + rounds, 60, f"{rounds} more monitor checks")


def test_metrics_after_a_spawn(setup: Setup) -> None:
    user = setup.hub.new_user("mon-ann")
    assert user.start(options={"machine": "small", "environment": "python"}).status_code in (
        201,
        202,
    )
    user.wait_ready()
    metrics = scrape(setup.admin)
    # JupyterHub's own metrics are there too: one registry, one endpoint.
    assert "jupyterhub_running_servers" in metrics
    spawns = metrics["hubstack_spawn_duration_seconds"]
    ok = value(spawns, "hubstack_spawn_duration_seconds_count", backend="local", outcome="success")
    assert ok == 1
    running = metrics["hubstack_servers_running"]
    assert value(running, "hubstack_servers_running", machine="small", group="") == 1
    storage = metrics["hubstack_storage_size_bytes"]
    assert value(storage, "hubstack_storage_size_bytes", disk="extra", path=str(setup.disk))
    assert value(storage, "hubstack_storage_size_bytes", disk="data_dir")
    assert "hubstack_build_duration_seconds" in metrics
    assert "hubstack_environment_lookups" in metrics
    assert "hubstack_slurm_queue_wait_seconds" in metrics

    status = setup.hub.cli("status")
    assert status.returncode == 0, status.stderr
    assert "Servers on the local backend: 1" in status.stdout
    row = next(line for line in status.stdout.splitlines() if "mon-ann" in line)
    assert row.split()[:5] == ["mon-ann", "(default)", "small", "python", "ready"]
    assert f"{setup.disk}" in status.stdout


def test_failed_starts_alert_once(setup: Setup) -> None:
    user = setup.hub.new_user("mon-bea")
    user.start(options={"machine": "small", "environment": "broken"})
    events = user.progress()
    assert events[-1].get("failed"), events
    wait_for(lambda: setup.received.alerts("spawn-failures"), 60, "the spawn-failures alert")
    after_checks(setup.admin, 3)
    [alert] = setup.received.alerts("spawn-failures")
    assert "server starts failed" in alert["summary"]
    assert "hubstack status" in alert["action"]
    assert set(setup.received.authorizations) == {f"Bearer {WEBHOOK_TOKEN}"}
    failures = scrape(setup.admin)["hubstack_spawn_duration_seconds"]
    assert value(failures, "hubstack_spawn_duration_seconds_count", outcome="failure") == 1

    status = setup.hub.cli("status")
    assert "mon-bea/(default): " in status.stdout
    assert alert["summary"] in status.stdout


def fill(disk: Path, percent: float) -> None:
    """Write a file making ``disk`` ``percent`` full, as df counts."""
    st = os.statvfs(disk)
    size = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    with (disk / "filler").open("wb") as out:
        out.write(b"x" * int(size * percent / 100 - used))
        out.flush()
        os.fsync(out.fileno())


def test_a_full_disk_alerts_once_by_webhook_and_mail_across_a_restart(setup: Setup) -> None:
    key = f"disk-full:{setup.disk}"
    fill(setup.disk, 95)
    wait_for(lambda: setup.received.alerts(key), 60, "the disk-full alert")
    alert = setup.received.alerts(key)[0]
    assert "% full" in alert["summary"] and "hubstack env prune" in alert["action"]
    mail = wait_for(
        lambda: [m for m in setup.received.mails if str(setup.disk) in m], 30, "the alert mail"
    )[0]
    assert "Subject: [hubstack] FIRING: The file system of" in mail
    assert "To: ops@example.org" in mail and "What to do: Free space on" in mail

    # The incident outlives a crash of the hub: no second alert after kill -9 and a start.
    kill_hub(setup.hub)
    setup.hub.start()
    setup.admin = setup.hub.login("admin", setup.hub.admin_password)
    after_checks(setup.admin, 3)
    assert len(setup.received.alerts(key)) == 1
    firing = scrape(setup.admin)["hubstack_alert_firing"]
    assert value(firing, "hubstack_alert_firing", alert="disk-full") == 1

    (setup.disk / "filler").unlink()
    wait_for(lambda: setup.received.alerts(key, "resolved"), 60, "the disk-full alert to clear")
    fill(setup.disk, 95)
    wait_for(lambda: len(setup.received.alerts(key)) == 2, 60, "a second incident's alert")


def test_a_proxy_restarted_by_the_hub_alerts(setup: Setup) -> None:
    pid = int((setup.hub.data_dir / "proxy.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: setup.received.alerts("proxy-restarted"), 60, "the proxy-restarted alert")
    restarts = scrape(setup.admin)["hubstack_proxy_restarts"]
    assert value(restarts, "hubstack_proxy_restarts_total") == 1


def test_status_says_when_the_hub_is_not_running(setup: Setup) -> None:
    setup.hub.stop()
    status = setup.hub.cli("status")
    assert status.returncode == 1
    assert "cannot reach the hub" in status.stderr
    assert "is `hubstack up` running?" in status.stderr
