"""Resource limits: cgroup v1 for real (this machine), v2 against a fake tree, systemd by argv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubtest import wait_for

from hubstack.system import SystemOpError, tool
from hubstack.system.cgroups import (
    CGROUP_ROOT,
    Cgroup,
    CgroupV1Enforcer,
    CgroupV2Enforcer,
    Limits,
    NoLimits,
    SystemdEnforcer,
    check_unit,
    detect,
)

MiB = 2**20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")
needs_v1 = pytest.mark.skipif(
    not (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists(),
    reason="no cgroup v1 memory controller on this machine",
)

ALLOCATE = """
import sys
block = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("allocated")
"""

BURN = """
import time
start = time.monotonic()
while time.monotonic() - start < 1.0:
    pass
print(time.process_time())
"""

FORK_MANY = """
import os, signal, time
children, error = [], None
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(type(error).__name__, len(children))
"""

LEAVE_ORPHAN = """
import subprocess
quiet = subprocess.DEVNULL
subprocess.Popen(["sleep", "300"], start_new_session=True, stdout=quiet, stderr=quiet)
"""


def run_in(cg: Cgroup, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` inside ``cg``, joined from preexec_fn as the local backend does."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        preexec_fn=cg.attach_self,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def v1() -> Iterator[CgroupV1Enforcer]:
    """A v1 enforcer under a unique parent group, removed with all its groups afterwards."""
    parent = f"hstest-{os.urandom(3).hex()}"
    enforcer = CgroupV1Enforcer(CGROUP_ROOT, parent=parent)
    yield enforcer
    units = {
        group.name
        for controller in CGROUP_ROOT.iterdir()
        if (controller / parent).is_dir()
        for group in (controller / parent).iterdir()
        if group.is_dir()
    }
    for unit in units:
        enforcer.prepare(unit, Limits(None, None)).remove()
    for controller in CGROUP_ROOT.iterdir():
        if (controller / parent).is_dir():
            (controller / parent).rmdir()


def test_unit_names_cannot_escape_the_parent() -> None:
    assert check_unit("hubstack-hs-alice-analysis") == "hubstack-hs-alice-analysis"
    assert check_unit("user@1.slice_x") == "user@1.slice_x"
    for bad in ["", ".", "..", "../etc", "a/b", "a b", "über", "x" * 201]:
        with pytest.raises(ValueError, match="invalid unit name"):
            check_unit(bad)
    with pytest.raises(ValueError):
        NoLimits().prepare("../x", Limits(None, None))
    with pytest.raises(ValueError):
        SystemdEnforcer().wrap_command("a/b", Limits(None, None), ["true"])


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory limit must be positive"):
        Limits(cpu=1, memory=0)
    with pytest.raises(ValueError, match="cpu limit"):
        Limits(cpu=-1, memory=None)


@needs_root
@needs_v1
def test_v1_prepare_writes_and_rewrites_limits(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-unit", Limits(cpu=0.5, memory=64 * MiB, pids=20))
    assert cg.read_limits() == Limits(cpu=0.5, memory=64 * MiB, pids=20)
    memory = CGROUP_ROOT / "memory" / v1.parent / "hstest-unit"
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
    memsw = memory / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert memsw.read_text().strip() == str(64 * MiB), "swap must not extend the limit"
    cpu = CGROUP_ROOT / "cpu" / v1.parent / "hstest-unit"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"

    raised = v1.prepare("hstest-unit", Limits(cpu=1.5, memory=128 * MiB, pids=100))
    assert raised.read_limits() == Limits(cpu=1.5, memory=128 * MiB, pids=100)
    lowered = v1.prepare("hstest-unit", Limits(cpu=0.25, memory=32 * MiB))
    assert lowered.read_limits() == Limits(cpu=0.25, memory=32 * MiB, pids=None)
    unlimited = v1.prepare("hstest-unit", Limits(cpu=None, memory=None))
    assert unlimited.read_limits() == Limits(cpu=None, memory=None, pids=None)
    unlimited.remove()
    assert not any(d.exists() for d in cg.dirs)
    unlimited.remove()


@needs_root
@needs_v1
def test_v1_open_watches_without_rewriting_limits(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-watch", Limits(cpu=0.5, memory=64 * MiB, pids=20))
    limit = CGROUP_ROOT / "memory" / v1.parent / "hstest-watch" / "memory.limit_in_bytes"
    limit.write_text(str(32 * MiB))  # below memsw, which v1 requires
    watched = v1.open("hstest-watch")
    assert watched.read_limits() == Limits(cpu=0.5, memory=32 * MiB, pids=20)
    assert watched.oom_kills() == 0
    cg.remove()
    assert not limit.parent.exists()
    assert v1.open("hstest-watch").oom_kills() == 0, "a vanished group reads as no kills"


def test_v1_memory_limit_oom_kills_the_hog_only(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-oom", Limits(cpu=None, memory=64 * MiB))
    assert cg.oom_kills() == 0
    hog = run_in(cg, ALLOCATE, "256")
    assert hog.returncode == -signal.SIGKILL, hog.stdout + hog.stderr
    assert cg.oom_kills() >= 1
    modest = run_in(cg, ALLOCATE, "16")
    assert (modest.returncode, modest.stdout.strip()) == (0, "allocated"), modest.stderr


@needs_root
@needs_v1
def test_v1_cpu_quota_throttles(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-cpu", Limits(cpu=0.3, memory=None))
    burn = run_in(cg, BURN)
    assert burn.returncode == 0, burn.stderr
    assert float(burn.stdout) < 0.6, "1 s of busy looping must get at most ~0.3 s of CPU"
    stat = (CGROUP_ROOT / "cpu" / v1.parent / "hstest-cpu" / "cpu.stat").read_text()
    assert int(stat.split("nr_throttled ")[1].split()[0]) > 0


@needs_root
@needs_v1
def test_v1_usage_counts_cpu_time_and_peak_memory(v1: CgroupV1Enforcer) -> None:
    """What the usage ledger records beside what a server was given."""
    cg = v1.prepare("hstest-usage", Limits(cpu=None, memory=None))
    burn = run_in(cg, BURN)
    hog = run_in(cg, ALLOCATE, "32")
    assert burn.returncode == hog.returncode == 0, burn.stderr + hog.stderr
    cpu, peak = cg.usage()
    assert cpu is not None and cpu >= float(burn.stdout) * 0.9
    assert peak is not None and peak >= 32 * MiB


@needs_root
@needs_v1
def test_v1_pids_limit_stops_a_fork_bomb(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-pids", Limits(cpu=None, memory=None, pids=20))
    result = run_in(cg, FORK_MANY)
    error, started = result.stdout.split()
    assert error == "BlockingIOError", result.stdout + result.stderr
    assert 0 < int(started) < 20


@needs_root
@needs_v1
def test_v1_leftovers_are_found_and_killed(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-reap", Limits(cpu=None, memory=64 * MiB))
    assert run_in(cg, LEAVE_ORPHAN).returncode == 0
    wait_for(lambda: len(cg.pids()) == 1, 10, "the orphan to be in the group")
    orphan = cg.pids()[0]
    assert Path(f"/proc/{orphan}/comm").read_text().strip() == "sleep"
    cg.kill_all(signal.SIGTERM)
    wait_for(lambda: cg.pids() == [], 10, "kill_all to empty the group")

    sleeper = subprocess.Popen(["sleep", "300"], preexec_fn=cg.attach_self)
    assert cg.pids() == [sleeper.pid]
    cg.remove()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert not any(d.exists() for d in cg.dirs)
    cg.remove()


@needs_root
@needs_v1
def test_attach_self_failure_aborts_the_launch(v1: CgroupV1Enforcer) -> None:
    cg = v1.prepare("hstest-gone", Limits(cpu=None, memory=None))
    cg.remove()
    with pytest.raises(subprocess.SubprocessError):
        run_in(cg, "print('ran unlimited')")


def fake_v2_tree(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    """A FAKE cgroup2 mount made of plain files: real cgroup v2 is not available here.

    Only files the kernel would have *before* we act are created; files that appear when a
    controller is enabled are written by the code under test (plain files accept that).
    """
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_writes_limits_into_a_fake_tree(tmp_path: Path) -> None:
    """FAKE tree: checks which files get which contents, not kernel behaviour."""
    root = fake_v2_tree(tmp_path / "cg")
    group = root / "hubstack" / "hubstack-hs-bob-lab"
    group.mkdir(parents=True)
    (group / "memory.swap.max").write_text("max\n")  # present when swap accounting is on
    enforcer = CgroupV2Enforcer(root)
    cg = enforcer.prepare("hubstack-hs-bob-lab", Limits(cpu=0.5, memory=64 * MiB, pids=50))
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "hubstack" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (group / "memory.max").read_text() == str(64 * MiB)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert (group / "pids.max").read_text() == "50"
    assert cg.read_limits() == Limits(cpu=0.5, memory=64 * MiB, pids=50)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    assert cg.oom_kills() == 2
    (group / "cgroup.procs").write_text("")
    assert cg.pids() == []

    enforcer.prepare("hubstack-hs-bob-lab", Limits(cpu=None, memory=None))
    assert (group / "memory.max").read_text() == "max"
    assert (group / "memory.swap.max").read_text() == "max"
    assert (group / "cpu.max").read_text() == "max 100000"
    assert cg.read_limits() == Limits(cpu=None, memory=None, pids=None)


def test_v2_enables_only_missing_offered_controllers(tmp_path: Path) -> None:
    """FAKE tree: an already enabled controller is not re-enabled; unoffered ones are skipped."""
    root = fake_v2_tree(tmp_path / "cg", controllers="cpu memory")
    (root / "cgroup.subtree_control").write_text("memory\n")
    CgroupV2Enforcer(root).prepare("u1", Limits(cpu=2, memory=None))
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert not (root / "hubstack" / "u1" / "memory.swap.max").exists()
    assert not (root / "hubstack" / "u1" / "pids.max").exists()
    assert (root / "hubstack" / "u1" / "cpu.max").read_text() == "200000 100000"
    with pytest.raises(SystemOpError, match="pids limit needs the pids controller"):
        CgroupV2Enforcer(root).prepare("u1", Limits(cpu=None, memory=None, pids=10))


def test_systemd_wraps_the_command_in_a_scope() -> None:
    cmd = ["jupyterhub-singleuser", "--ip=127.0.0.1", "--notebook-dir=/home/a b; rm -rf /"]
    limits = Limits(cpu=1.5, memory=2 * 2**30, pids=512)
    assert SystemdEnforcer().wrap_command("hubstack-hs-alice-lab", limits, cmd) == [
        tool("systemd-run"),
        "--scope",
        "--quiet",
        "--collect",
        "--unit=hubstack-hs-alice-lab",
        "-p",
        "MemoryMax=2147483648",
        "-p",
        "MemorySwapMax=0",
        "-p",
        "CPUQuota=150%",
        "-p",
        "TasksMax=512",
        "--",
        *cmd,
    ]
    only_cpu = SystemdEnforcer().wrap_command("u", Limits(cpu=0.5, memory=None), ["true"])
    assert only_cpu == [
        tool("systemd-run"), "--scope", "--quiet", "--collect", "--unit=u",
        "-p", "CPUQuota=50%", "--", "true",
    ]  # fmt: skip


def test_systemd_scope_handle(tmp_path: Path) -> None:
    """FAKE tree: the scope handle reads systemd's cgroup and never joins it itself."""
    cg = SystemdEnforcer(tmp_path).prepare("u", Limits(cpu=None, memory=None))
    assert cg.oom_kills() == 0  # scope not created yet
    assert cg.pids() == []
    scope = tmp_path / "system.slice" / "u.scope"
    scope.mkdir(parents=True)
    (scope / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1
    cg.attach_self()
    assert not (scope / "cgroup.procs").exists()


def test_no_limits_is_inert() -> None:
    enforcer = NoLimits()
    assert enforcer.wrap_command("u", Limits(cpu=1, memory=MiB), ["a", "b"]) == ["a", "b"]
    cg = enforcer.prepare("u", Limits(cpu=1, memory=MiB))
    result = run_in(cg, "print('ok')")
    assert result.stdout.strip() == "ok"
    assert (cg.oom_kills(), cg.pids(), cg.read_limits()) == (0, [], Limits(None, None, None))
    cg.kill_all()
    cg.remove()


def test_v1_and_v2_do_not_wrap_commands() -> None:
    limits = Limits(cpu=1, memory=MiB)
    assert CgroupV1Enforcer().wrap_command("u", limits, ["x"]) == ["x"]
    assert CgroupV2Enforcer().wrap_command("u", limits, ["x"]) == ["x"]


@needs_root
@needs_v1
def test_detect_auto_picks_v1_on_this_machine() -> None:
    if Path("/proc/1/comm").read_text().strip() == "systemd":
        pytest.skip("systemd is PID 1 here, auto would pick it")
    enforcer = detect()
    assert isinstance(enforcer, CgroupV1Enforcer)
    assert enforcer.name == "cgroup-v1"


@needs_root
def test_detect_explicit_choices(tmp_path: Path) -> None:
    assert isinstance(detect("off"), NoLimits)
    with pytest.raises(SystemOpError, match=r"'cgroup-v2' is not available: .*cgroup\.controllers"):
        detect("cgroup-v2", root=tmp_path)
    with pytest.raises(SystemOpError, match=r"'cgroup-v1' is not available: .*memory"):
        detect("cgroup-v1", root=tmp_path)
    with pytest.raises(ValueError, match="unknown limits enforcer"):
        detect("cgroups")
    fake = fake_v2_tree(tmp_path / "v2")
    assert isinstance(detect("cgroup-v2", root=fake), CgroupV2Enforcer)
    no_memory = fake_v2_tree(tmp_path / "v2-nomem", controllers="cpu pids")
    with pytest.raises(SystemOpError, match="does not offer the memory controller"):
        detect("cgroup-v2", root=no_memory)
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        with pytest.raises(SystemOpError, match="not systemd"):
            detect("systemd")
        assert isinstance(detect("auto", root=fake), CgroupV2Enforcer)
        assert isinstance(detect("auto", root=tmp_path / "empty"), NoLimits)
