"""``/hub/cluster`` and ``/hub/api/cluster/nodes``: the elastic cluster's nodes as
`hubstack cluster status` shows them (powered down, booting for how long, idle, busy,
failed and why; group, partition, address).

For admins and champions: both hold JupyterHub's ``admin-ui`` scope (JupyterHub's own admin
page asks for it), and both are who users ask why their server waits for a node. Others
get 403. The rows come from scontrol and the records file, read in a thread: neither may
block the hub's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from hubstack.cluster.apply import NodeRow, status
from hubstack.config import Config
from hubstack.system import SystemOpError


class ClusterMixin:
    hubstack: Config

    def initialize(self, config: Config) -> None:
        self.hubstack = config

    async def nodes(self) -> list[NodeRow]:
        """The rows, or HTTP 503 saying that Slurm did not answer."""
        try:
            return await asyncio.to_thread(status, self.hubstack)
        except SystemOpError as exc:
            raise web.HTTPError(503, f"Slurm did not answer: {exc}") from None


class ClusterPageHandler(ClusterMixin, BaseHandler):
    @web.authenticated
    @needs_scope("admin-ui")
    async def get(self) -> None:
        html = await self.render_template("cluster.html", nodes=await self.nodes())
        self.finish(html)


class ClusterAPIHandler(ClusterMixin, APIHandler):
    @needs_scope("admin-ui")
    async def get(self) -> None:
        rows = [dataclasses.asdict(row) for row in await self.nodes()]
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"nodes": rows}))


def handlers(config: Config) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/); none without node groups."""
    if not config.cluster.node_groups:
        return []
    kwargs = {"config": config}
    return [
        (r"/cluster", ClusterPageHandler, kwargs),
        (r"/api/cluster/nodes", ClusterAPIHandler, kwargs),
    ]
