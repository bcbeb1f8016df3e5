"""The small interface every backend implements under the one hubstack spawner.

The spawner owns everything JupyterHub asks of it (options, state, progress, errors);
a backend only knows how to start, watch, stop and delete one server where it runs.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from hubstack.config import Config
from hubstack.errors import Explained
from hubstack.launch import LaunchRequest
from hubstack.launch.plan import BuiltRepository, server_label

Emit = Callable[[str], None]
"""Report one step of a start to the user's progress stream."""

Record = Callable[[dict[str, Any]], None]
"""Save a start's state in the hub database before the start completes."""

LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 16384


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, *, owner: int | None = None) -> str:
    """The last lines of a server's log: they usually say why it failed.

    A log may lie where its user can write (a Slurm job's is in the user's home), and the
    hub must not read another file through it for them: the last component is opened without
    following a link and without blocking (a FIFO planted there), and only a regular file
    owned by ``owner`` (None: the hub's own account) is read, and only its last 16 KiB (a
    huge or endless file costs nothing). It still waits on the file system: call it in a
    thread. Empty when there is no such log.
    """
    uid = os.geteuid() if owner is None else owner
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            return ""
        data = os.pread(fd, LOG_TAIL_BYTES, max(0, info.st_size - LOG_TAIL_BYTES))
    except OSError:
        return ""
    finally:
        os.close(fd)
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class StartFailed(Explained):
    """A start that failed for a reason the user should read (OOM, exit, quota, ...)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ServerSpec:
    """Everything a backend needs to start one server, already validated."""

    hub_user: str
    server_name: str
    request: LaunchRequest
    env: dict[str, str]
    port: int
    built: BuiltRepository | None = None  # the environment of the request's repository
    # The user's JupyterHub groups and admin flag as the start reads them: what decides
    # the shared folders the server sees.
    groups: frozenset[str] = frozenset()
    admin: bool = False
    # The socket listening on ``port`` that the server is to serve on, where the backend
    # binds it (see Backend.server_socket); the hub closes its own copy after the start.
    listening: socket.socket | None = None

    @property
    def label(self) -> str:
        return server_label(self.server_name)


@dataclass
class Exit:
    """How a server ended: an exit status and, when known, why (for the user)."""

    status: int
    reason: str | None = None
    out_of_memory: bool = False
    # When it really ended, where the backend keeps a record (Slurm's accounting): a
    # server that ended while the hub was down is charged up to then.
    ended_at: datetime | None = None
    # What it used over its life, where only the end tells (Slurm's accounting): CPU-seconds
    # and peak memory in bytes, as ``Backend.measure`` gives them.
    used: tuple[float | None, int | None] | None = None


@dataclass
class Started:
    """Where a started server listens, and the state needed to find it after a restart."""

    ip: str
    port: int
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """How much of a volume is used, in bytes; ``size`` is its file system's size."""

    used: int
    size: int


@dataclass(frozen=True)
class StorageUse:
    """What a user's home and server volumes hold, where the backend can measure it
    (None: not measured, such as a shared file system's quotas)."""

    home: Usage | None = None
    servers: dict[str, Usage | None] = field(default_factory=dict)


class Backend(Protocol):
    """Where servers run. ``state`` is the JSON-able dict kept in the hub database."""

    config: Config

    async def start(
        self, spec: ServerSpec, emit: Emit, record: Record, resume: dict[str, Any] | None = None
    ) -> Started:
        """Start a server; ``resume`` is the state of a start a hub restart interrupted."""
        ...

    async def check_request(self, hub_user: str, request: LaunchRequest) -> str | None:
        """Why the place servers run cannot take ``request`` now (live data), else None."""
        ...

    def is_starting(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` is a start still under way (one a hub restart can resume)."""
        ...

    async def poll(self, state: dict[str, Any]) -> Exit | None: ...

    async def stop(self, state: dict[str, Any]) -> Exit | None: ...

    async def delete(self, hub_user: str, server_name: str) -> None: ...

    def measure(self, state: dict[str, Any]) -> tuple[float | None, int | None]:
        """CPU-seconds used and peak memory of the server so far (None: not measured);
        blocking (call it in a thread)."""
        ...

    def new_oom_kills(self, state: dict[str, Any]) -> int:
        """Processes killed for memory since the last call (and update ``state``)."""
        ...

    async def refuse_address(self, state: dict[str, Any], host: str) -> str | None:
        """Why a starting server's own report that it listens on ``host`` is refused (the
        backend knows where it runs), else None."""
        ...

    def address_reported(self, state: dict[str, Any], host: str, port: int) -> None:
        """Record the address a starting server reported; ValueError if it cannot report."""
        ...

    def server_socket(self) -> socket.socket | None:
        """A socket listening on the port the next server is to serve on, where the backend
        binds it and hands it over; None where the server binds and reports its own."""
        ...

    def describe(self) -> str:
        """One line for the log and admins: what isolation and limits are in force."""
        ...

    def storage_use(self, hub_user: str, server_names: Iterable[str]) -> StorageUse:
        """What ``hub_user``'s home and named servers' volumes hold; blocking (call it in
        a thread), and never creating anything (a page view must not make an account)."""
        ...

    def queue_state(self, state: dict[str, Any]) -> str | None:
        """The scheduler's last known state of the server's job (e.g. ``PENDING
        (Resources)``), without asking it again; None where servers do not queue."""
        ...
