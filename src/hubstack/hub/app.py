"""JupyterHub's application with hubstack's watch started beside it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator

from jupyterhub import orm
from jupyterhub.app import JupyterHub

from hubstack.backends.base import Backend
from hubstack.backends.slurm import SlurmBackend
from hubstack.config.groups import CHAMPIONS_SUFFIX
from hubstack.hub import metrics
from hubstack.hub.groups import replace_group_members_handler
from hubstack.hub.monitor import Monitor
from hubstack.hub.spawner import backend_for, config_from_json, declared_for


class HubstackHub(JupyterHub):
    """JupyterHub, plus the monitor task and the running-servers metric once it has started
    (JupyterHub has no hook for tasks of its own on its event loop), and the guarded
    group-members handler."""

    _monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        config_json = self.config.HubstackSpawner.hubstack_config
        config = config_from_json(config_json)
        backend = backend_for(config_json)
        metrics.register_running_servers(self._running_servers)
        silent = functools.partial(_scheduler_silent, backend)
        self._monitor = asyncio.ensure_future(Monitor(config, silent).run())
        declared_for(config_json).start(self.log)

    def init_handlers(self) -> None:
        super().init_handlers()
        self.handlers = replace_group_members_handler(self.handlers)

    async def cleanup(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        await super().cleanup()

    def _running_servers(self) -> Iterator[metrics.RunningServer]:
        """Servers with an address or a start under way, from the hub's database."""
        query = self.db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
        for spawner in query:
            machine = str((spawner.user_options or {}).get("machine", ""))
            groups = tuple(
                g.name for g in spawner.user.groups if not g.name.endswith(CHAMPIONS_SUFFIX)
            )
            yield metrics.RunningServer(machine, groups)


def _scheduler_silent(backend: Backend) -> float | None:
    """Seconds the Slurm watcher has gone without an answer (None: answering, or no Slurm)."""
    if not isinstance(backend, SlurmBackend) or backend.watcher.failing_since is None:
        return None
    return time.monotonic() - backend.watcher.failing_since
