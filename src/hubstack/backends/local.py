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
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from hubstack.backends.admission import Admission
from hubstack.backends.base import (
    Emit,
    Exit,
    Record,
    ServerSpec,
    Started,
    StartFailed,
    StorageUse,
    Usage,
    log_tail,
)
from hubstack.backends.forking import (
    ForkFailed,
    ForkServer,
    ForkServers,
    forkable,
    layer_python,
    root_only,
    server_argv,
)
from hubstack.backends.listen_fd import VARIABLE as LISTEN_FD
from hubstack.backends.runas import Accounts, existing_account
from hubstack.backends.server import answers_as_itself, place_files
from hubstack.config import Config
from hubstack.launch import LaunchRequest
from hubstack.launch.plan import PYTHON, ServerPlan, server_label, server_plan
from hubstack.system import (
    SystemOpError,
    accounts,
    cgroups,
    propagation,
    shared_folders,
    tool,
    volumes,
)
from hubstack.system.userpaths import own_dir
from hubstack.units import format_duration, format_size

log = logging.getLogger("hubstack.local")

STOP_GRACE_SECONDS = 5.0
# env(1)'s exit statuses for a command it found but could not run, and one it did not find.
_CANNOT_EXECUTE = (126, 127)
_NO_REPORTS = "Servers on the hub's machine listen on a socket the hub binds; none reports it."
_LISTEN_CODE = resources.files("hubstack.backends").joinpath("listen_fd.py").read_text()
# Where a server's kernels put their connection files and IPC sockets (as root): its private
# /tmp (see _private_tmp), a short path (a Unix socket's is at most 107 bytes) nobody else sees.
_RUNTIME_DIR = "/tmp/jupyter-runtime"
_ANSWER_INTERVAL_S = 0.1
_RELEASE_INTERVAL_S = 0.2
# What the usual chain runs last when a fork server starts the server (see forking.py): it
# says it is in place, then waits for the hub to close its input.
_STANDIN_SCRIPT = 'echo ready && exec "$0"'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _usage(measured: tuple[int, int] | None) -> Usage | None:
    return None if measured is None else Usage(*measured)


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
        self.accounts = Accounts.of(config)
        preference = config.hub.limits if self.accounts.root else "off"
        self.enforcer = cgroups.detect(preference)
        self.data_dir = config.hub.data_dir
        self.shared = shared_folders.SharedFolders(config)
        self._locks: dict[str, threading.Lock] = {}
        self._homes_shared = False
        self._sharing_homes = threading.Lock()
        self.admission = Admission(config.backend.local.concurrent_starts)
        self.forks = ForkServers(self.data_dir / "logs")

    def describe(self) -> str:
        if not self.accounts.root:
            me = accounts.current_account().name
            return (
                f"dev mode: not running as root, so every server runs as {me!r} with no "
                "isolation, no CPU or memory limits and no volumes"
            )
        return (
            f"local backend: servers run as {self.accounts.kind}, limits by {self.enforcer.name}, "
            f"loop-mounted volumes under {self.data_dir / 'storage'}"
        )

    # -- accounts and storage -------------------------------------------------------------

    def _account(self, hub_user: str) -> accounts.Account:
        return self.accounts.account(hub_user, self.local.home_base)

    def _server_image(self, account: str, label: str) -> Path:
        return self.data_dir / "storage/servers" / account / f"{label}.img"

    def _home_image(self, account: str) -> Path:
        return self.data_dir / "storage/homes" / f"{account}.img"

    def storage_use(self, hub_user: str, server_names: Iterable[str]) -> StorageUse:
        """Measured from the images in root's storage directory (see
        :func:`volumes.image_usage`), so stopped servers' volumes count too."""
        if not self.accounts.root:
            return StorageUse()
        name = self.accounts.unix_name(hub_user)
        home = self.local.home_base / name
        if self.accounts.existing:
            try:
                home = existing_account(hub_user).home
            except StartFailed:
                return StorageUse()
        home_use = None
        if not self.accounts.existing:
            home_image = self._home_image(name)
            home_use = _usage(volumes.image_usage(home_image, below=home.parent))
        servers = {
            server: _usage(
                volumes.image_usage(self._server_image(name, server_label(server)), below=home)
            )
            for server in server_names
        }
        return StorageUse(home_use, servers)

    def queue_state(self, state: dict[str, Any]) -> str | None:
        return None

    def _account_lock(self, account: str) -> threading.Lock:
        return self._locks.setdefault(account, threading.Lock())

    def _prepare_storage(self, account: accounts.Account, label: str) -> None:
        """Mount the home and this server's volume at :meth:`_volume`."""
        with self._account_lock(account.name):
            self._mount_storage(account, label)

    def _mount_storage(self, account: accounts.Account, label: str) -> None:
        storage = self.config.policy.storage
        mountpoint = self._volume(account, label)
        if not self.accounts.root:
            mountpoint.mkdir(parents=True, exist_ok=True)
            return
        if not self.accounts.existing:
            self._share_homes()
            home_image = self._home_image(account.name)
            volumes.create_image(home_image, storage.home, account.uid, account.gid)
            volumes.mount(home_image, account.home, account.uid, account.gid)
        image = self._server_image(account.name, label)
        volumes.create_image(image, storage.server_volume, account.uid, account.gid)
        # The home is the user's: ~/volumes is walked from it, never followed.
        volumes.mount(image, mountpoint, account.uid, account.gid, below=account.home)

    def _share_homes(self) -> None:
        """Once per hub, before the first home is mounted: homes unmounted here must leave
        the namespaces of servers started while they were mounted (see system.propagation)."""
        with self._sharing_homes:
            if self._homes_shared:
                return
            if not propagation.share(self.local.home_base):
                log.warning(
                    "Mounts below %s are not shared: a stopped server's home stays busy until "
                    "the servers started while it was mounted end. Unmount them to fix this.",
                    self.local.home_base,
                )
            self._homes_shared = True

    def _volume(self, account: accounts.Account, label: str) -> Path:
        """Where the server's storage is mounted (in dev mode: a plain directory)."""
        if not self.accounts.root:
            return self.data_dir / "dev-storage" / account.name / label
        return account.home / "volumes" / label

    def _share(self, account: accounts.Account, granted: dict[str, bool]) -> list[str]:
        """Mount the ``granted`` shared folders, give the account their groups, and return
        what :meth:`_private_tmp` needs to bind them at ``~/shared/<folder>``: the
        directory, its identity, then each folder's path, name and ``rw`` or ``ro``."""
        if not self.shared.folders:
            return []
        self.shared.prepare(account.name, granted)
        owner = (account.uid, account.gid)
        with self._account_lock(account.name):
            identity = shared_folders.home_folders(account.home, owner, granted)
        if identity is None:
            return []
        binds = [str(account.home / shared_folders.HOME_DIR), identity]
        for name, writable in granted.items():
            binds += [str(self.shared.path(name)), name, "rw" if writable else "ro"]
        return binds

    def _private_tmp(
        self,
        account: accounts.Account,
        volume: Path,
        limits: cgroups.Limits,
        shared: list[str],
    ) -> tuple[list[str], int]:
        """The command prefix giving a server its own /tmp, /var/tmp and /dev/shm, and the
        directory (a descriptor) it must start in.

        /tmp and /var/tmp are directories on the server's volume (so they count against its
        size and nobody fills the disk that holds the hub's database), bound in a mount
        namespace of the server's own; /dev/shm is a tmpfs as large as its memory limit,
        whose pages the kernel charges to the server's memory. The two directories sit in a
        root-owned directory the command starts in (entered through its descriptor, and
        carried into the new namespace by unshare), so the binds name them relative to it
        and no link of the user's can redirect them. The namespace is a slave of the hub's:
        the user's volumes mounted later appear in it, and nothing mounted in it leaks out.

        ``shared`` (from :meth:`_share`) binds shared folders into ``~/shared``, read-only
        where the user may not write. That directory is root's, but lies in the user's
        home: the namespace enters it by path and goes on only if it is the very directory
        the hub prepared (its device and inode), so the binds, relative to it, land there.
        """
        owner = (account.uid, account.gid)
        base = volumes.open_root_owned(volume / ".hubstack/private", account.home, owner)
        try:
            for name in ("tmp", "var-tmp"):
                os.close(own_dir(base, name, account))
        except BaseException:
            os.close(base)
            raise
        shm = limits.memory or self.config.policy.storage.server_volume
        bind = (
            "mount=$1 shm=$2 stat=$3 n=$4; shift 4; "
            'options="--no-canonicalize --bind -o nosuid,nodev" && '
            '"$mount" $options tmp /tmp && "$mount" $options var-tmp /var/tmp && '
            '"$mount" -t tmpfs -o "size=$shm,mode=1777,nosuid,nodev" tmpfs /dev/shm || exit 1; '
            'if [ "$n" -gt 0 ]; then '
            'cd "$1" && [ "$("$stat" -c %d:%i .)" = "$2" ] || '
            '{ echo "hubstack: $1 changed while the server started" >&2; exit 1; }; shift 2; '
            'while [ "$n" -gt 0 ]; do "$mount" $options "$1" "$2" && '
            '{ [ "$3" = rw ] || "$mount" --no-canonicalize -o remount,bind,ro,nosuid,nodev "$2"; '
            "} || exit 1; shift 3; n=$((n - 1)); done; fi; "
            'exec "$@"'
        )
        folders = (len(shared) - 2) // 3 if shared else 0
        prefix = [
            *(tool("unshare"), "--mount", "--propagation", "slave", "--"),
            *(tool("sh"), "-c", bind, "sh", tool("mount"), str(shm), tool("stat"), str(folders)),
            *shared,
        ]
        return prefix, base

    # -- lifecycle --------------------------------------------------------------------------

    async def check_request(self, hub_user: str, request: LaunchRequest) -> str | None:
        """The config is all there is to check against on this machine."""
        return None

    def is_starting(self, state: dict[str, Any]) -> bool:
        """A local start never outlives the hub process that began it."""
        return False

    async def refuse_address(self, state: dict[str, Any], host: str) -> str | None:
        return _NO_REPORTS

    def address_reported(self, state: dict[str, Any], host: str, port: int) -> None:
        """Refused: the hub chose where a local server listens."""
        raise ValueError(_NO_REPORTS)

    def server_socket(self) -> socket.socket:
        """A socket listening on a port of the loopback that the kernel picked, to hand to
        the next server (see ``listen_fd.py``): from the moment the hub knows the port, no
        other program, kernel or server can listen on it."""
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listening.bind(("127.0.0.1", 0))
            listening.listen(socket.SOMAXCONN)
        except OSError:
            listening.close()
            raise
        return listening

    async def start(
        self, spec: ServerSpec, emit: Emit, record: Record, resume: dict[str, Any] | None = None
    ) -> Started:
        if spec.listening is None:
            raise ValueError("a local server needs the socket from server_socket()")
        local = self.config.backend.local
        # Before its turn: waiting for the previous server's teardown takes no CPU.
        await self._previous_released(spec, emit)
        async with self.admission.turn(emit, local.queue_timeout):
            try:
                async with asyncio.timeout(local.start_timeout) as limit:
                    return await self._start(spec, emit)
            except TimeoutError:
                if not limit.expired():
                    raise
                raise StartFailed(
                    f"Your server did not answer within {format_duration(local.start_timeout)} "
                    "of its start (backend.local.start_timeout); an admin can raise it.",
                    reason="timeout",
                ) from None

    async def _previous_released(self, spec: ServerSpec, emit: Emit) -> None:
        """Wait until the file systems of this server's previous run have been released.

        A stopped server's home and volume are unmounted at once, but each lives on (its
        loop device bound) while anything still holds it: the stopped server's last
        processes as the kernel ends them, or another mount namespace that copied it. A
        second mount of a file system still alive would corrupt it, so a start right after
        a stop waits here, at most ``backend.local.start_timeout``.
        """
        if not self.accounts.root:
            return
        name = self.accounts.unix_name(spec.hub_user)
        images = [self._server_image(name, spec.label)]
        if not self.accounts.existing:
            images.append(self._home_image(name))
        timeout = self.config.backend.local.start_timeout
        deadline = time.monotonic() + timeout
        told = False
        while held := [
            image for image in images if await asyncio.to_thread(volumes.is_held, image)
        ]:
            if time.monotonic() > deadline:
                holders = await asyncio.to_thread(volumes.holders, held[0])
                log.warning(
                    "%s is still held after %s, by the mount namespaces of processes %s",
                    held[0],
                    format_duration(timeout),
                    holders or "that have ended meanwhile",
                )
                raise StartFailed(
                    "Your previous server's storage is still in use "
                    f"{format_duration(timeout)} after it stopped, so it cannot be mounted "
                    "again yet (backend.local.start_timeout). Try again in a while; an admin "
                    "finds what holds it in the hub's log.",
                    reason="storage",
                )
            if not told:
                emit("Waiting for your previous server's storage to be released")
                told = True
            await asyncio.sleep(_RELEASE_INTERVAL_S)

    async def _start(self, spec: ServerSpec, emit: Emit) -> Started:
        emit("Preparing your account")
        account = await asyncio.to_thread(self._account, spec.hub_user)
        volume = self._volume(account, spec.label)
        plan = server_plan(
            self.config,
            spec.request,
            spec.server_name,
            account,
            volume,
            spec.env,
            spec.built,
            listen_code=_LISTEN_CODE,
        )
        state: dict[str, Any] = {
            "unit": plan.unit,
            "account": account.name,
            "label": plan.label,
            "memory": plan.limits.memory,
            "log": str(self.data_dir / "logs" / account.name / f"{plan.label}.log"),
        }
        if self.accounts.root:
            state["volume"] = str(volume)
        try:
            await self._launch(spec, plan, account, volume, state, emit)
        except BaseException:
            # A failed, timed-out or cancelled start leaves nothing behind: no process,
            # no cgroup, no mount. Shielded, so a second cancellation cannot cut it short.
            await asyncio.shield(asyncio.to_thread(self._abandon, state))
            raise
        return Started("127.0.0.1", spec.port, state)

    async def _launch(
        self,
        spec: ServerSpec,
        plan: ServerPlan,
        account: accounts.Account,
        volume: Path,
        state: dict[str, Any],
        emit: Emit,
    ) -> None:
        """Mount storage, create the cgroup, place ``plan`` in them as the user and wait
        until the server answers.

        Everything acquired is recorded in ``state`` as it happens, so that
        :meth:`_abandon` can release exactly that when the start does not complete.
        """
        machine, environment = spec.request.machine, spec.request.environment
        if self.accounts.root:
            emit(f"Mounting your storage ({format_size(self.config.policy.storage.server_volume)})")
        try:
            await asyncio.to_thread(self._prepare_storage, account, plan.label)
        except SystemOpError as exc:
            raise StartFailed(
                f"Your storage could not be prepared: {exc}", reason="storage"
            ) from None
        wanted = plan.limits
        limits = cgroups.Limits(cpu=wanted.cpu, memory=wanted.memory, pids=wanted.processes)
        group = await asyncio.to_thread(self.enforcer.prepare, plan.unit, limits)
        state["oom_kills"] = group.oom_kills()
        fork = await self._fork_server(spec, plan, group)
        if spec.built is not None:
            await place_files(spec.built, volume, account if self.accounts.root else None)
        log_path = Path(state["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        base: int | None = None
        if self.accounts.root:
            # As root, everything up to the server runs in the server's cgroup and mount
            # namespace; setpriv then becomes the user, and only then does env enter the
            # user's directory (root never resolves the user's path).
            try:
                granted = self.shared.grants(spec.groups, spec.admin)
                shared = await asyncio.to_thread(self._share, account, granted)
            except SystemOpError as exc:
                raise StartFailed(
                    f"Your groups' shared folders could not be prepared: {exc}", reason="storage"
                ) from None
            try:
                private, base = await asyncio.to_thread(
                    self._private_tmp, account, volume, limits, shared
                )
            except SystemOpError as exc:
                raise StartFailed(
                    f"Your server's temporary directories could not be prepared: {exc}",
                    reason="storage",
                ) from None
            as_user = [
                *accounts.switch_to(account, init_groups=True),
                *(tool("env"), f"--chdir={plan.workdir}"),
            ]
            server = list(plan.argv) if fork is None else self._standin()
            argv, cwd = [*private, *as_user, "--", *server], f"/proc/self/fd/{base}"
        else:
            argv, cwd = list(plan.argv), str(plan.workdir)
        cmd = self.enforcer.wrap_command(plan.unit, limits, argv)
        assert spec.listening is not None
        fd = spec.listening.fileno()
        env = {**plan.env, LISTEN_FD: str(fd)}
        if self.accounts.root:
            env["JUPYTER_RUNTIME_DIR"] = _RUNTIME_DIR
        else:
            # No private /tmp in dev mode, and the home may be too deep for a socket's path:
            # a directory of the hub's own account (the server's) that only it can enter.
            state["runtime"] = tempfile.mkdtemp(prefix="hubstack-runtime-")
            env["JUPYTER_RUNTIME_DIR"] = state["runtime"]

        emit(f"Starting {environment.display} on {machine.display}")
        with log_path.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=cwd,
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL if fork is None else subprocess.PIPE,
                    stdout=log if fork is None else subprocess.PIPE,
                    stderr=subprocess.STDOUT if fork is None else log,
                    preexec_fn=group.attach_self,
                    start_new_session=True,
                )
            except (PermissionError, FileNotFoundError) as exc:
                raise self._unusable(spec, plan, account, exc.strerror) from None
            finally:
                if base is not None:
                    os.close(base)
            state["pid"] = proc.pid
            status: Callable[[], int | None] = proc.poll
            if fork is not None:
                start = {
                    "standin": proc.pid,
                    "uid": account.uid,
                    "gid": account.gid,
                    "cgroup_procs": group.procs_files(),
                    "env": plan.env | {"JUPYTER_RUNTIME_DIR": _RUNTIME_DIR},
                    "argv": server_argv(plan.argv, plan.executable),
                    "kernel_parent": self.local.fork_kernels,
                    "exec": list(plan.argv),  # if the child must start it afresh
                }
                if spec.built is not None:
                    start["environment"] = {
                        "prefix": str(plan.prefix),
                        "python": str(plan.prefix / PYTHON),
                        # a conda environment holds the server packages itself
                        "alone": spec.built.fork_layer is not None,
                    }
                pid = await self._fork_in(fork, proc, start, fd, log.fileno(), state)
                state["pid"], state["forked"] = pid, True
                status = functools.partial(self._status, state)
        prefix = spec.env["JUPYTERHUB_SERVICE_PREFIX"]
        await self._wait_answering(status, spec, plan, account, prefix, state)

    def _standin(self) -> list[str]:
        return [tool("sh"), "-c", _STANDIN_SCRIPT, tool("cat")]

    async def _fork_server(
        self, spec: ServerSpec, plan: ServerPlan, group: cgroups.Cgroup
    ) -> ForkServer | None:
        """The environment's fork server, if this start may use one (see forking.py)."""
        if not (self.local.fork_server and self.accounts.root):
            return None
        if group.procs_files() is None or not forkable(plan.env):
            return None
        built = spec.built
        python = plan.prefix / PYTHON
        if built is not None:
            found = await asyncio.to_thread(layer_python, built)
            if found is None:
                return None
            python = found
        if not await asyncio.to_thread(root_only, python.parent.parent, python):
            return None
        fork = self.forks.of(python)
        try:
            await asyncio.to_thread(fork.ensure_started)
        except ForkFailed as exc:
            log.warning("starting servers without a fork server: %s", exc)
            return None
        return fork

    async def _fork_in(
        self,
        fork: ForkServer,
        proc: subprocess.Popen[bytes],
        start: dict[str, Any],
        listening: int,
        log_fd: int,
        state: dict[str, Any],
    ) -> int:
        """Fork the server in place of the stand-in ``proc`` once it is ready; then let the
        stand-in end (the server holds its namespace and cgroup from then on)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = await asyncio.to_thread(proc.stdout.readline)
            if ready != b"ready\n":
                ended = self._ended(await asyncio.to_thread(proc.wait), state)
                tail = log_tail(Path(state["log"]))
                raise StartFailed(
                    f"Your server could not be prepared: {ended.reason}."
                    + (f"\nLast lines of its log:\n{tail}" if tail else ""),
                    reason="exited",
                )
            timeout = self.local.start_timeout
            try:
                return await asyncio.to_thread(fork.fork, start, listening, log_fd, timeout)
            except ForkFailed as exc:
                raise StartFailed(
                    f"Your server could not be started: {exc}", reason="exited"
                ) from None
        finally:
            proc.stdin.close()
            proc.stdout.close()
            await asyncio.shield(asyncio.to_thread(proc.wait))

    def _status(self, state: dict[str, Any]) -> int | None:
        """The server's exit status once it has ended, else None; see :func:`_reap`."""
        pid = state["pid"]
        if state.get("forked"):
            status = self.forks.exit_status(pid)
            if status is not None:
                return status
        return _reap(pid)

    def _unusable(
        self, spec: ServerSpec, plan: ServerPlan, account: accounts.Account, why: str | None
    ) -> StartFailed:
        return StartFailed(
            f"The environment {spec.request.environment.display!r} cannot be started: "
            f"{plan.executable} is missing or not usable by {account.name} ({why}).",
            reason="environment",
        )

    async def _wait_answering(
        self,
        status_of: Callable[[], int | None],
        spec: ServerSpec,
        plan: ServerPlan,
        account: accounts.Account,
        prefix: str,
        state: dict[str, Any],
    ) -> None:
        """Return once the server answers as itself; explain it if the server dies first.

        JupyterHub would only notice a dead server after its HTTP wait times out, and then
        with a bare status; waiting here lets the user read the real cause. The port is the
        socket the hub bound and handed to this server alone, so whatever listens there is
        this server's process (or one it passed the socket to); it must still answer its own
        API at its own prefix (see :func:`answers_as_itself`), or the start keeps waiting and
        ends with JupyterHub's timeout instead of sending the user there. A request sent
        before the server accepts waits in the socket's queue and is answered once it does.
        """
        while True:
            status = status_of()
            if status is not None:
                if status in _CANNOT_EXECUTE:
                    raise self._unusable(spec, plan, account, f"exit status {status}")
                ended = self._ended(status, state)
                message = f"Your server stopped while starting: {ended.reason}."
                tail = log_tail(Path(state["log"]))
                if tail and not ended.out_of_memory:
                    message += f"\nLast lines of its log:\n{tail}"
                raise StartFailed(message, reason="oom" if ended.out_of_memory else "exited")
            if await answers_as_itself("127.0.0.1", spec.port, prefix):
                return
            await asyncio.sleep(_ANSWER_INTERVAL_S)

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

    def measure(self, state: dict[str, Any]) -> tuple[float | None, int | None]:
        """CPU-seconds and peak memory of the server's cgroup; blocking (a thread)."""
        if "unit" not in state:
            return None, None
        return self._group(state).usage()

    def new_oom_kills(self, state: dict[str, Any]) -> int:
        if "unit" not in state:
            return 0
        count = self._group(state).oom_kills()
        new = count - state.get("oom_kills", 0)
        state["oom_kills"] = count
        return max(new, 0)

    async def poll(self, state: dict[str, Any]) -> Exit | None:
        if not state.get("pid"):
            return Exit(0)
        status = self._status(state)
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
        status = self._status(state)
        while status is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = self._status(state)
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
        if state.get("runtime"):
            shutil.rmtree(state["runtime"], ignore_errors=True)
        if not self.accounts.root or not state.get("volume"):
            return
        name, home = state["account"], Path(state["volume"]).parent.parent
        with self._account_lock(name):
            # Found from the kernel's mount table, wherever the user moved it in the home.
            volumes.unmount_image(self._server_image(name, state["label"]), below=home)
            images = (self.data_dir / "storage/servers" / name).glob("*.img")
            if not self.accounts.existing and not any(map(volumes.is_in_use, images)):
                volumes.unmount(home)

    async def delete(self, hub_user: str, server_name: str) -> None:
        if not self.accounts.root:
            return
        account = await asyncio.to_thread(self._account, hub_user)
        image = self._server_image(account.name, server_label(server_name))
        await asyncio.to_thread(self._remove_volume, account, image)

    def _remove_volume(self, account: accounts.Account, image: Path) -> None:
        with self._account_lock(account.name):
            volumes.unmount_image(image, below=account.home)
            volumes.remove_image(image, None)
