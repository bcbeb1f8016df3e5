"""The local backend: servers as processes of per-user Unix accounts on the hub's machine.

As root, every hub user gets a Unix account, a home of ``policy.storage.home`` and one
volume of ``policy.storage.server_volume`` per server (loop-mounted ext4 images, so
limits are hard), and each server runs in its own cgroup (or systemd scope) with the
machine type's CPU and memory. Not as root it runs in dev mode: every server runs as the
invoking account with no isolation, limits or volumes, and says so.

Storage layout (root)::

    <data_dir>/storage/homes/<account>.img            -> <home_base>/<account>
    <data_dir>/storage/servers/<account>/<server>.img -> <home>/volumes/<server>
    <data_dir>/logs/<account>/<server>.log             (root only; its tail explains failures)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from jupyterhub.spawner import set_user_setuid

from hubstack.backends.accounts import account_for
from hubstack.backends.base import (
    Emit,
    Exit,
    Record,
    ServerSpec,
    Started,
    StartFailed,
    log_tail,
)
from hubstack.backends.server import place_content, server_environment
from hubstack.config import Config
from hubstack.config.units import format_size
from hubstack.launch import LaunchRequest
from hubstack.system import SystemOpError, accounts, cgroups, volumes

STOP_GRACE_SECONDS = 5.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> int | None:
    """Exit status of our own child ``pid`` if it has ended, else None.

    After a hub restart the server is no longer our child: then only liveness is known.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if _alive(pid) else 0
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


