"""The hub's monitoring from tests: receivers of its alerts (a webhook endpoint on
loopback, a handler for aiosmtpd's SMTP server, both recording what they were sent) and its
metrics read with Prometheus' own parser."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from hubtest import Session
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Received:
    """What the webhook receiver and the SMTP server were sent."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, key: str, state: str = "firing") -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.posts if p["key"] == key and p["state"] == state]


def webhook_receiver(received: Received) -> ThreadingHTTPServer:
    """A started HTTP server on 127.0.0.1 (``server_port``); ``shutdown()`` ends it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with received.lock:
                received.posts.append(json.loads(body))
                received.authorizations.append(self.headers.get("Authorization", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class MailHandler:
    """aiosmtpd's handler: every message's text into ``received.mails``."""

    def __init__(self, received: Received) -> None:
        self.received = received

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.received.lock:
            self.received.mails.append(envelope.content.decode())
        return "250 OK"


def scrape(admin: Session) -> dict[str, list[Any]]:
    """Every sample at /hub/metrics by metric family name, through Prometheus' own parser."""
    resp = requests.get(
        f"{admin.hub.url}/hub/metrics",
        headers={"Authorization": f"token {admin.token}"},
        timeout=30,
    )
    resp.raise_for_status()
    return {f.name: f.samples for f in text_string_to_metric_families(resp.text)}


def value(samples: list[Any], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None
