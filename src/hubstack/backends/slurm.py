"""The Slurm backend: each server is a batch job of its user, watched by one shared poller.

A start renders the site's job script, submits it as the user and records the job id at
once (so a hub restart finds the job again), then streams the scheduler's view of it
(queued where, why, in which position, expected when) until the server on the compute node
reports its address to the hub. How a job ended is read from ``sacct`` when accounting is
on, else from the job's own log, and told to the user in words.

Storage: the user's home is the site's shared home (``backend.slurm.shared.home_base``);
with ``shared.volumes`` set, each server also gets its own directory there, removed when
the server is deleted. Hard size limits on those are the shared filesystem's quotas. Root
makes only the account's directories under those two root-owned bases; everything in them
(the job logs' directory, the server's directory and its link) is made, read and removed as
the user, or through descriptors checked to be the user's. Groups' shared folders are
mounted by the hub under ``shared.groups``, which every node must see (see
:mod:`hubstack.system.shared_folders`); the job links them at ``~/shared`` as the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shlex
import shutil
import socket
import time
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from hubstack.backends.base import (
    LOG_TAIL_LINES,
    Emit,
    Exit,
    Record,
    ServerSpec,
    Started,
    StartFailed,
    StorageUse,
    log_tail,
)
from hubstack.backends.runas import Accounts, existing_account
from hubstack.backends.server import answers_as_itself, place_files
from hubstack.cluster.budget import refusal
from hubstack.cluster.records import store_for
from hubstack.config import Config
from hubstack.hub import metrics
from hubstack.launch import LaunchRequest
from hubstack.launch.plan import ALL_ADDRESSES, server_label, server_plan
from hubstack.launch.slurm_fields import SlurmRequest
from hubstack.slurm.client import JobEnd, Slurm, SlurmError, is_active, reason_from_log
from hubstack.slurm.jobscript import JobScript, JobScriptError, render_job_script, shared_links
from hubstack.slurm.watcher import JobWatcher, Tracked
from hubstack.system import SystemOpError, accounts, shared_folders, tool, userpaths
from hubstack.units import slurm_time

log = logging.getLogger("hubstack.slurm")

REPORT_ROUTE = "hubstack/server-address"
"""The hub API route (under ``/hub/api/``) a job reports its server's address to."""

STOP_WAIT_SECONDS = 60.0
SACCT_WAIT_SECONDS = 15.0
FIRST_ANSWER_WAIT_SECONDS = 30.0

# Run as the user: the job log directory, and the server's directory with its link in the
# home unless something is already there (the user's own choice).
_PREPARE = """set -e
mkdir=$1 ln=$2 jobs=$3 volume=$4 link=$5
"$mkdir" -p -- "$jobs"
if [ -n "$volume" ]; then
    "$mkdir" -p -- "$volume" "${link%/*}"
    [ -e "$link" ] || [ -L "$link" ] || "$ln" -s -- "$volume" "$link"
fi
"""
# Run as the user: remove the server's link, if it is one.
_UNLINK = '[ ! -L "$2" ] || "$1" -f -- "$2"'

_REPORTER = resources.files("hubstack.backends").joinpath("report_address.py").read_text()


def _check_label(label: str) -> None:
    """A server's name becomes a path component: it must be one, and only one."""
    if label in (".", "..") or "/" in label or "\0" in label:
        raise StartFailed(f"A server cannot be named {label!r}.", reason="name")


async def _addresses(names: set[str]) -> set[str]:
    """The addresses ``names`` resolve to (on the hub, which connects to them)."""
    loop = asyncio.get_running_loop()
    found: set[str] = set()
    for name in names:
        with contextlib.suppress(OSError):
            entries = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            found.update(str(entry[4][0]) for entry in entries)
    return found


def _when(moment: datetime) -> str:
    """``14:05`` today, ``Nov 23 14:05`` on another day: how a person reads a start time."""
    if moment.date() == datetime.now(moment.tzinfo).date():
        return moment.strftime("%H:%M")
    return moment.strftime("%b %d %H:%M")


