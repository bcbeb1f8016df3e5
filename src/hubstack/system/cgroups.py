"""CPU, memory and process-count limits for the processes of one server.

Three ways to enforce them, picked by :func:`detect`:

* ``systemd``: wrap the command in ``systemd-run --scope`` (systemd owns the cgroup),
* ``cgroup-v2`` / ``cgroup-v1``: create the cgroup ourselves and move the child into it from
  ``preexec_fn`` (:meth:`Cgroup.attach_self`), before it drops privileges,
* ``off``: no limits (development, or no usable cgroup support).

Each server gets a group named after its *unit* (e.g. ``hubstack-hs-alice-analysis``) below a
shared parent group, so leftovers can be found, counted and killed after the server stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hubstack.system import SystemOpError, tool

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel rejects CFS quotas below 1 ms
_V1_NO_LIMIT = 1 << 60  # v1 reports "no limit" as LONG_MAX rounded to a page; nobody has 1 EiB
_UNIT_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_REMOVE_ATTEMPTS = 100
_REMOVE_WAIT_S = 0.05
PREFERENCES = ("auto", "systemd", "cgroup-v2", "cgroup-v1", "off")


@dataclass(frozen=True)
class Limits:
    """What one server may use; ``None`` means unlimited.

    ``cpu`` is in CPUs (0.5 = half a core), ``memory`` in bytes (swap is not allowed on top),
    ``pids`` caps the number of tasks so a fork bomb cannot take the machine down.
    """

    cpu: float | None
    memory: int | None
    pids: int | None = None

    def __post_init__(self) -> None:
        for field in ("cpu", "memory", "pids"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"{field} limit must be positive, got {value}")


def check_unit(unit: str) -> str:
    """Return ``unit`` if it is safe as a single path component and systemd unit name."""
    if not _UNIT_RE.match(unit) or unit in (".", "..") or len(unit) > 200:
        raise ValueError(f"invalid unit name {unit!r}: use letters, digits and _.@- only")
    return unit


def _quota_us(cpu: float) -> int:
    return max(_MIN_QUOTA_US, round(cpu * CPU_PERIOD_US))


def _write(path: Path, value: str) -> None:
    """Write a cgroup control file, explaining which file and value the kernel refused."""
    try:
        path.write_text(value)
    except OSError as exc:
        raise SystemOpError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_counter(path: Path, key: str) -> int:
    """Value of a ``key N`` line in a flat-keyed cgroup file; 0 when it cannot be read."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _max_or_int(text: str | None) -> int | None:
    return None if text in (None, "", "max") else int(text)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemOpError(f"cannot create cgroup {path}: {exc.strerror or exc}") from exc


class Cgroup(ABC):
    """The group holding one server's processes."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    def procs_files(self) -> list[str] | None:
        """The ``cgroup.procs`` files a process joins the group through by writing its
        pid (for a process the hub does not start itself); None: it cannot join so."""
        return None

    @abstractmethod
    def attach_self(self) -> None:
        """Move the calling process into the group.

        Meant for ``preexec_fn`` (in the forked child, before setuid), so it only does raw
        ``os`` calls. If it raises, subprocess aborts the launch: better than running unlimited.
        """

    @abstractmethod
    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this group (to tell the user why)."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes currently in the group."""

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process in the group: reaps what the server left behind."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    @abstractmethod
    def remove(self) -> None:
        """Kill leftovers and delete the group; a group that is already gone is fine."""

    @abstractmethod
    def read_limits(self) -> Limits:
        """The limits the kernel actually enforces, for display and tests."""

    def usage(self) -> tuple[float | None, int | None]:
        """CPU-seconds used and peak memory in bytes so far, where the kernel counts them:
        what the usage ledger compares with what the server was given."""
        return None, None

    def _kill_until_empty(self) -> None:
        """SIGKILL until the group is empty; a killed process takes a moment to leave."""
        for _ in range(_REMOVE_ATTEMPTS):
            self.kill_all()
            if not self.pids():
                return
            time.sleep(_REMOVE_WAIT_S)
        raise SystemOpError(
            f"processes {self.pids()} in cgroup {self.unit} are still alive after SIGKILL"
        )


class _FsCgroup(Cgroup):
    """A group we created ourselves in one or more cgroupfs directories."""

    def __init__(self, unit: str, dirs: Sequence[Path]) -> None:
        super().__init__(unit)
        self.dirs = tuple(dirs)
        # Encoded up front so attach_self does no path work in the forked child.
        self._procs_files = tuple(os.fsencode(d / "cgroup.procs") for d in self.dirs)

    def procs_files(self) -> list[str] | None:
        return [os.fsdecode(path) for path in self._procs_files]

    def attach_self(self) -> None:
        pid = b"%d" % os.getpid()
        for path in self._procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            found.update(int(pid) for pid in (_read(d / "cgroup.procs") or "").split())
        return sorted(found)

    def remove(self) -> None:
        self._kill_until_empty()
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SystemOpError(f"cannot remove cgroup {d}: {exc.strerror or exc}") from exc


