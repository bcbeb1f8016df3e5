"""Alerts to the hub's admins: a JSON POST to a webhook and/or mail through SMTP, once per
incident.

An incident starts when its condition is first seen and ends when it is no longer seen;
only those two moments send anything. The incidents under way are kept in a file in the
data dir, so a restarted hub (``kill -9`` included) neither repeats one nor forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import smtplib
import ssl
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hubstack.config.alerts import AlertSettings, Email
from hubstack.hub.metrics import ALERT_FIRING, RECENT

log = logging.getLogger("hubstack.alerts")
State = Literal["firing", "resolved"]
SEND_TIMEOUT = 30


@dataclass(frozen=True)
class Alert:
    """One condition: ``key`` names the incident (the kind, and e.g. the disk)."""

    kind: str
    key: str
    summary: str
    action: str


class Notifier:
    """Sends an alert to every configured channel; with none, only logs it."""

    def __init__(self, settings: AlertSettings, hub_url: str) -> None:
        self.settings = settings
        self.hub_url = hub_url

    def payload(self, alert: Alert, state: State) -> dict[str, Any]:
        return {
            **asdict(alert),
            "state": state,
            "hub": self.hub_url,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    async def send(self, alert: Alert, state: State) -> bool:
        """Whether some channel took it (or there is none: the log is the channel)."""
        log.warning("alert %s %s: %s %s", state, alert.key, alert.summary, alert.action)
        body = self.payload(alert, state)
        sent: list[bool] = []
        if self.settings.webhook is not None:
            sent.append(await self._post(body))
        if self.settings.email is not None:
            sent.append(await asyncio.to_thread(self._mail, self.settings.email, body))
        return not sent or any(sent)

    async def _post(self, body: dict[str, Any]) -> bool:
        webhook = self.settings.webhook
        assert webhook is not None
        headers = {"Content-Type": "application/json"}
        if webhook.token is not None:
            headers["Authorization"] = f"Bearer {webhook.token.read()}"
        try:
            await AsyncHTTPClient().fetch(
                webhook.url,
                method="POST",
                body=json.dumps(body),
                headers=headers,
                request_timeout=SEND_TIMEOUT,
            )
        except (OSError, HTTPClientError) as exc:
            log.error("alert webhook %s failed: %s", webhook.url, exc)
            return False
        return True

    def _mail(self, email: Email, body: dict[str, Any]) -> bool:
        """One message through the configured server (smtplib: the standard library's
        client does SMTP, STARTTLS and login; nothing to add)."""
        message = EmailMessage()
        message["Subject"] = f"[hubstack] {body['state'].upper()}: {body['summary']}"
        message["From"] = email.sender
        message["To"] = ", ".join(email.to)
        message.set_content(
            f"{body['summary']}\n\nWhat to do: {body['action']}\n\n"
            f"Hub: {body['hub']}\nAlert: {body['key']} ({body['state']} at {body['time']})\n"
        )
        try:
            if email.tls == "ssl":
                context = ssl.create_default_context()
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    email.smtp_host, email.smtp_port, timeout=SEND_TIMEOUT, context=context
                )
            else:
                smtp = smtplib.SMTP(email.smtp_host, email.smtp_port, timeout=SEND_TIMEOUT)
            with smtp:
                if email.tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if email.username is not None and email.password is not None:
                    smtp.login(email.username, email.password.read())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException, ValueError) as exc:  # ValueError: a bad header
            log.error("alert mail through %s failed: %s", email.smtp_host, exc)
            return False
        return True


def read_firing(path: Path) -> list[Alert]:
    """The alerts under way as saved in ``path`` (none if it is missing or unreadable)."""
    try:
        return [Alert(**item) for item in json.loads(path.read_text())["firing"]]
    except (OSError, ValueError, TypeError, KeyError):
        return []


class Incidents:
    """The alerts under way and the recent events they are counted from (``metrics.
    RECENT``), kept in ``path``; :meth:`update` sends what started or ended."""

    def __init__(self, notifier: Notifier, path: Path) -> None:
        self.notifier = notifier
        self.path = path
        self.firing = {alert.key: alert for alert in read_firing(path)}
        for alert in self.firing.values():
            ALERT_FIRING.labels(alert.kind).set(1)
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            RECENT.restore(json.loads(path.read_text())["recent"])
        self._saved_changes = RECENT.changes

    def _save(self) -> None:
        state = {"firing": [asdict(a) for a in self.firing.values()], "recent": RECENT.saved()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    async def update(self, seen: Iterable[Alert]) -> None:
        """``seen``: every condition true now. New ones fire, ones gone resolve; one whose
        sending failed everywhere is tried again at the next update."""
        now = {alert.key: alert for alert in seen}
        before = {alert.kind for alert in self.firing.values()}
        changed = False
        for key, alert in now.items():
            if key not in self.firing and await self.notifier.send(alert, "firing"):
                self.firing[key] = alert
                changed = True
        for key in [k for k in self.firing if k not in now]:
            await self.notifier.send(self.firing.pop(key), "resolved")
            changed = True
        kinds = {alert.kind for alert in self.firing.values()}
        for kind in before | kinds:
            ALERT_FIRING.labels(kind).set(int(kind in kinds))
        if changed or RECENT.changes != self._saved_changes:
            self._saved_changes = RECENT.changes
            await asyncio.to_thread(self._save)
