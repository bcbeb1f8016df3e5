"""A server is started when it answers as itself, not when something listens on its port:
another program (or another user's server) on that port is never taken for it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, new_test_root, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

# Listens on the port the hub chose and answers as a server for someone else would: Jupyter's
# JSON at another user's prefix, 404 everywhere else. It logs each path it is asked for.
FOREIGN = f"""#!{DEFAULT_ENV}/bin/python
import http.server, os, urllib.parse

PORT = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port


class Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("asked for", self.path, flush=True)
        mine = self.path == "/user/someone-else/api"
        body = b'{{"version": "2.14.0"}}' if mine else b"not here"
        self.send_response(200 if mine else 404)
        self.send_header("Content-Type", "application/json" if mine else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer(("127.0.0.1", PORT), Foreign).serve_forever()
"""


@pytest.fixture(scope="module")
def foreign_env() -> Iterator[Path]:
    prefix = new_test_root() / "foreign"
    (prefix / "bin").mkdir(parents=True, mode=0o755)
    server = prefix / "bin/jupyterhub-singleuser"
    server.write_text(FOREIGN)
    server.chmod(0o755)
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(foreign_env: Path) -> Iterator[Hub]:
    overrides = {
        "environments": [{"id": "foreign", "display": "Foreign", "prefix": str(foreign_env)}],
        "extra_jupyterhub_config": {"HubstackSpawner": {"start_timeout": 15}},
    }
    with running_hub(overrides) as running:
        yield running


def test_a_foreign_listener_on_the_port_is_not_the_users_server(hub: Hub) -> None:
    frank = hub.new_user("frank")
    log = hub.data_dir / "logs" / f"{hub.prefix}frank" / "foreign.log"
    resp = frank.start("foreign")
    wait_for(
        lambda: log.exists() and "asked for /user/frank/foreign/api" in log.read_text(),
        60,
        "the hub to ask the listener for the server's own API",
    )
    if resp.status_code == 202:
        events = frank.progress("foreign", timeout=120)
        assert events[-1].get("failed"), events
        assert not events[-1].get("ready")
    else:
        assert resp.status_code >= 400, resp.text
    model = frank.model("foreign", include_stopped=True)
    assert model is not None and not model["ready"], model
    assert "failed to start in 15 seconds" in hub.log()