class CgroupV1(_FsCgroup):
    """A group spread over the separate v1 hierarchies (memory, cpu, pids)."""

    def __init__(
        self,
        unit: str,
        memory: Path,
        cpu: Path | None,
        pids: Path | None,
        cpuacct: Path | None = None,
    ) -> None:
        dirs = [d for d in (memory, cpu, pids, cpuacct) if d is not None]
        super().__init__(unit, dirs)
        self.memory_dir, self.cpu_dir, self.pids_dir = memory, cpu, pids
        # CPU time is counted where cpuacct is: with cpu, or in its own hierarchy.
        self.cpuacct_dir = cpuacct or cpu

    def oom_kills(self) -> int:
        return _read_counter(self.memory_dir / "memory.oom_control", "oom_kill")

    def usage(self) -> tuple[float | None, int | None]:
        nanoseconds = _read(self.cpuacct_dir / "cpuacct.usage") if self.cpuacct_dir else None
        peak = _read(self.memory_dir / "memory.max_usage_in_bytes")
        return (
            int(nanoseconds) / 1e9 if nanoseconds else None,
            int(peak) if peak else None,
        )

    def read_limits(self) -> Limits:
        memory = int(_read(self.memory_dir / "memory.limit_in_bytes") or _V1_NO_LIMIT)
        cpu = None
        if self.cpu_dir is not None:
            quota = int(_read(self.cpu_dir / "cpu.cfs_quota_us") or -1)
            period = int(_read(self.cpu_dir / "cpu.cfs_period_us") or CPU_PERIOD_US)
            cpu = quota / period if quota > 0 else None
        pids = None if self.pids_dir is None else _max_or_int(_read(self.pids_dir / "pids.max"))
        return Limits(cpu=cpu, memory=None if memory >= _V1_NO_LIMIT else memory, pids=pids)


class CgroupV2(_FsCgroup):
    """A group in the unified (v2) hierarchy."""

    def __init__(self, unit: str, path: Path) -> None:
        super().__init__(unit, [path])
        self.path = path

    def oom_kills(self) -> int:
        return _read_counter(self.path / "memory.events", "oom_kill")

    def usage(self) -> tuple[float | None, int | None]:
        """memory.peak exists from Linux 5.19 on."""
        peak = _read(self.path / "memory.peak")
        microseconds = _read_counter(self.path / "cpu.stat", "usage_usec")
        return microseconds / 1e6, int(peak) if peak else None

    def read_limits(self) -> Limits:
        cpu = None
        quota, _, period = (_read(self.path / "cpu.max") or "max").partition(" ")
        if quota != "max":
            cpu = int(quota) / int(period or CPU_PERIOD_US)
        return Limits(
            cpu=cpu,
            memory=_max_or_int(_read(self.path / "memory.max")),
            pids=_max_or_int(_read(self.path / "pids.max")),
        )


class SystemdScope(CgroupV2):
    """The cgroup of a ``systemd-run --scope`` unit: systemd creates and collects it."""

    def procs_files(self) -> list[str] | None:
        """None: systemd owns the scope's members (systemd-run puts the command in)."""
        return None

    def attach_self(self) -> None:
        """Nothing to do: systemd-run puts the command into the scope."""

    def remove(self) -> None:
        """Kill leftovers; ``--collect`` makes systemd drop the empty scope."""
        self._kill_until_empty()


class _NullCgroup(Cgroup):
    """Stands in for a group when limits are off, so callers need no special case."""

    def procs_files(self) -> list[str] | None:
        return []

    def attach_self(self) -> None:
        """Nothing to join."""

    def oom_kills(self) -> int:
        return 0

    def pids(self) -> list[int]:
        return []

    def remove(self) -> None:
        """Nothing to remove."""

    def read_limits(self) -> Limits:
        return Limits(cpu=None, memory=None, pids=None)


class Enforcer(ABC):
    """One way of applying :class:`Limits` to a server's processes."""

    name: ClassVar[str]

    @abstractmethod
    def prepare(self, unit: str, limits: Limits) -> Cgroup:
        """Create (or reuse) the group for ``unit`` and (re)write its limits."""

    @abstractmethod
    def open(self, unit: str) -> Cgroup:
        """A handle on ``unit``'s group that changes nothing: for polls and clean-up.

        Rewriting limits on every poll would briefly lift them (v1 must raise memsw
        before it can lower the memory limit), so watching never goes through prepare.
        """

    def wrap_command(self, unit: str, limits: Limits, cmd: list[str]) -> list[str]:
        """The command line to launch; cgroupfs enforcers use ``attach_self`` instead."""
        check_unit(unit)
        return list(cmd)


