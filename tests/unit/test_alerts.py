"""Alerts without a hub: their config keys, what each condition says, and once per incident
(through a fake notifier that records instead of sending)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from hubstack.config import Config, ConfigError, dump
from hubstack.config.load import validate
from hubstack.config.safety import alert_warnings
from hubstack.config.secrets import unreadable_secrets
from hubstack.hub import metrics
from hubstack.hub.alerts import Alert, Incidents, Notifier, read_firing
from hubstack.hub.monitor import Disk, Monitor

EMAIL = {"smtp_host": "smtp.example.org", "from": "hub@example.org", "to": ["ops@example.org"]}


@pytest.mark.parametrize(
    ("alerts", "key", "fragment"),
    [
        ({"email": {**EMAIL, "from": "hub@x.org\nBcc: a@b.c"}}, "alerts.email.from", "match"),
        ({"email": {**EMAIL, "to": []}}, "alerts.email.to", "at least 1"),
        ({"email": {**EMAIL, "username": "hub"}}, "alerts.email.password", "both username"),
        ({"email": {**EMAIL, "tls": "maybe"}}, "alerts.email.tls", "'starttls', 'ssl'"),
        ({"webhook": {"url": "ftp://x"}}, "alerts.webhook.url", "http"),
        ({"disk_percent": 120}, "alerts.disk_percent", "100"),
        ({"disks": ["relative/path"]}, "alerts.disks[0]", "absolute"),
        ({"check_interval": "often"}, "alerts.check_interval", "duration"),
    ],
)
def test_bad_alert_keys_are_named(alerts: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"alerts": alerts}, "test.yaml")
    problems = [p for p in info.value.problems if p.startswith(f"{key}: ")]
    assert problems, info.value.problems
    assert fragment in problems[0]


def test_secrets_of_alerts_are_checked_and_never_in_the_config(tmp_path: Path) -> None:
    config = validate(
        {
            "alerts": {
                "webhook": {"url": "https://chat.example.org/hook", "token": {"env": "NO_SUCH"}},
                "email": {**EMAIL, "username": "hub", "password": {"file": str(tmp_path / "pw")}},
            }
        }
    )
    problems = unreadable_secrets(config)
    assert any(p.startswith("alerts.webhook.token: environment variable NO_SUCH") for p in problems)
    assert any(p.startswith("alerts.email.password: cannot read") for p in problems)
    # The JSON copy handed to the spawner and services reads back the same, from and all;
    # `hubstack check` shows the key as it is written.
    assert Config.model_validate_json(config.model_dump_json()) == config
    assert "    from: hub@example.org\n" in dump(config)


class FakeNotifier(Notifier):
    """Records what would be sent; ``working`` False: every channel fails."""

    def __init__(self) -> None:
        super().__init__(validate({}).alerts, "http://hub.example.org/")
        self.sent: list[tuple[str, str]] = []
        self.working = True

    async def send(self, alert: Alert, state: Any) -> bool:
        if self.working:
            self.sent.append((state, alert.key))
        return self.working


def test_each_incident_fires_once_and_again_only_after_it_cleared(tmp_path: Path) -> None:
    notifier = FakeNotifier()
    incidents = Incidents(notifier, tmp_path / "alerts.json")
    full = Alert("disk-full", "disk-full:/srv", "full", "free space")

    async def rounds() -> None:
        notifier.working = False
        await incidents.update([full])  # not delivered: tried again next round
        notifier.working = True
        for _ in range(3):
            await incidents.update([full])
        # A restarted hub (a new Incidents on the same file) does not repeat it.
        again = Incidents(notifier, tmp_path / "alerts.json")
        await again.update([full])
        await again.update([])
        await again.update([full])

    asyncio.run(rounds())
    assert notifier.sent == [
        ("firing", "disk-full:/srv"),
        ("resolved", "disk-full:/srv"),
        ("firing", "disk-full:/srv"),
    ]
    assert read_firing(tmp_path / "alerts.json") == [full]
    assert "recent" in json.loads((tmp_path / "alerts.json").read_text())


def test_conditions_and_what_they_say(tmp_path: Path) -> None:
    config = validate({"hub": {"data_dir": str(tmp_path)}, "alerts": {"disk_percent": 90}})
    monitor = Monitor(config, scheduler_silent=lambda: 400.0)
    metrics.RECENT.queued_builds["k"] = time.monotonic() - 3600
    try:
        disks = [Disk("extra", Path("/a"), 95, 100), Disk("extra", Path("/b"), 80, 100)]
        found = {alert.key: alert for alert in monitor.alerts(disks)}
    finally:
        metrics.RECENT.queued_builds.pop("k")
    assert "disk-full:/a" in found and "disk-full:/b" not in found
    assert "95 % full" in found["disk-full:/a"].summary
    # unknown_grace is 5 minutes by default: 400 s without an answer is past it.
    assert "scontrol ping" in found["scheduler-unreachable"].action
    assert "60 min" in found["build-queue-stuck"].summary
    assert Monitor(config).alerts([]) == []


def test_check_warns_of_alert_secrets_in_clear() -> None:
    config = validate(
        {
            "alerts": {
                "webhook": {"url": "http://chat.example.org/hook", "token": {"env": "T"}},
                "email": {**EMAIL, "tls": "none", "username": "u", "password": {"env": "P"}},
            }
        }
    )
    warnings = alert_warnings(config)
    assert [w.split(":")[0] for w in warnings] == [
        "alerts.webhook.url is plain http",
        "alerts.email.tls is none",
    ]
    safe = {"webhook": {"url": "https://chat.example.org/hook", "token": {"env": "T"}}}
    assert alert_warnings(validate({"alerts": safe})) == []
