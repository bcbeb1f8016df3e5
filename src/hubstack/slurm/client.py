"""A Slurm client for the hub: submit, watch, explain and cancel batch jobs.

The hub runs as root and drives Slurm's own commands (``sbatch``, ``squeue``, ``sacct``,
``scancel``, ``sinfo``, ``sacctmgr``) without a shell, each with a time limit. A command that
fails raises :class:`SlurmError` carrying the scheduler's own words, so that a person can be
told the real cause ("invalid partition specified: gpu") rather than "submission failed".

Commands run with a minimal environment (``PATH``, plus ``SLURM_CONF`` when the hub has it, so
sites with a non-default configuration work): nothing in the hub's environment can change
their output format (``SQUEUE_FORMAT``, ``SLURM_TIME_FORMAT``) or leak into jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from hubstack.system import SystemOpError, tool
from hubstack.system.accounts import account_name
from hubstack.units import slurm_time

SubmitAs = Literal["runuser", "sudo", "su"]

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` Slurm's commands run with (runuser, sudo and su are found with
:func:`hubstack.system.tool`, never through it)."""

_SEP = "\x1f"  # ASCII unit separator: no Slurm name, reason or time can contain it
_SQUEUE_FIELDS = ("%i", "%T", "%r", "%N", "%P", "%S", "%Q", "%B")
_SINFO_FIELDS = ("%P", "%a", "%l", "%L", "%D", "%c", "%m")
_SACCT_FIELDS = "JobID,State,ExitCode,Timelimit,ReqMem"
_ACCOUNTED_FIELDS = "JobID,JobName,User,State,Start,End,ElapsedRaw"
_CPU_TIME = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(\.\d+)?")
_RSS = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)")
_JOB_ID = re.compile(r"^\d+(_\d+)?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEMORY = re.compile(r"^\d+(\.\d+)?[KMGTPE]?[nc]?$")
_NO_VALUE = frozenset({"", "N/A", "NONE", "UNKNOWN", "INVALID", "(NULL)"})
_ACCOUNTING_OFF = (
    "accounting storage is disabled",
    "not running a supported accounting_storage plugin",
)
_ALREADY_ENDED = ("already completing or completed", "invalid job id")
JOB_STATES = {
    "BOOT_FAIL": False,
    "CANCELLED": False,
    "COMPLETED": False,
    "CONFIGURING": True,
    "COMPLETING": True,
    "DEADLINE": False,
    "FAILED": False,
    "NODE_FAIL": False,
    "OUT_OF_MEMORY": False,
    "PENDING": True,
    "PREEMPTED": False,
    "RUNNING": True,
    "RESV_DEL_HOLD": True,
    "REQUEUE_FED": True,
    "REQUEUE_HOLD": True,
    "REQUEUED": True,
    "RESIZING": True,
    "REVOKED": False,
    "SIGNALING": True,
    "SPECIAL_EXIT": True,
    "STAGE_OUT": True,
    "STOPPED": True,
    "SUSPENDED": True,
    "TIMEOUT": False,
}
"""Every job state squeue(1) documents (JOB STATE CODES): True while the job holds or waits
for its allocation, False once it has left for good. Held and requeued jobs are active: they
run again when released. REVOKED is a federated job that started on a sibling cluster, so it
has left this one."""


def is_active(state: str) -> bool:
    """Whether a job in ``state`` still holds or waits for its allocation; a state missing
    from :data:`JOB_STATES` (a newer Slurm's) counts as active, so that no server is dropped
    for a word hubstack does not know."""
    return JOB_STATES.get(state, True)


# slurmstepd's notes in a job's output (src/slurmd/slurmstepd/req.c), e.g.
#   slurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-01-01T10:00:00 DUE TO TIME LIMIT ***
# (older releases leave out "ON n1"), and the memory notes of task/cgroup and OverMemoryKill.
_CANCEL_LINE = re.compile(r"\*\*\* JOB \d+(?: ON \S+)? CANCELLED AT \S+(?: DUE TO ([^,*]+))?")
_CANCEL_CAUSES = {"TIME LIMIT": "TIMEOUT", "NODE FAILURE": "NODE_FAIL", "PREEMPTION": "PREEMPTED"}
_OOM_LINE = re.compile(r"oom[-_]kill event|exceeded (?:job )?memory limit", re.IGNORECASE)


class SlurmError(SystemOpError):
    """A Slurm command failed, did not answer in time, or could not be run.

    The message names the command and carries the scheduler's own error text; ``argv`` is the
    full command line (which never holds a secret) and ``stderr`` its trimmed error output.
    """

    def __init__(self, message: str, argv: list[str] | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.argv = argv or []
        self.stderr = stderr


@dataclass(frozen=True)
class JobInfo:
    """One job as ``squeue`` sees it.

    ``start_time`` is the actual start of a started job and, for a pending one, the start the
    backfill scheduler expects (or the ``--begin`` time); None until it has computed one.
    ``position`` is set for pending jobs only: see :meth:`Slurm.queue`. ``batch_host`` is the
    node running the job's script (where its server listens), None until the job starts.
    """

    job_id: str
    state: str
    reason: str | None
    nodes: str | None
    partition: str
    start_time: datetime | None
    position: int | None
    batch_host: str | None = None


@dataclass(frozen=True)
class JobEnd:
    """How a job ended: its final state and a sentence for its owner ("it ran out of memory").

    ``exit_code`` and ``signal`` come from accounting; they are None when only the job's log
    was available.
    """

    state: str
    reason: str
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class AccountedJob:
    """One job as accounting (``sacct``) records it: when it really started and ended.

    ``start`` is None for a job that never started, ``end`` for one still running.
    """

    job_id: str
    name: str
    user: str
    state: str
    start: datetime | None
    end: datetime | None
    elapsed: int  # seconds


@dataclass(frozen=True)
class Partition:
    """A partition as ``sinfo`` reports it.

    ``max_time`` is in seconds, None when unlimited; ``default_time`` likewise, None when the
    partition sets none. ``nodes``, ``cpus`` and ``memory_mb`` are totals over its nodes.
    """

    name: str
    max_time: int | None
    default_time: int | None
    default: bool
    state: str
    nodes: int
    cpus: int
    memory_mb: int


class Slurm:
    """Runs Slurm's commands for the hub; ``queries`` counts every command run.

    ``submit_as`` is how a job is submitted as its user (see :meth:`submit`); ``timeout`` is
    the limit in seconds for each command; :meth:`partitions` and :meth:`user_accounts` are
    cached for ``cache_ttl`` seconds, since they serve form validation on every spawn.
    """

    def __init__(
        self,
        bin_dir: Path = Path("/usr/bin"),
        submit_as: SubmitAs = "runuser",
        timeout: float = 30,
        cache_ttl: float = 60,
    ) -> None:
        self.bin_dir = bin_dir
        self.submit_as = submit_as
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.queries = 0
        self._partitions: tuple[float, dict[str, Partition]] | None = None
        self._accounts: dict[str, tuple[float, list[str]]] = {}

    async def submit(self, script: str, user: str, env: Mapping[str, str], workdir: Path) -> str:
        """Submit ``script`` as the Unix account ``user`` and return the new job's id.

        ``sbatch --parsable`` reads the script on stdin and runs as ``user``, so Slurm records
        the job as theirs, with ``workdir`` as its working directory (given as ``--chdir``: the
        hub itself may not be able to enter a home on root-squashed NFS). ``env`` goes only
        into sbatch's environment, on top of a minimal base, never on a command line (any
        user can read others' ``/proc/*/cmdline``); sbatch's default ``--export=ALL`` carries
        it into the job. Accounts are switched with:

        * ``runuser``: ``runuser -u USER -- sbatch ...``, which keeps the environment (but
          sets HOME, USER, LOGNAME and SHELL to the account's).
        * ``sudo``: ``sudo -n --preserve-env=K1,K2,... -u USER -- sbatch ...``; sudoers must
          let root keep those variables: Debian's ``root ALL=(ALL:ALL) ALL`` does (its
          command is ALL), a narrower rule needs the SETENV tag, e.g.
          ``root ALL=(ALL) NOPASSWD:SETENV: /usr/bin/sbatch``.
        * ``su``: ``su --preserve-environment --shell=/bin/sh --command='exec sbatch ...'
          USER``; works for accounts whose login shell is nologin too.
        """
        if not workdir.is_absolute():
            raise ValueError(f"the job's working directory must be absolute, got {workdir}")
        child_env = {**_base_env(), **env}
        argv = self.submit_argv(user, workdir, child_env)
        out = await self._run(argv, env=child_env, stdin=script, label=f"sbatch as {user}")
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not _JOB_ID.match(job_id):
            raise SlurmError(f"sbatch gave no job id (its output: {out.strip()!r})", argv)
        return job_id

    def submit_argv(self, user: str, workdir: Path, env_keys: Iterable[str]) -> list[str]:
        """The command line that submits as ``user``: it names variables, never their values."""
        if not _USER.match(user):
            raise ValueError(f"invalid user name {user!r}")
        keys = sorted(set(env_keys))
        bad = [k for k in keys if not _ENV_KEY.match(k)]
        if bad:
            raise ValueError(f"invalid environment variable names: {', '.join(bad)}")
        sbatch = [str(self.bin_dir / "sbatch"), "--parsable", f"--chdir={workdir}"]
        if self.submit_as == "runuser":
            return [_wrapper("runuser"), "-u", user, "--", *sbatch]
        if self.submit_as == "sudo":
            keep = f"--preserve-env={','.join(keys)}"
            return [_wrapper("sudo"), "--non-interactive", keep, f"--user={user}", "--", *sbatch]
        command = f"--command=exec {shlex.join(sbatch)}"
        return [_wrapper("su"), "--preserve-environment", "--shell=/bin/sh", command, user]

    async def queue(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        """What squeue knows of ``job_ids``, by id; ids it does not know are left out.

        One ``squeue`` of the whole queue, in every state, however many ids are asked for.
        That costs slurmctld no more than ``squeue --jobs=A,B``, which has it send its whole
        job table too (only a single id is looked up alone, and that lookup fails outright
        for an id already purged). The whole table also holds every pending job, from which
        the queue position of each pending job asked for is computed: its 1-based rank among
        the pending jobs of its partition, by priority (highest first; equal priorities in
        job id order), counting held jobs and jobs waiting for a ``--begin`` time too; a job
        queued in several partitions gets its best rank. A failed query raises
        :class:`SlurmError`: "no answer" must never be taken for "the job is gone".
        """
        if not job_ids:
            return {}
        for job_id in job_ids:
            _check_job_id(job_id)
        fmt = _SEP.join(_SQUEUE_FIELDS)
        argv = [str(self.bin_dir / "squeue"), "--all", "--noheader", "--states=all"]
        out = await self._run([*argv, f"--format={fmt}"], env=_base_env(query=True))
        return parse_squeue(out, job_ids)

    async def ended(self, job_id: str) -> JobEnd | None:
        """How ``job_id`` ended, from accounting (``sacct``).

        None when accounting is off, or when it has no final record of the job yet: sacct
        lags squeue by a few seconds (a job squeue shows as ended may still be RUNNING
        there, or have no record at all), so the caller should ask again a little later.
        """
        _check_job_id(job_id)
        argv = [str(self.bin_dir / "sacct"), f"--jobs={job_id}", "--allocations", "--noheader"]
        argv += ["--parsable2", f"--format={_SACCT_FIELDS}"]
        out = await self._accounting(argv)
        if out is None:
            return None
        return parse_sacct(out, job_id)

    async def accounted(
        self,
        job_ids: Collection[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, AccountedJob] | None:
        """Every user's jobs that ran within ``[since, until]`` as accounting records them,
        or (``job_ids`` given) those jobs whenever they ran; by id. None when accounting
        is off.
        """
        for job_id in job_ids:
            _check_job_id(job_id)
        argv = [str(self.bin_dir / "sacct"), "--allusers", "--allocations", "--noheader"]
        argv += ["--parsable2", f"--delimiter={_SEP}", f"--format={_ACCOUNTED_FIELDS}"]
        if job_ids:
            argv.append(f"--jobs={','.join(sorted(job_ids, key=_id_key))}")
        # sacct reads times in the local time zone, which queries run with (_base_env).
        for option, moment in (("--starttime", since), ("--endtime", until)):
            if moment is not None:
                argv.append(f"{option}={moment.astimezone():%Y-%m-%dT%H:%M:%S}")
        out = await self._accounting(argv)
        if out is None:
            return None
        return parse_accounted(out)

    async def used(self, job_id: str) -> tuple[float | None, int | None]:
        """What an ended job used, from accounting: CPU-seconds (its steps' user and system
        time) and its steps' largest resident memory in bytes; None for what it does not
        record (accounting off, or no ``JobAcctGatherType``)."""
        _check_job_id(job_id)
        argv = [str(self.bin_dir / "sacct"), f"--jobs={job_id}", "--noheader", "--parsable2"]
        argv += [f"--delimiter={_SEP}", "--format=JobID,TotalCPU,MaxRSS"]
        out = await self._accounting(argv)
        if out is None:
            return None, None
        return parse_used(out, job_id)

    async def cancel(self, job_id: str) -> None:
        """Cancel ``job_id``; a job that has already ended (or was purged) is no error."""
        _check_job_id(job_id)
        argv = [str(self.bin_dir / "scancel"), job_id]
        try:
            await self._run(argv, env=_base_env())
        except SlurmError as exc:
            if not _says(exc.stderr, _ALREADY_ENDED):
                raise

    async def partitions(self) -> dict[str, Partition]:
        """The cluster's partitions by name, from ``sinfo`` (cached for ``cache_ttl``)."""
        now = time.monotonic()
        if self._partitions is not None and self._partitions[0] > now:
            return dict(self._partitions[1])
        fmt = _SEP.join(_SINFO_FIELDS)
        argv = [str(self.bin_dir / "sinfo"), "--all", "--noheader", f"--format={fmt}"]
        found = parse_sinfo(await self._run(argv, env=_base_env(query=True)))
        self._partitions = (now + self.cache_ttl, found)
        return dict(found)

    async def node_names(self, node: str) -> set[str]:
        """What Slurm knows node ``node`` by: its NodeName, NodeHostname and NodeAddr (one
        machine may run several slurmd under other names, or have a host name that is not
        its node name)."""
        fmt = _SEP.join(("%N", "%n", "%o"))
        argv = [str(self.bin_dir / "sinfo"), "--noheader", "--Node", f"--nodes={node}"]
        out = await self._run([*argv, f"--format={fmt}"], env=_base_env(query=True))
        names = {name.strip() for line in out.splitlines() for name in line.split(_SEP)}
        return {name for name in names if name.upper() not in _NO_VALUE}

    async def user_accounts(self, user: str) -> list[str]:
        """The Slurm accounts ``user`` may charge (cached); empty when accounting is off.

        Associations are read for every cluster the accounting database serves.
        """
        if not _USER.match(user):
            raise ValueError(f"invalid user name {user!r}")
        now = time.monotonic()
        cached = self._accounts.get(user)
        if cached is not None and cached[0] > now:
            return list(cached[1])
        argv = [str(self.bin_dir / "sacctmgr"), "--noheader", "--parsable2", "show", "assoc"]
        argv += ["where", f"user={user}", "format=account"]
        out = await self._accounting(argv) or ""
        accounts = list(dict.fromkeys(a for a in out.split() if a))
        self._accounts[user] = (now + self.cache_ttl, accounts)
        return list(accounts)

    async def _accounting(self, argv: list[str]) -> str | None:
        """The output of an accounting query (sacct, sacctmgr); None when the cluster keeps
        no accounting, which callers take as "not known" rather than as an error."""
        try:
            return await self._run(argv, env=_base_env(query=True))
        except SlurmError as exc:
            if _says(exc.stderr, _ACCOUNTING_OFF):
                return None
            raise

    async def _run(
        self, argv: list[str], *, env: dict[str, str], stdin: str | None = None, label: str = ""
    ) -> str:
        """Run one scheduler command and return its stdout; raise :class:`SlurmError`.

        The command gets its own process group, killed as a whole on timeout or when the
        caller is cancelled, so that no wrapper's child (sbatch under runuser) is left behind.
        """
        label = label or Path(argv[0]).name
        self.queries += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            raise SlurmError(f"{label}: cannot run {argv[0]}: {exc.strerror}", argv) from None
        data = stdin.encode() if stdin is not None else None
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), self.timeout)
        except TimeoutError:
            raise SlurmError(f"{label} did not answer within {self.timeout:g} s", argv) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        stderr = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            detail = stderr or out.decode(errors="replace").strip() or "no output"
            message = f"{label} failed (exit code {proc.returncode}): {detail}"
            raise SlurmError(message, argv, stderr)
        return out.decode(errors="replace")


def _rows(command: str, output: str, width: int) -> list[list[str]]:
    """The ``_SEP``-separated fields of each non-blank line ``command`` printed; a line
    without ``width`` fields means the output is not what was asked for."""
    rows = []
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split(_SEP)
        if len(fields) != width:
            raise SlurmError(f"{command} printed an unexpected line: {line!r}")
        rows.append(fields)
    return rows


def parse_squeue(output: str, job_ids: Collection[str]) -> dict[str, JobInfo]:
    """Turn the output of :meth:`Slurm.queue`'s squeue into :class:`JobInfo` for ``job_ids``."""
    wanted = set(job_ids)
    rows = _rows("squeue", output, len(_SQUEUE_FIELDS))
    ranks: dict[str, list[tuple[int, tuple[int, ...], str]]] = {}
    for job_id, state, _, _, partitions, _, priority, _ in rows:
        if normalise_state(state) == "PENDING":
            for name in partitions.split(","):
                ranks.setdefault(name, []).append((-_int(priority), _id_key(job_id), job_id))
    rank = {
        name: {row[2]: place for place, row in enumerate(sorted(jobs), start=1)}
        for name, jobs in ranks.items()
    }
    found: dict[str, JobInfo] = {}
    for job_id, state, reason, nodes, partitions, start, _, batch_host in rows:
        if job_id not in wanted:
            continue
        state = normalise_state(state)
        position = None
        if state == "PENDING":
            position = min(rank[p][job_id] for p in partitions.split(","))
        found[job_id] = JobInfo(
            job_id=job_id,
            state=state,
            reason=None if reason.upper() in _NO_VALUE else reason,
            nodes=None if nodes.upper() in _NO_VALUE else nodes,
            partition=partitions,
            start_time=parse_time(start),
            position=position,
            batch_host=None if batch_host.upper() in _NO_VALUE else batch_host,
        )
    return found


def parse_sacct(output: str, job_id: str) -> JobEnd | None:
    """The end of ``job_id`` from ``sacct --parsable2 --format=JobID,State,ExitCode,Timelimit,
    ReqMem`` output, or None if it has no final record yet.

    A job that ends within a second of starting can have its final state recorded a moment
    before its submission details: an empty Timelimit (and a ReqMem like "16?"). Such a
    record is not final yet either, so the caller asks again rather than show a wrong limit.
    """
    for line in reversed(output.splitlines()):
        fields = line.split("|")
        if len(fields) != 5 or fields[0] != job_id:
            continue
        _, state_text, exit_text, limit, memory = fields
        state = normalise_state(state_text)
        if is_active(state) or not limit.strip():
            return None
        code, _, sig = exit_text.partition(":")
        exit_code, signo = _int(code), _int(sig)
        by = _cancelled_by(state_text)
        reason = describe_end(
            state,
            exit_code=exit_code,
            signo=signo,
            time_limit=_seconds(limit),
            memory=_memory(memory),
            cancelled_by=by,
        )
        return JobEnd(state, reason, exit_code, signo)
    return None


def parse_accounted(output: str) -> dict[str, AccountedJob]:
    """Jobs from ``sacct --parsable2 --delimiter=US --format=JobID,JobName,User,State,Start,
    End,ElapsedRaw`` output, by id."""
    found = {}
    for job_id, name, user, state, start, end, elapsed in _rows("sacct", output, 7):
        found[job_id] = AccountedJob(
            job_id=job_id,
            name=name,
            user=user,
            state=normalise_state(state),
            start=parse_time(start),
            end=parse_time(end),
            elapsed=_int(elapsed),
        )
    return found


def parse_used(output: str, job_id: str) -> tuple[float | None, int | None]:
    """CPU-seconds of ``job_id`` and the largest MaxRSS of its steps, from ``sacct
    --format=JobID,TotalCPU,MaxRSS`` output (the job's own line has no MaxRSS)."""
    cpu: float | None = None
    peak: int | None = None
    for step, total_cpu, max_rss in _rows("sacct", output, 3):
        if step == job_id:
            cpu = _cpu_seconds(total_cpu)
        elif step.startswith(f"{job_id}.") and (rss := _bytes(max_rss)) is not None:
            peak = max(peak or 0, rss)
    return cpu, peak


def _cpu_seconds(text: str) -> float | None:
    """sacct's TotalCPU (``[D-][H:]M:S[.fff]``) in seconds."""
    match = _CPU_TIME.fullmatch(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds, fraction = match.groups()
    whole = ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + int(seconds)
    return whole + float(fraction or 0)


def _bytes(text: str) -> int | None:
    """sacct's MaxRSS (``123K``, ``1.5M``, ``0``) in bytes; None when empty."""
    match = _RSS.fullmatch(text.strip())
    if match is None:
        return None
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGTP".index(unit or "_"))


def parse_sinfo(output: str) -> dict[str, Partition]:
    """Partitions from ``sinfo --format=%P|%a|%l|%L|%D|%c|%m`` (one line per group of alike
    nodes, summed up per partition)."""
    found: dict[str, Partition] = {}
    for label, state, max_time, default_time, nodes, cpus, memory in _rows(
        "sinfo", output, len(_SINFO_FIELDS)
    ):
        try:
            limits = parse_slurm_time(max_time), parse_slurm_time(default_time)
        except ValueError:
            times = f"{max_time!r}, {default_time!r}"
            raise SlurmError(f"sinfo printed an unexpected line: time limits {times}") from None
        name = label.rstrip("*")
        count = _int(nodes)
        before = found.get(name)
        found[name] = Partition(
            name=name,
            max_time=limits[0],
            default_time=limits[1],
            default=label.endswith("*"),
            state=state,
            nodes=count + (before.nodes if before else 0),
            cpus=count * _int(cpus) + (before.cpus if before else 0),
            memory_mb=count * _int(memory) + (before.memory_mb if before else 0),
        )
    return found


def reason_from_log(text: str) -> JobEnd | None:
    """How a job ended, from its output file, for clusters without accounting.

    slurmstepd notes a cancellation (by scancel, time limit, node failure, preemption) in
    the job's output; that note wins over an out-of-memory note, which task/cgroup writes when
    a step ends after the kernel killed one of its processes. None if the log says neither.
    """
    cancels = _CANCEL_LINE.findall(text)
    if cancels:
        cause = cancels[-1].strip()
        state = _CANCEL_CAUSES.get(cause, "CANCELLED")
        reason = describe_end(state)
        if cause and state == "CANCELLED":
            reason += f" ({cause.lower()})"
        return JobEnd(state, reason)
    if _OOM_LINE.search(text):
        return JobEnd("OUT_OF_MEMORY", describe_end("OUT_OF_MEMORY"))
    return None


def describe_end(
    state: str,
    *,
    exit_code: int | None = None,
    signo: int | None = None,
    time_limit: int | None = None,
    memory: str | None = None,
    cancelled_by: str | None = None,
) -> str:
    """A job's end state in plain words, to follow "Your job ended: " for its owner."""
    if state == "COMPLETED":
        return "it exited"
    if state == "TIMEOUT":
        limit = f" ({slurm_time(time_limit)})" if time_limit is not None else ""
        return f"it reached its wall time limit{limit}"
    if state == "OUT_OF_MEMORY":
        return "it ran out of memory" + (f" (limit {memory})" if memory else "")
    if state == "NODE_FAIL":
        return "its node failed"
    if state == "BOOT_FAIL":
        return "its node failed to start"
    if state == "PREEMPTED":
        return "it was preempted to make room for another job"
    if state == "DEADLINE":
        return "it reached its deadline"
    if state == "CANCELLED":
        return "it was cancelled" + (f" by {cancelled_by}" if cancelled_by else "")
    if state == "FAILED":
        if exit_code:
            return f"it exited with status {exit_code}"
        if signo:
            return f"it was killed by signal {signo} ({_signal_name(signo)})"
        return "it failed"
    return f"it ended in state {state}"


def normalise_state(text: str) -> str:
    """A job state without decorations: "CANCELLED by 0" and "CANCELLED+" become CANCELLED."""
    words = text.strip().split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def parse_slurm_time(text: str) -> int | None:
    """Seconds in a Slurm time string; None for UNLIMITED and for no value (N/A, INVALID).

    Slurm's forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` (a bare number
    is minutes). Anything else raises ValueError.
    """
    text = text.strip()
    if text.upper() in _NO_VALUE or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days_text, dash, rest = text.rpartition("-")
    try:
        days = int(days_text) if dash else 0
        parts = [int(p) for p in rest.split(":")]
    except ValueError:
        raise ValueError(f"not a Slurm time: {text!r}") from None
    if dash:
        if len(parts) > 3:
            raise ValueError(f"not a Slurm time: {text!r}")
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, *parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        raise ValueError(f"not a Slurm time: {text!r}")
    if min(days, hours, minutes, seconds) < 0:
        raise ValueError(f"not a Slurm time: {text!r}")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_time(text: str) -> datetime | None:
    """A timestamp squeue printed (local time, ISO form), as an aware datetime; None if N/A."""
    text = text.strip()
    if text.upper() in _NO_VALUE:
        return None
    try:
        return datetime.fromisoformat(text).astimezone()
    except ValueError:
        return None


def _base_env(*, query: bool = False) -> dict[str, str]:
    """The environment every command starts from; queries also keep the hub's time zone, so
    that the times squeue prints are read back in the zone they were written in."""
    keep = ("SLURM_CONF", "TZ") if query else ("SLURM_CONF",)
    env = {"PATH": ROOT_PATH}
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    return env


def _wrapper(name: str) -> str:
    """runuser, sudo or su by absolute path, from the fixed system directories only."""
    try:
        return tool(name)
    except SystemOpError as exc:
        raise SlurmError(f"cannot submit as another user: {exc}") from None


def _check_job_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"invalid Slurm job id {job_id!r}")


def _says(stderr: str, phrases: Iterable[str]) -> bool:
    lowered = stderr.lower()
    return any(p in lowered for p in phrases)


def _int(text: str) -> int:
    try:
        return int(text.strip().rstrip("+"))
    except ValueError:
        return 0


def _id_key(job_id: str) -> tuple[int, ...]:
    """Sort key of ``12`` or ``12_3`` (an array task); unparsable parts sort first."""
    return tuple(_int(part) for part in re.split(r"[_+]", job_id))


def _seconds(text: str) -> int | None:
    """A time limit sacct printed, in seconds; None for unlimited or a word like Partition_Limit."""
    try:
        return parse_slurm_time(text)
    except ValueError:
        return None


def _memory(text: str) -> str | None:
    """ReqMem as a person reads it: older releases suffix n (per node) or c (per CPU)."""
    text = text.strip()
    if not _MEMORY.match(text) or text.rstrip("nc") == "0":
        return None
    if text.endswith("c"):
        return f"{text[:-1]} per CPU"
    return text.removesuffix("n")


def _cancelled_by(state_text: str) -> str | None:
    """Who cancelled a job, from sacct's "CANCELLED by UID"."""
    words = state_text.split()
    if len(words) != 3 or words[1] != "by" or not words[2].isdigit():
        return None
    return account_name(int(words[2]))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
