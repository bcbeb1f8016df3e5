"""The usage REST API: a user reads their own usage, a group's champions their members'
and the group's, admins everyone's. Who may read what is JupyterHub's own RBAC: the
``read:users`` and ``read:groups`` scopes, filtered as each role grants them (``self``,
``!group=G`` for champions)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from hubstack.config import Config
from hubstack.hub.usage import ledger_for
from hubstack.units import parse_duration
from hubstack.usage.ledger import ledger_url
from hubstack.usage.report import Window, as_json, usage_report


class UsageHandler(APIHandler):
    def initialize(self, config: Config) -> None:
        self.hubstack = config

    def _window(self) -> Window:
        text = self.get_argument("since", None)
        last = None
        if text is not None:
            try:
                last = timedelta(seconds=parse_duration(text))
            except ValueError as exc:
                raise web.HTTPError(400, f"since: {exc}") from None
        return Window.of(self.hubstack.usage, datetime.now(UTC), last)

    async def _send(self, **who: Any) -> None:
        window = self._window()
        ledger = ledger_for(ledger_url(self.hubstack))
        lines = await asyncio.to_thread(usage_report, ledger, self.hubstack.usage, window, **who)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(as_json(lines, self.hubstack.usage, window)))


class UserUsageHandler(UsageHandler):
    @needs_scope("read:users")
    async def get(self, user_name: str) -> None:
        await self._send(users=[user_name])


class GroupUsageHandler(UsageHandler):
    @needs_scope("read:groups")
    async def get(self, group_name: str) -> None:
        await self._send(groups=[group_name])


def handlers(config: Config) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/)."""
    kwargs = {"config": config}
    return [
        (r"/api/usage/users/([^/]+)", UserUsageHandler, kwargs),
        (r"/api/usage/groups/([^/]+)", GroupUsageHandler, kwargs),
    ]