class CgroupV1Enforcer(Enforcer):
    """Limits via the legacy per-controller hierarchies under ``root``."""

    name = "cgroup-v1"

    def __init__(self, root: Path = CGROUP_ROOT, parent: str = "hubstack") -> None:
        self.root = root
        self.parent = check_unit(parent)

    def _cpu_root(self) -> Path | None:
        """The hierarchy with CFS quotas; cpu and cpuacct are often mounted together."""
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            if (self.root / name / "cpu.cfs_quota_us").exists():
                return self.root / name
        return None

    def _cpuacct_root(self) -> Path | None:
        """cpuacct mounted on its own (not with cpu): where a server's CPU time is counted."""
        cpuacct = self.root / "cpuacct"
        if cpuacct.is_symlink() or not (cpuacct / "cpuacct.usage").exists():
            return None
        cpu_root = self._cpu_root()
        return None if cpu_root is not None and cpu_root.resolve() == cpuacct.resolve() else cpuacct

    def prepare(self, unit: str, limits: Limits) -> Cgroup:
        check_unit(unit)
        memory_root = self.root / "memory"
        if not (memory_root / "memory.limit_in_bytes").exists():
            raise SystemOpError(f"no cgroup v1 memory controller at {memory_root}")
        cpu_root = self._cpu_root()
        if limits.cpu is not None and cpu_root is None:
            raise SystemOpError(f"a CPU limit needs the cgroup v1 cpu controller under {self.root}")
        pids_root = self.root / "pids"
        if not (pids_root / "cgroup.procs").exists():
            if limits.pids is not None:
                raise SystemOpError(f"a process limit needs the v1 pids controller at {pids_root}")
            pids_root = None

        memory = memory_root / self.parent / unit
        _mkdir(memory)
        memsw = memory / "memory.memsw.limit_in_bytes"
        value = "-1" if limits.memory is None else str(limits.memory)
        # The memory+swap limit may never be below the memory limit: lift it, set the memory
        # limit, then pin memory+swap to the same value so swap cannot extend the limit.
        if memsw.exists():
            _write(memsw, "-1")
        _write(memory / "memory.limit_in_bytes", value)
        if memsw.exists():
            _write(memsw, value)

        if cpu_root is not None:
            cpu = cpu_root / self.parent / unit
            _mkdir(cpu)
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            quota = -1 if limits.cpu is None else _quota_us(limits.cpu)
            _write(cpu / "cpu.cfs_quota_us", str(quota))

        if pids_root is not None:
            pids = pids_root / self.parent / unit
            _mkdir(pids)
            _write(pids / "pids.max", "max" if limits.pids is None else str(limits.pids))
        cpuacct_root = self._cpuacct_root()
        if cpuacct_root is not None:
            _mkdir(cpuacct_root / self.parent / unit)
        return self.open(unit)

    def open(self, unit: str) -> Cgroup:
        check_unit(unit)
        cpu_root = self._cpu_root()
        pids_root = self.root / "pids"
        return CgroupV1(
            unit,
            memory=self.root / "memory" / self.parent / unit,
            cpu=cpu_root / self.parent / unit if cpu_root is not None else None,
            pids=pids_root / self.parent / unit if (pids_root / "cgroup.procs").exists() else None,
            cpuacct=self._cpuacct_root_of(unit),
        )

    def _cpuacct_root_of(self, unit: str) -> Path | None:
        """The unit's own cpuacct group, if prepare made one (servers started before it
        existed have none)."""
        root = self._cpuacct_root()
        group = root / self.parent / unit if root is not None else None
        return group if group is not None and group.is_dir() else None