class LocalBackend:
    """Start servers as local processes; see the module docstring for the layout."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = config.backend.local
        self.root = os.geteuid() == 0
        self.existing_accounts = config.auth.type == "pam"
        preference = self.local.limits if self.root else "off"
        self.enforcer = cgroups.detect(preference)
        self.data_dir = config.hub.data_dir
        self._locks: dict[str, threading.Lock] = {}

    def describe(self) -> str:
        if not self.root:
            me = accounts.current_account().name
            return (
                f"dev mode: not running as root, so every server runs as {me!r} with no "
                "isolation, no CPU or memory limits and no volumes"
            )
        accounts_kind = "existing machine accounts" if self.existing_accounts else "hub accounts"
        return (
            f"local backend: servers run as {accounts_kind}, limits by {self.enforcer.name}, "
            f"loop-mounted volumes under {self.data_dir / 'storage'}"
        )

    # -- accounts and storage -------------------------------------------------------------

    def _account(self, hub_user: str) -> accounts.Account:
        return account_for(
            hub_user,
            root=self.root,
            existing=self.existing_accounts,
            prefix=self.local.user_prefix,
            home_base=self.local.home_base,
        )

    def _server_image(self, account: str, label: str) -> Path:
        return self.data_dir / "storage/servers" / account / f"{label}.img"

    def _account_lock(self, account: str) -> threading.Lock:
        return self._locks.setdefault(account, threading.Lock())

    def _prepare_storage(self, account: accounts.Account, label: str) -> Path:
        """Mount the home and this server's volume; return the volume's mount point."""
        with self._account_lock(account.name):
            return self._mount_storage(account, label)

    def _mount_storage(self, account: accounts.Account, label: str) -> Path:
        storage = self.config.policy.storage
        if not self.root:
            workdir = self.data_dir / "dev-storage" / account.name / label
            workdir.mkdir(parents=True, exist_ok=True)
            return workdir
        if not self.existing_accounts:
            home_image = self.data_dir / "storage/homes" / f"{account.name}.img"
            volumes.create_image(home_image, storage.home, account.uid, account.gid)
            volumes.mount(home_image, account.home, account.uid, account.gid)
        volumes_dir = account.home / "volumes"
        if not volumes_dir.exists():
            volumes_dir.mkdir(mode=0o755)
            os.chown(volumes_dir, account.uid, account.gid)
        image = self._server_image(account.name, label)
        mountpoint = volumes_dir / label
        volumes.create_image(image, storage.server_volume, account.uid, account.gid)
        volumes.mount(image, mountpoint, account.uid, account.gid)
        return mountpoint

    # -- lifecycle --------------------------------------------------------------------------

    def _unit(self, account: str, label: str) -> str:
        return f"hubstack-{account}-{label}"

    def _limits(self, spec: ServerSpec) -> cgroups.Limits:
        machine = spec.request.machine
        return cgroups.Limits(cpu=machine.cpu, memory=machine.memory, pids=self.local.max_processes)

    async def check_request(self, hub_user: str, request: LaunchRequest) -> str | None:
        """The config is all there is to check against on this machine."""
        return None

    def is_starting(self, state: dict[str, Any]) -> bool:
        """A local start never outlives the hub process that began it."""
        return False

    async def start(
        self, spec: ServerSpec, emit: Emit, record: Record, resume: dict[str, Any] | None = None
    ) -> Started:
        emit("Preparing your account")
        account = await asyncio.to_thread(self._account, spec.hub_user)
        limits = self._limits(spec)
        state: dict[str, Any] = {
            "unit": self._unit(account.name, spec.label),
            "account": account.name,
            "label": spec.label,
            "memory": limits.memory,
            "log": str(self.data_dir / "logs" / account.name / f"{spec.label}.log"),
        }
        if self.root:
            state["volume"] = str(account.home / "volumes" / spec.label)
        try:
            await self._launch(spec, account, limits, state, emit)
        except BaseException:
            # A failed, timed-out or cancelled start leaves nothing behind: no process,
            # no cgroup, no mount. Shielded, so a second cancellation cannot cut it short.
            await asyncio.shield(asyncio.to_thread(self._abandon, state))
            raise
        return Started("127.0.0.1", spec.port, state)

    async def _launch(
        self,
        spec: ServerSpec,
        account: accounts.Account,
        limits: cgroups.Limits,
        state: dict[str, Any],
        emit: Emit,
    ) -> None:
        """Mount storage, create the cgroup, start the server and wait until it listens.

        Everything acquired is recorded in ``state`` as it happens, so that
        :meth:`_abandon` can release exactly that when the start does not complete.
        """
        machine, environment = spec.request.machine, spec.request.environment
        if self.root:
            emit(f"Mounting your storage ({format_size(self.config.policy.storage.server_volume)})")
        try:
            volume = await asyncio.to_thread(self._prepare_storage, account, spec.label)
        except SystemOpError as exc:
            raise StartFailed(
                f"Your storage could not be prepared: {exc}", reason="storage"
            ) from None
        group = await asyncio.to_thread(self.enforcer.prepare, state["unit"], limits)
        state["oom_kills"] = group.oom_kills()

        executable = environment.prefix / "bin/jupyterhub-singleuser"
        workdir, server = await place_content(
            spec, volume, account if self.root else None, [str(executable)]
        )
        cmd = self.enforcer.wrap_command(
            state["unit"],
            limits,
            [
                *server,
                f"--ServerApp.root_dir={workdir or account.home}",
                f"--ServerApp.preferred_dir={workdir or volume}",
            ],
        )
        env = {
            **spec.env,
            **server_environment(spec, account, volume, workdir),
            "SHELL": "/bin/bash",
        }
        log_path = Path(state["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        setuid = set_user_setuid(account.name, chdir=False) if self.root else None

        def preexec() -> None:
            group.attach_self()
            if setuid is not None:
                setuid()

        emit(f"Starting {environment.display} on {machine.display}")
        with log_path.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=str(workdir or account.home),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=preexec,
                    start_new_session=True,
                )
            except (PermissionError, FileNotFoundError) as exc:
                raise StartFailed(
                    f"The environment {environment.display!r} cannot be started: "
                    f"{executable} is missing or not usable by {account.name} ({exc.strerror}).",
                    reason="environment",
                ) from None
        state["pid"] = proc.pid
        await self._wait_listening(proc, spec.port, state)

    async def _wait_listening(
        self, proc: subprocess.Popen[bytes], port: int, state: dict[str, Any]
    ) -> None:
        """Return once the server accepts connections; explain it if the server dies first.

        JupyterHub would only notice a dead server after its HTTP wait times out, and then
        with a bare status; waiting here lets the user read the real cause.
        """
        while True:
            status = proc.poll()
            if status is not None:
                ended = self._ended(status, state)
                message = f"Your server stopped while starting: {ended.reason}."
                tail = log_tail(Path(state["log"]))
                if tail and not ended.out_of_memory:
                    message += f"\nLast lines of its log:\n{tail}"
                raise StartFailed(message, reason="oom" if ended.out_of_memory else "exited")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            await asyncio.sleep(0.05)

    def _group(self, state: dict[str, Any]) -> cgroups.Cgroup:
        return self.enforcer.open(state["unit"])

    def _ended(self, status: int, state: dict[str, Any]) -> Exit:
        """Why the server ended, in words: the OOM killer, a signal or its exit status."""
        if self._group(state).oom_kills() > state.get("oom_kills", 0):
            memory = state.get("memory")
            limit = f" (limit {format_size(memory)})" if memory else ""
            reason = f"it ran out of memory{limit}; choose a larger machine type"
            return Exit(status, reason, out_of_memory=True)
        if status < 0:
            return Exit(status, f"it was killed by signal {signal.Signals(-status).name}")
        return Exit(status, f"it exited with status {status}")

    def new_oom_kills(self, state: dict[str, Any]) -> int:
        if "unit" not in state:
            return 0
        count = self._group(state).oom_kills()
        new = count - state.get("oom_kills", 0)
        state["oom_kills"] = count
        return max(new, 0)

    async def poll(self, state: dict[str, Any]) -> Exit | None:
        pid = state.get("pid")
        if not pid:
            return Exit(0)
        status = _reap(pid)
        if status is None:
            return None
        return self._ended(status, state)

    async def stop(self, state: dict[str, Any]) -> Exit | None:
        pid = state.get("pid")
        if not pid:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        status = _reap(pid)
        while status is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = _reap(pid)
        if status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            status = -signal.SIGKILL
        ended = self._ended(status, state)
        await asyncio.to_thread(self._cleanup, state)
        return ended

    def _abandon(self, state: dict[str, Any]) -> None:
        """Undo a start that did not complete: kill what it started, then clean up."""
        pid = state.get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._cleanup(state)

    def _cleanup(self, state: dict[str, Any]) -> None:
        """Remove the cgroup and unmount the volume (its image stays).

        The home is unmounted too when this was the account's last running server.
        """
        self._group(state).remove()
        if not self.root or not state.get("volume"):
            return
        volume = Path(state["volume"])
        with self._account_lock(state["account"]):
            volumes.unmount(volume)
            siblings = volume.parent.iterdir() if volume.parent.is_dir() else ()
            others = [p for p in siblings if volumes.is_mounted(p)]
            if not others and not self.existing_accounts:
                volumes.unmount(volume.parent.parent)

    async def delete(self, hub_user: str, server_name: str) -> None:
        if not self.root:
            return
        account = await asyncio.to_thread(self._account, hub_user)
        label = server_name or "default"
        await asyncio.to_thread(
            volumes.remove_image,
            self._server_image(account.name, label),
            account.home / "volumes" / label,
        )