def describe_job(
    tracked: Tracked, typical_boot: float | None = None, no_node: str | None = None
) -> str:
    """The scheduler's view of a waiting job, in one sentence for the progress stream;
    ``typical_boot``: recent boots of the node group a configuring job waits for;
    ``no_node``: why no elastic node of a pending job's partition can start."""
    info, job = tracked.info, tracked.job_id
    if info is None:
        if tracked.unknown_since is not None:
            return f"Job {job} is submitted; the scheduler is not answering right now"
        return f"Job {job} is submitted"
    if tracked.unknown_since is not None:
        return f"The scheduler is not answering; job {job} was last seen {info.state}"
    if info.state == "PENDING":
        words = [f"Job {job} is queued on partition {info.partition}"]
        details = []
        if info.reason and info.reason != "None":
            details.append(f"reason {info.reason}")
        if info.position:
            details.append(f"position {info.position}")
        if info.start_time:
            details.append(f"expected start {_when(info.start_time)}")
        if no_node:
            details.append(f"no node can start: {no_node}")
        return ", ".join([*words, *details])
    if info.state == "RUNNING":
        return f"Job {job} is running on {info.nodes}; waiting for the server to start"
    if info.state == "CONFIGURING":
        typically = f" (typically ~{round(typical_boot)} s)" if typical_boot is not None else ""
        return f"Job {job}: starting a node for you{typically}"
    return f"Job {job} is {info.state}"


