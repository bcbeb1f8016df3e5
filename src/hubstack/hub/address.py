"""The hub API route where a server in a Slurm job reports the address it listens on.

Only the server's own API token is accepted, only for the start it belongs to, and only
the two fields ``host`` and ``port``: a port in the configured range on the node Slurm runs
the job on (its name or one of its addresses). A job, or anyone holding its token, cannot
point the proxy at another host, or at another server.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from hubstack.backends.slurm import REPORT_ROUTE
from hubstack.slurm.client import SlurmError

HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")

ROUTE = rf"/api/{REPORT_ROUTE}"


def _token_matches(spawner: Any, token: str) -> bool:
    """The token the spawner's start handed to its server (kept in state across restarts)."""
    backend_state = getattr(spawner, "backend_state", None) or {}
    for known in (spawner.api_token, backend_state.get("api_token")):
        if known and hmac.compare_digest(known, token):
            return True
    return False


def parse_address(body: object, port_range: str) -> tuple[str, int]:
    """Validate the report: exactly ``host`` and ``port``; refuse anything else with a 400."""
    if not isinstance(body, dict) or set(body) != {"host", "port"}:
        raise web.HTTPError(400, "Send exactly the fields 'host' and 'port'.")
    host, port = body["host"], body["port"]
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise web.HTTPError(400, "host must be a host name or an IPv4 address.")
    low, high = (int(p) for p in port_range.split("-"))
    if type(port) is not int or not low <= port <= high:
        raise web.HTTPError(400, f"port must be a whole number in {low}-{high}.")
    return host, port


class ServerAddressHandler(APIHandler):
    """``POST /hub/api/hubstack/server-address`` with ``{"host": ..., "port": ...}``."""

    async def post(self) -> None:
        user = self.current_user
        token = self.get_auth_token()
        if user is None or not token or not hasattr(user, "spawners"):
            raise web.HTTPError(403, "Only a server's own token can report its address.")
        # Every server of the user, also one whose spawner object JupyterHub has not
        # recreated yet after a hub restart (indexing ``spawners`` recreates it).
        candidates = (user.spawners[name] for name in user.orm_user.orm_spawners)
        spawner = next((s for s in candidates if _token_matches(s, token)), None)
        if spawner is None:
            raise web.HTTPError(403, "This token does not belong to a server that is starting.")
        host, port = parse_address(self.get_json_body(), spawner.hubstack.backend.slurm.port_range)
        try:
            refusal = await spawner.backend.refuse_address(spawner.backend_state, host)
        except SlurmError as exc:
            self.log.warning("cannot check %s's address: %s", spawner._log_name, exc)
            raise web.HTTPError(
                503, "The scheduler cannot say where this job runs right now; try again."
            ) from None
        if refusal is not None:
            self.log.warning("%s reported %s: %s", spawner._log_name, host, refusal)
            raise web.HTTPError(403, refusal)
        try:
            spawner.address_reported(host, port)
        except ValueError as exc:
            raise web.HTTPError(409, str(exc)) from None
        self.log.info("%s listens on %s:%d", spawner._log_name, host, port)
        self.set_status(204)