class CgroupV2Enforcer(Enforcer):
    """Limits via the unified hierarchy mounted at ``root``."""

    name = "cgroup-v2"
    CONTROLLERS = ("memory", "cpu", "pids")

    def __init__(self, root: Path = CGROUP_ROOT, parent: str = "hubstack") -> None:
        self.root = root
        self.parent = check_unit(parent)

    def prepare(self, unit: str, limits: Limits) -> Cgroup:
        check_unit(unit)
        offered = (_read(self.root / "cgroup.controllers") or "").split()
        enable = [c for c in self.CONTROLLERS if c in offered]
        wanted = {"memory": limits.memory, "cpu": limits.cpu, "pids": limits.pids}
        for controller, limit in wanted.items():
            if limit is not None and controller not in enable:
                raise SystemOpError(
                    f"a {controller} limit needs the {controller} controller, which "
                    f"{self.root}/cgroup.controllers does not offer"
                )
        parent = self.root / self.parent
        group = parent / unit
        _enable_controllers(self.root, enable)
        _mkdir(parent)
        _enable_controllers(parent, enable)
        _mkdir(group)
        if "memory" in enable:
            _write(group / "memory.max", "max" if limits.memory is None else str(limits.memory))
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", "max" if limits.memory is None else "0")
        if "cpu" in enable:
            quota = "max" if limits.cpu is None else str(_quota_us(limits.cpu))
            _write(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if "pids" in enable:
            _write(group / "pids.max", "max" if limits.pids is None else str(limits.pids))
        return self.open(unit)

    def open(self, unit: str) -> Cgroup:
        return CgroupV2(unit, self.root / self.parent / check_unit(unit))


def _enable_controllers(group: Path, controllers: Sequence[str]) -> None:
    """Let ``group``'s children use ``controllers`` (v2 only delegates what is enabled)."""
    enabled = (_read(group / "cgroup.subtree_control") or "").split()
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


class SystemdEnforcer(Enforcer):
    """Limits via transient systemd scopes, when systemd manages the machine."""

    name = "systemd"

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root

    def prepare(self, unit: str, limits: Limits) -> Cgroup:
        """Nothing to create: systemd-run makes the scope; return a handle to where it will be."""
        return self.open(unit)

    def open(self, unit: str) -> Cgroup:
        return SystemdScope(unit, self.root / "system.slice" / f"{check_unit(unit)}.scope")

    def wrap_command(self, unit: str, limits: Limits, cmd: list[str]) -> list[str]:
        props: list[str] = []
        if limits.memory is not None:
            props += ["-p", f"MemoryMax={limits.memory}", "-p", "MemorySwapMax=0"]
        if limits.cpu is not None:
            props += ["-p", f"CPUQuota={_quota_us(limits.cpu) * 100 // CPU_PERIOD_US}%"]
        if limits.pids is not None:
            props += ["-p", f"TasksMax={limits.pids}"]
        scope = [
            tool("systemd-run"),
            "--scope",
            "--quiet",
            "--collect",
            f"--unit={check_unit(unit)}",
        ]
        return [*scope, *props, "--", *cmd]


class NoLimits(Enforcer):
    """Enforces nothing (development mode, or limits switched off)."""

    name = "off"

    def prepare(self, unit: str, limits: Limits) -> Cgroup:
        return self.open(unit)

    def open(self, unit: str) -> Cgroup:
        return _NullCgroup(check_unit(unit))


def detect(preference: str = "auto", root: Path = CGROUP_ROOT) -> Enforcer:
    """Pick the enforcer for ``preference``; an explicit choice that cannot work is an error.

    ``auto`` prefers systemd (it owns the cgroup tree when it is PID 1), then cgroup v2, then
    v1, and falls back to no limits when nothing is usable or we are not root.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"unknown limits enforcer {preference!r}; choose one of {PREFERENCES}")
    if preference == "off":
        return NoLimits()
    problems = {
        "systemd": _systemd_problem(),
        "cgroup-v2": _v2_problem(root),
        "cgroup-v1": _v1_problem(root),
    }
    if os.geteuid() != 0:
        problems = dict.fromkeys(problems, f"needs root (running as uid {os.geteuid()})")
    makers: dict[str, type[SystemdEnforcer | CgroupV2Enforcer | CgroupV1Enforcer]] = {
        "systemd": SystemdEnforcer,
        "cgroup-v2": CgroupV2Enforcer,
        "cgroup-v1": CgroupV1Enforcer,
    }
    if preference == "auto":
        usable = [name for name, problem in problems.items() if problem is None]
        return makers[usable[0]](root) if usable else NoLimits()
    problem = problems[preference]
    if problem is not None:
        raise SystemOpError(f"limits enforcer {preference!r} is not available: {problem}")
    return makers[preference](root)


def _systemd_problem() -> str | None:
    pid1 = _read(Path("/proc/1/comm")) or "unknown"
    if pid1 != "systemd":
        return f"PID 1 is {pid1!r}, not systemd"
    try:
        tool("systemd-run")
    except SystemOpError as exc:
        return str(exc)
    return None


def _v2_problem(root: Path) -> str | None:
    controllers = _read(root / "cgroup.controllers")
    if controllers is None:
        return f"{root}/cgroup.controllers does not exist (no cgroup2 file system at {root})"
    if "memory" not in controllers.split():
        return f"the cgroup2 file system at {root} does not offer the memory controller"
    return None


def _v1_problem(root: Path) -> str | None:
    if not (root / "memory" / "memory.limit_in_bytes").exists():
        return f"{root}/memory/memory.limit_in_bytes does not exist (no v1 memory controller)"
    return None
