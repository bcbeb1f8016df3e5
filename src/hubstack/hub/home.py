"""What the home page shows: one card per server, the home's usage and the user's groups.

:func:`home_page` turns a user's spawners and the config into plain data (pure, so it is
unit-tested without a hub); :func:`home_page_for` adds what must be measured (volumes, off
the event loop) and is what the template calls. Everything here is shown through Jinja's
autoescape: server names, repository URLs and group names are user input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from hubstack.backends.base import Backend, StorageUse, Usage
from hubstack.config import Config
from hubstack.config.groups import CHAMPIONS_SUFFIX
from hubstack.config.interfaces import INTERFACES
from hubstack.config.models import REPOSITORY_ENVIRONMENT
from hubstack.hub.spawner import backend_for, config_from_json
from hubstack.units import human_size

Status = Literal["running", "starting", "stopping", "stopped"]


@dataclass(frozen=True)
class Volume:
    """A volume's use against its quota, in words and as a share for the bar."""

    quota: int
    used: int
    size: int  # of its file system: the quota less the file system's own overhead

    @classmethod
    def of(cls, quota: int, measured: Usage | None) -> Volume | None:
        """None where nothing was measured: no volume yet, dev mode, or a shared file
        system whose quotas are the site's (Slurm)."""
        return None if measured is None else cls(quota, measured.used, measured.size)

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.size)) if self.size else 100

    @property
    def text(self) -> str:
        return f"{human_size(self.used)} of {human_size(self.quota)} used"


@dataclass(frozen=True)
class Card:
    """One server, as its card shows it."""

    name: str  # "" is the default server
    status: Status
    machine: str | None
    environment: str | None
    repository: str | None
    backend: str
    job_id: str | None
    queue_state: str | None
    started: datetime | None
    last_activity: datetime | None
    volume: Volume | None
    notices: list[dict[str, str]] = field(default_factory=list)
    interface: str | None = None  # what the server opens in: JupyterLab, VS Code, Voilà...

    @property
    def title(self) -> str:
        return self.name or "Default server"

    @property
    def deletable(self) -> bool:
        """JupyterHub deletes named servers only, and only stopped ones."""
        return bool(self.name) and self.status == "stopped"


@dataclass(frozen=True)
class HomePage:
    cards: list[Card]
    home: Volume | None
    groups: list[str]
    champion_of: list[str]


def _orm(spawner: Any) -> Any:
    """``User.all_spawners`` gives a Spawner where one was made, else the database row."""
    return getattr(spawner, "orm_spawner", spawner)


def _status(spawner: Any) -> Status:
    if not hasattr(spawner, "orm_spawner"):
        return "running" if spawner.server is not None else "stopped"
    if spawner.pending == "stop":
        return "stopping"
    if spawner.pending:
        return "starting"
    return "running" if spawner.ready else "stopped"


def _state(spawner: Any) -> dict[str, Any]:
    return dict(_orm(spawner).state or {})


def _backend_state(spawner: Any) -> dict[str, Any]:
    if hasattr(spawner, "backend_state"):
        return dict(spawner.backend_state)
    return dict(_state(spawner).get("backend", {}))


def _notices(spawner: Any) -> list[dict[str, str]]:
    if hasattr(spawner, "notices"):
        return list(spawner.notices)
    return list(_state(spawner).get("notices", []))


def _aware(moment: datetime | None) -> datetime | None:
    """JupyterHub stores naive UTC times."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _display(choices: Iterable[Any], wanted: str | None) -> str | None:
    """A machine's or environment's display name; the id if the config no longer has it."""
    if not wanted:
        return None
    return next((choice.display for choice in choices if choice.id == wanted), wanted)


def server_card(
    config: Config,
    spawner: Any,
    use: StorageUse,
    queue_state: Callable[[dict[str, Any]], str | None],
) -> Card:
    """The card of one spawner (or its database row, for a server never loaded)."""
    orm = _orm(spawner)
    options = dict(orm.user_options or {})
    state = _backend_state(spawner)
    status = _status(spawner)
    environment = options.get("environment")
    repository = options.get("repo") or None
    job_id = state.get("job_id")
    return Card(
        name=orm.name,
        status=status,
        machine=_display(config.machines, options.get("machine")),
        environment=None
        if repository and environment in (None, REPOSITORY_ENVIRONMENT)
        else _display(config.environments, environment),
        repository=repository,
        backend=config.backend.type,
        job_id=job_id,
        queue_state=queue_state(state) if job_id and status != "stopped" else None,
        started=_aware(orm.started) if status != "stopped" else None,
        last_activity=_aware(orm.last_activity),
        volume=Volume.of(config.policy.storage.server_volume, use.servers.get(orm.name)),
        notices=_notices(spawner),
        interface=_interface(config, environment, options.get("interface")),
    )


def _interface(config: Config, environment: str | None, chosen: object) -> str | None:
    """The display name of the interface a server opens in: the one chosen, else its
    environment's first (the form leaves the default out); None for an unknown one."""
    if not isinstance(chosen, str):
        offered = config.environment(environment) if environment else None
        chosen = offered.interfaces[0] if offered is not None else "lab"
    interface = INTERFACES.get(chosen)
    return interface.display if interface is not None else None


def home_page(
    config: Config,
    spawners: Iterable[Any],
    groups: Iterable[str],
    use: StorageUse,
    queue_state: Callable[[dict[str, Any]], str | None],
) -> HomePage:
    """The page's data: the default server first, then named servers by name."""
    cards = [server_card(config, spawner, use, queue_state) for spawner in spawners]
    cards.sort(key=lambda card: (card.name != "", card.name))
    names = sorted(groups)
    # JupyterHub group ``<G>-champions`` holds the champions of group ``<G>``.
    champion_of = [
        name.removesuffix(CHAMPIONS_SUFFIX)
        for name in names
        if name.endswith(CHAMPIONS_SUFFIX) and len(name) > len(CHAMPIONS_SUFFIX)
    ]
    home = Volume.of(config.policy.storage.home, use.home)
    return HomePage(cards, home, names, champion_of)


async def home_page_for(config: Config, backend: Backend, user: Any) -> HomePage:
    """:func:`home_page` for a JupyterHub ``User``, with its volumes measured in a thread
    (their file systems may be slow; the hub's event loop must not wait on them)."""
    spawners = list(user.all_spawners(include_default=True))
    names = [_orm(spawner).name for spawner in spawners]
    use = await asyncio.to_thread(backend.storage_use, user.name, names)
    groups = [group.name for group in user.groups]
    return home_page(config, spawners, groups, use, backend.queue_state)


def home_template_var(config_json: str) -> Callable[[Any], Callable[[], Awaitable[HomePage]]]:
    """A ``JupyterHub.template_vars`` value: JupyterHub calls it with the current user for
    every page; it returns a function the home page calls (Jinja awaits its result), so
    that only the home page measures anything. The backend is the spawners' own (the
    Slurm one holds the job watcher whose queue states the cards show)."""

    def for_user(user: Any) -> Callable[[], Awaitable[HomePage]]:
        def load() -> Awaitable[HomePage]:
            return home_page_for(config_from_json(config_json), backend_for(config_json), user)

        return load

    return for_user
