"""The small interface every backend implements under the one hubstack spawner.

The spawner owns everything JupyterHub asks of it (options, state, progress, errors);
a backend only knows how to start, watch, stop and delete one server where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hubstack.config import Config
from hubstack.launch import LaunchRequest

Emit = Callable[[str], None]
"""Report one step of a start to the user's progress stream."""


class StartFailed(Exception):
    """A start that failed for a reason the user should read (OOM, exit, quota, ...)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class ServerSpec:
    """Everything a backend needs to start one server, already validated."""

    hub_user: str
    server_name: str
    request: LaunchRequest
    env: dict[str, str]
    port: int

    @property
    def label(self) -> str:
        """The server's name in paths and unit names; the default server is ``default``."""
        return self.server_name or "default"


@dataclass
class Exit:
    """How a server ended: an exit status and, when known, why (for the user)."""

    status: int
    reason: str | None = None
    out_of_memory: bool = False


@dataclass
class Started:
    """Where a started server listens, and the state needed to find it after a restart."""

    ip: str
    port: int
    state: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Where servers run. ``state`` is the JSON-able dict kept in the hub database."""

    config: Config

    async def start(self, spec: ServerSpec, emit: Emit) -> Started: ...

    async def poll(self, state: dict[str, Any]) -> Exit | None: ...

    async def stop(self, state: dict[str, Any]) -> Exit | None: ...

    async def delete(self, hub_user: str, server_name: str) -> None: ...

    def new_oom_kills(self, state: dict[str, Any]) -> int:
        """Processes killed for memory since the last call (and update ``state``)."""
        ...

    def describe(self) -> str:
        """One line for the log and admins: what isolation and limits are in force."""
        ...