class SlurmBackend:
    """Start servers as Slurm jobs; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.backend.slurm
        self.accounts = Accounts.of(config)
        self.slurm = Slurm(self.settings.bin_dir, self.settings.submit_as)
        self.watcher = JobWatcher(
            self.slurm,
            self.settings.poll_interval,
            self.settings.pending_poll_interval,
            self.settings.unknown_grace,
        )
        self._addresses: dict[str, asyncio.Future[None]] = {}
        self.shared = shared_folders.SharedFolders(config)

    def describe(self) -> str:
        return (
            f"slurm backend: servers run as batch jobs of {self.accounts.kind}, submitted with "
            f"{self.settings.submit_as}; one squeue every {self.settings.poll_interval:g} s "
            f"for all jobs ({self.settings.pending_poll_interval:g} s while any is queued)"
        )

    # -- accounts and storage ---------------------------------------------------------------
    #
    # The home and everything in it are the user's, who can replace any part of them by a
    # link at any moment: root creates only what must be created as root (a home under the
    # root-owned home base, ``<shared.volumes>/<account>``) through checked descriptors, and
    # does everything inside them as the user (see hubstack.system.userpaths).

    def _account(self, hub_user: str) -> accounts.Account:
        """The Unix account the user's jobs run as, with its home: never root nor the hub's
        own (a hub that is not root submits through sudo, as the user's existing account)."""
        if self.accounts.root:
            account = self.accounts.account(hub_user, self.settings.shared.home_base)
        else:
            account = existing_account(self.accounts.unix_name(hub_user))
        if account.uid in (0, os.geteuid()):
            raise StartFailed(
                f"Jobs never run as {account.name}, the hub's own account or root.",
                reason="account",
            )
        if self.accounts.root and not os.path.lexists(account.home):
            self._root_dir(account.home.parent, account.home.name, account)
        return account

    @staticmethod
    def _root_dir(base: Path, name: str, account: accounts.Account) -> None:
        """Create ``<base>/<name>`` for ``account`` (kept if it is already theirs), where
        ``base`` must be root's alone (created if missing)."""
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            base_fd = userpaths.open_root_dir(base)
            try:
                os.close(userpaths.own_dir(base_fd, name, account))
            finally:
                os.close(base_fd)
        except SystemOpError as exc:
            raise StartFailed(f"Your storage cannot be prepared: {exc}", reason="storage") from None

    async def _prepare(self, account: accounts.Account, label: str) -> Path:
        """Make the job log directory and, with ``shared.volumes``, the server's own directory
        linked at ``~/volumes/<server>`` (as on the local backend), and return the directory
        the server opens first.

        The link keeps that directory inside the server's root directory (the home), which
        Jupyter requires of the directory it opens first. A hub that is not root has no
        rights in the user's home: the site provides ``~/.hubstack/jobs`` there, and servers
        get no directory of their own.
        """
        base = self.settings.shared.volumes
        if not self.accounts.root:
            return account.home
        link = account.home / "volumes" / label
        if base is not None:
            await asyncio.to_thread(self._root_dir, base, account.name, account)
        try:
            await userpaths.as_user(
                account,
                "sh",
                "-c",
                _PREPARE,
                "sh",
                tool("mkdir"),
                tool("ln"),
                str(account.home / ".hubstack/jobs"),
                "" if base is None else str(base / account.name / label),
                str(link),
            )
        except SystemOpError as exc:
            raise StartFailed(f"Your storage cannot be prepared: {exc}", reason="storage") from None
        return account.home if base is None else link

    async def job_account(self, hub_user: str) -> accounts.Account:
        """The account a job of ``hub_user`` other than a server (a copy job) runs as, with
        its job log directory ``~/.hubstack/jobs`` made as the user."""
        account = await asyncio.to_thread(self._account, hub_user)
        if self.accounts.root:
            jobs = str(account.home / ".hubstack/jobs")
            try:
                await userpaths.as_user(
                    account, "sh", "-c", _PREPARE, "sh", tool("mkdir"), tool("ln"), jobs, "", ""
                )
            except SystemOpError as exc:
                raise StartFailed(
                    f"Your job log directory cannot be made: {exc}", reason="storage"
                ) from None
        return account

    # -- lifecycle ----------------------------------------------------------------------------

    async def _share(self, spec: ServerSpec, account: accounts.Account) -> str:
        """Mount the shared folders the user's groups grant under ``shared.groups`` and
        give the account their groups (which the job's processes get on every node from the
        site's shared account database); the job script links them at ``~/shared``. A hub
        that is not root can do neither, and offers no shared folders."""
        if not self.shared.folders or not self.accounts.root:
            return ""
        granted = self.shared.grants(spec.groups, spec.admin)
        try:
            await asyncio.to_thread(self.shared.prepare, account.name, granted)
        except SystemOpError as exc:
            raise StartFailed(
                f"Your groups' shared folders could not be prepared: {exc}", reason="storage"
            ) from None
        return shared_links(self.shared.mounts, granted)

    async def check_request(self, hub_user: str, request: LaunchRequest) -> str | None:
        """Check the choice against the scheduler's own view (cached), before submitting.

        The config says what the site offers; the scheduler says what exists now and what
        this user may charge. If it cannot be asked, the config alone decides, and sbatch's
        own answer reaches the user if the job is refused.
        """
        if request.slurm is None:
            return None
        return await self.check_slurm(hub_user, request.slurm)

    async def check_slurm(self, hub_user: str, wanted: SlurmRequest) -> str | None:
        """Why the scheduler would refuse ``wanted`` for ``hub_user`` (a server's job or a
        copy job), or None."""
        try:
            partitions = await self.slurm.partitions()
            member_of = await self.slurm.user_accounts(self.accounts.unix_name(hub_user))
        except SlurmError as exc:
            log.warning("cannot check a request against the scheduler: %s", exc)
            return None
        if wanted.partition is not None:
            partition = partitions.get(wanted.partition)
            if partition is None:
                known = ", ".join(sorted(partitions)) or "none"
                return (
                    f"Partition {wanted.partition} does not exist on the cluster (it has: {known})."
                )
            if partition.max_time is not None and wanted.walltime > partition.max_time:
                return (
                    f"Wall time {slurm_time(wanted.walltime)} is longer than the "
                    f"{slurm_time(partition.max_time)} limit of partition {partition.name}."
                )
        if wanted.account is not None and member_of and wanted.account not in member_of:
            return (
                f"You cannot charge Slurm account {wanted.account}; "
                f"your accounts are: {', '.join(member_of)}."
            )
        return None

    def is_starting(self, state: dict[str, Any]) -> bool:
        """A job was submitted but its server has not reported where it listens yet."""
        return bool(state.get("job_id")) and not state.get("host")

    async def start(
        self, spec: ServerSpec, emit: Emit, record: Record, resume: dict[str, Any] | None = None
    ) -> Started:
        if resume:
            state = resume
            emit(f"Found your job {state['job_id']} again after a hub restart")
        else:
            state = await self._submit(spec, emit)
            record(state)
        submitted = time.monotonic()
        tracked = self.watcher.track(state["job_id"])
        tracked.urgent = True
        try:
            await self._wait_for_address(state, tracked, emit)
            if not resume:
                metrics.SLURM_QUEUE_WAIT.observe(time.monotonic() - submitted)
            await self._wait_listening(state, tracked, spec.env["JUPYTERHUB_SERVICE_PREFIX"])
        finally:
            tracked.urgent = False
        return Started(state["host"], state["port"], state)

    async def _submit(self, spec: ServerSpec, emit: Emit) -> dict[str, Any]:
        emit("Preparing your account")
        _check_label(spec.label)
        account = await asyncio.to_thread(self._account, spec.hub_user)
        volume = await self._prepare(account, spec.label)
        request = spec.request
        assert request.slurm is not None, "the launch layer resolves Slurm fields"
        plan = server_plan(
            self.config, request, spec.server_name, account, volume, spec.env, spec.built
        )
        if spec.built is not None:
            await place_files(spec.built, volume, account if self.accounts.root else None)
        shared = await self._share(spec, account)
        job = JobScript(
            job_name=plan.unit,
            output=str(account.home / ".hubstack/jobs" / f"{plan.label}-%j.log"),
            workdir=str(plan.workdir),
            request=request.slurm,
            prologue=self.settings.prologue,
            reporter=(
                # $$ is the job script's shell, which becomes the server with ``exec``.
                f"port=$(HUBSTACK_SERVER_PID=$$ {shlex.join([*plan.python, '-c', _REPORTER])})\n"
                # The server learns its own address from this (known only on the node).
                f'export JUPYTERHUB_SERVICE_URL="http://{ALL_ADDRESSES}:${{port}}'
                '${JUPYTERHUB_SERVICE_PREFIX}"'
            ),
            command=plan.argv,
            shared=shared,
        )
        try:
            script = render_job_script(self.settings.script, job)
        except JobScriptError as exc:
            raise StartFailed(
                f"The job script cannot be written: {exc.message}", reason="slurm"
            ) from None
        env = {
            **plan.env,
            "HUBSTACK_REPORT_URL": f"{plan.env['JUPYTERHUB_API_URL'].rstrip('/')}/{REPORT_ROUTE}",
            "HUBSTACK_PORT_RANGE": self.settings.port_range,
        }
        emit(f"Submitting a job to partition {request.slurm.partition or '(default)'}")
        try:
            job_id = await self.slurm.submit(script, account.name, env, account.home)
        except SlurmError as exc:
            raise StartFailed(f"Slurm refused the job: {exc}", reason="slurm") from None
        return {
            "job_id": job_id,
            "account": account.name,
            "label": plan.label,
            "volume": str(volume),
            "log": job.output.replace("%j", job_id),
            # Kept so a start interrupted by a hub restart can take its job back: the
            # server in that job authenticates with this token. The hub database holding
            # it is readable by root only, like the hub's own secrets.
            "api_token": spec.env["JUPYTERHUB_API_TOKEN"],
        }

    def server_socket(self) -> None:
        """None: a job's server binds a port on its node and reports it (report_address)."""
        return None

    async def refuse_address(self, state: dict[str, Any], host: str) -> str | None:
        """Why ``host`` is not where the job's server can listen; None if it is.

        Only the node Slurm runs the job's script on counts: the names and address Slurm knows
        it by, or an address those names resolve to. Otherwise a job, or anyone holding its
        server's token, could send the user's route (and their requests) to another host.
        Raises :class:`SlurmError` when the scheduler cannot say where the job runs.
        """
        job_id = state.get("job_id")
        if not self.is_starting(state):
            return None  # address_reported says so
        tracked = self.watcher.jobs.get(job_id)
        info = tracked.info if tracked is not None else None
        if info is None or info.state != "RUNNING" or not info.batch_host:
            # The job reports as soon as it starts, often before the watcher's next query.
            info = (await self.slurm.queue([job_id])).get(job_id)
        if info is None or info.state != "RUNNING" or not info.batch_host:
            return f"Job {job_id} is not running on any node, so it has no address to report."
        node = info.batch_host
        if host.lower() == node.lower():
            return None
        names = {node, *await self.slurm.node_names(node)}
        if host.lower() in {name.lower() for name in names}:
            return None
        if host in await _addresses(names):
            return None
        return (
            f"Job {job_id} runs on node {node}: its server must report {node} or an address "
            f"of that node, not {host}."
        )

    def address_reported(self, state: dict[str, Any], host: str, port: int) -> None:
        """The job's server said where it listens (through the hub's authenticated route)."""
        if not self.is_starting(state):
            raise ValueError("this server is not waiting for its address")
        state["host"], state["port"] = host, port
        waiter = self._addresses.get(state["job_id"])
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _fail_if_ended(self, state: dict[str, Any], tracked: Tracked) -> None:
        """Raise the job's end, in words with its log's last lines, if it is no longer active."""
        if tracked.active:
            return
        ended = await self._why_ended(state, tracked)
        message = f"Your job {state['job_id']} ended before the server started: {ended}."
        tail = await self._job_log(state)
        if tail:
            message += f"\nLast lines of its log:\n{tail}"
        raise StartFailed(message, reason="slurm")

    async def _job_log(self, state: dict[str, Any], lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the job's log, in a thread: it is in the user's home, so only a
        regular file of the job's account is read (see :func:`log_tail`)."""

        def read() -> str:
            try:
                owner = pwd.getpwnam(state["account"]).pw_uid
            except KeyError:
                return ""
            return log_tail(Path(state["log"]), lines, owner=owner)

        return await asyncio.to_thread(read)

    async def _wait_listening(self, state: dict[str, Any], tracked: Tracked, prefix: str) -> None:
        """Return once the server at the reported address answers as itself (not merely
        something listening there), or say why the job ended.

        Without this, a server dying right after its report would surface only as
        JupyterHub's bare HTTP timeout.
        """
        while True:
            await self._fail_if_ended(state, tracked)
            if await answers_as_itself(state["host"], state["port"], prefix):
                return
            await asyncio.sleep(0.05)

    async def _wait_for_address(self, state: dict[str, Any], tracked: Tracked, emit: Emit) -> None:
        """Stream the job's progress until its server reports its address, or the job ends."""
        job_id = state["job_id"]
        waiter = self._addresses[job_id] = asyncio.get_running_loop().create_future()
        said = ""
        try:
            while not state.get("host"):
                await self._fail_if_ended(state, tracked)
                sentence = describe_job(
                    tracked, self._typical_boot(tracked), self._no_node(tracked)
                )
                if sentence != said:
                    emit(sentence)
                    said = sentence
                tracked.changed.clear()
                changed = asyncio.ensure_future(tracked.changed.wait())
                try:
                    await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            self._addresses.pop(job_id, None)
        emit(f"Job {job_id}: the server listens on {state['host']}:{state['port']}")

    def _typical_boot(self, tracked: Tracked) -> float | None:
        """How long the elastic cluster's recent boots of a configuring job's node took."""
        info, cluster = tracked.info, self.config.cluster
        if info is None or info.state != "CONFIGURING" or not cluster.node_groups:
            return None
        group = next((g for g in cluster.node_groups if info.nodes in g.nodes()), None)
        return store_for(self.config).read().typical_boot(group.name) if group else None

    def _no_node(self, tracked: Tracked) -> str | None:
        """Why no elastic node can start for a pending job: every node group serving its
        partition has spent its budget (the first one's reason)."""
        info, groups = tracked.info, self.config.cluster.node_groups
        serving = [g for g in groups if info is not None and g.partition == info.partition]
        if info is None or info.state != "PENDING" or not serving:
            return None
        records = store_for(self.config).read()
        reasons = [refusal(group, self.config.usage, records) for group in serving]
        return reasons[0] if all(reasons) else None

    async def _why_ended(self, state: dict[str, Any], tracked: Tracked) -> str:
        """How the job ended, in words: sacct first (it lags squeue a little), then its log."""
        job_id = state["job_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SACCT_WAIT_SECONDS
        end: JobEnd | None = None
        while end is None and loop.time() < deadline:
            with contextlib.suppress(SlurmError):
                end = await self.slurm.ended(job_id)
            if end is None or end.state in ("PENDING", "RUNNING"):
                end = None
                await asyncio.sleep(1)
        if end is None:
            end = reason_from_log(await self._job_log(state, lines=200))
        if end is not None:
            return end.reason
        last = tracked.info.state if tracked.info else "unknown"
        return f"it left the queue (last seen {last})"

    async def poll(self, state: dict[str, Any]) -> Exit | None:
        job_id = state.get("job_id")
        if not job_id:
            return Exit(0)
        tracked = self.watcher.track(job_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracked.first_answer.wait(), FIRST_ANSWER_WAIT_SECONDS)
        if tracked.active:
            return None
        reason = await self._why_ended(state, tracked)
        self.watcher.forget(job_id)
        ended_at, used = await self._accounted_end(job_id)
        return Exit(1, reason, out_of_memory="memory" in reason, ended_at=ended_at, used=used)

    async def _accounted_end(
        self, job_id: str
    ) -> tuple[datetime | None, tuple[float | None, int | None] | None]:
        """When accounting says the job ended (``_why_ended`` has waited for its record)
        and what it used; None for what it cannot say."""
        with contextlib.suppress(SlurmError):
            job = (await self.slurm.accounted([job_id]) or {}).get(job_id)
            if job is not None and not is_active(job.state):
                return job.end, await self.slurm.used(job_id)
        return None, None

    async def stop(self, state: dict[str, Any]) -> Exit | None:
        job_id = state.get("job_id")
        if not job_id:
            return None
        tracked = self.watcher.track(job_id)
        tracked.urgent = True
        with contextlib.suppress(SlurmError):
            await self.slurm.cancel(job_id)
        self.watcher.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_SECONDS
        while tracked.active and loop.time() < deadline:
            tracked.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracked.changed.wait(), 2)
        self.watcher.forget(job_id)
        return Exit(0)

    def storage_use(self, hub_user: str, server_names: Iterable[str]) -> StorageUse:
        """Not measured: the home and volumes are on the site's shared file system, whose
        quotas are its own (and reading them would walk users' directories)."""
        return StorageUse()

    def queue_state(self, state: dict[str, Any]) -> str | None:
        """From the watcher's last query (no new one: a page view must not load the
        scheduler), e.g. ``PENDING (Resources)`` or ``RUNNING on node1``."""
        tracked = self.watcher.jobs.get(state.get("job_id", ""))
        if tracked is None or tracked.info is None:
            return None
        info = tracked.info
        if info.state == "PENDING" and info.reason and info.reason != "None":
            return f"PENDING ({info.reason})"
        if info.state == "RUNNING" and info.nodes:
            return f"RUNNING on {info.nodes}"
        return info.state

    def measure(self, state: dict[str, Any]) -> tuple[float | None, int | None]:
        """Not measured while a job runs: sacct reports a job's use once it has ended."""
        return None, None

    def new_oom_kills(self, state: dict[str, Any]) -> int:
        """Slurm reports a job killed for memory as its end state; nothing to count here."""
        return 0

    async def delete(self, hub_user: str, server_name: str) -> None:
        """Remove the server's own directory and its link, never anything a link leads to."""
        base = self.settings.shared.volumes
        if base is None or not self.accounts.root:
            return
        label = server_label(server_name)
        _check_label(label)
        account = await asyncio.to_thread(self._account, hub_user)
        link = account.home / "volumes" / label
        try:
            await userpaths.as_user(account, "sh", "-c", _UNLINK, "sh", tool("rm"), str(link))
        except SystemOpError as exc:
            log.warning("cannot remove %s's link to volume %s: %s", account.name, label, exc)
        await asyncio.to_thread(self._remove_volume, base, account, label)

    @staticmethod
    def _remove_volume(base: Path, account: accounts.Account, label: str) -> None:
        """``rm -r <base>/<account>/<label>`` from descriptors: the account's directory must
        be the user's own under the root-owned base, and nothing below it is followed."""
        try:
            base_fd = userpaths.open_root_dir(base)
            try:
                mine = userpaths.own_dir(base_fd, account.name, account, create=False)
            finally:
                os.close(base_fd)
        except FileNotFoundError:
            return
        except SystemOpError as exc:
            log.warning("not deleting %s's volume %s: %s", account.name, label, exc)
            return
        try:
            shutil.rmtree(label, dir_fd=mine, ignore_errors=True)
        finally:
            os.close(mine)
