"""``hubstack group``: see and change groups, members and champions of the running hub.

The command goes through the hub's REST API, as the ``hubstack-cli`` service with a token
it makes for a few minutes (``groups.cli_token``), rather than writing the database: the
running hub keeps users and groups in memory and would not see a change made under it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from hubstack.config import Config
from hubstack.config.groups import CHAMPIONS_SUFFIX
from hubstack.hub.groups import champions_group, cli_token


class HubApi:
    """One running hub's REST API, as the CLI's service."""

    def __init__(self, config: Config, db_url: str) -> None:
        self.config = config
        hub = config.hub
        self.api = f"http://127.0.0.1:{hub.port + 2}{hub.base_url.rstrip('/')}/hub/api"
        self.token = cli_token(db_url)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.api + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            message = json.loads(exc.read() or b"{}").get("message") or exc.reason
            raise ValueError(f"the hub refused: {message}") from None
        except urllib.error.URLError as exc:
            raise ValueError(
                f"cannot reach the hub at {self.api} ({exc.reason}); is `hubstack up` running?"
            ) from None
        return json.loads(text) if text else None


class GroupAdmin(HubApi):
    """One hub's groups through its REST API."""

    def known(self, group: str) -> None:
        if group not in self.config.groups:
            names = ", ".join(self.config.groups) or "none"
            raise ValueError(f"{group!r} is not a group in the config; groups: {names}")

    def groups(self) -> list[dict[str, Any]]:
        found = self.call("GET", "/groups")
        return [g for g in found if not g["name"].endswith(CHAMPIONS_SUFFIX)]

    def show(self, group: str) -> dict[str, Any]:
        self.known(group)
        members = self.call("GET", f"/groups/{group}")["users"]
        champions = self.call("GET", f"/groups/{champions_group(group)}")["users"]
        source = self.config.groups[group].source
        return {"name": group, "source": source, "members": members, "champions": champions}

    def change(self, group: str, user: str, add: bool, champion: bool) -> None:
        self.known(group)
        if not champion and not self.config.groups[group].hub_managed:
            raise ValueError(
                f"the members of {group!r} come from the login provider (source: provider); "
                "change them there"
            )
        target = champions_group(group) if champion else group
        self.call("POST" if add else "DELETE", f"/groups/{target}/users", {"users": [user]})
