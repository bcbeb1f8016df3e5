"""Spawn latency and scheduler load of hubstack's Slurm backend against batchspawner.

    uv run python benchmarks/spawn_slurm.py [--spawns N] [--window SECONDS] [--logs DIR]

Runs on the local Slurm cluster of scripts/slurm-cluster.sh (started if it is not up; its one
node is this machine). Three hubs run side by side, each starting the default environment's
``jupyterhub-singleuser`` as a job of 1 CPU, 1G and 1 h on the default partition:

* hubstack-slurm: a ``hubstack up`` hub (tests/hubtest.py) with ``backend.type: slurm`` and
  the backend's default polling: one shared ``squeue`` for all jobs, every 2 s while any job
  is queued or starting (10 s otherwise); the job's server reports its address to the hub;
* batchspawner: plain JupyterHub with batchspawner's stock ``SlurmSpawner``, which submits
  and queries as the user (``sudo -E -u USER``), asks ``squeue -j JOB`` about each starting
  job every 0.5 s, and runs the server through ``batchspawner-singleuser``;
* hubstack-local: a ``hubstack up`` hub with the local backend, the reference the Slurm
  backend's spawn latency is held against.

1. Spawn latency: from sending ``POST /hub/api/users/<user>/server`` until the progress event
   stream reports ``ready``; the server is then stopped (untimed), and the next spawn waits
   until the stopped server's job has left the queue: batchspawner's stop returns while its
   job is still completing, and slurmctld places no job on a node where another one is
   still completing, which would charge one hub's leftovers to the next hub's spawn. The
   hubs take turns, after one uncounted warm-up spawn each (spawn_local.py does the same
   with two hubs).
2. Scheduler queries while servers wait in the queue: a root job (``sbatch --exclusive``) fills
   the node, then each Slurm hub starts 10 named servers, and once all 10 jobs are PENDING,
   the commands it runs are counted for ``--window`` seconds; then the same with 50. Counting
   is done by wrappers of Slurm's commands that log each call and exec the real one: hubstack
   is given their directory as ``backend.slurm.bin_dir``, batchspawner their full paths in its
   ``batch_*_cmd`` templates. Queries are the calls of squeue, sacct, scontrol and sinfo.
3. Where a Slurm spawn's time goes, from slurmctld's log (its lines carry milliseconds): until
   slurmctld accepted the job (the hub's preparation and sbatch), in the queue until slurmctld
   started it, and from there until ready (the job's launch and the same server start as on
   the local backend). Slurm never starts a batch job when it is submitted, only in one of
   its scheduling passes (the main scheduler's and backfill's, on slurmctld's background
   cycle of whole seconds), so even on an idle node a job waits for the next pass.

batchspawner is never a dependency of hubstack: the run installs it (idempotently, with uv) in
its own world-readable prefix, /opt/hubstack/bench/batchspawner: ``hub/``, a virtualenv with
batchspawner 1.3.0 (its newest release) on JupyterHub 6.1.1, the same as hubstack's (it works
there unchanged), for the plain hub; and ``singleuser/``, batchspawner alone, put on
``PYTHONPATH`` of the job's ``batchspawner-singleuser`` so that it runs the very same server
(the default environment's Python and packages) as the other two hubs.

Needs root (servers run as other accounts) and the default environment from scripts/setup.sh.
Everything the run creates (hubs, jobs, accounts, temporary directories) is removed at the
end, also on errors and Ctrl-C; the batchspawner prefix is kept for the next run.

Reading the result: hubstack's query count does not grow with the number of queued servers
(one ``squeue`` per interval for all of them); batchspawner's grows with it (one ``squeue``
per starting server per 0.5 s) until the machine cannot run them any faster. The node is
shared: a spawn whose job had to wait for someone else's shows up in p95, not in p50.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jupyterhub

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubbench import (
    SINGLEUSER,
    HubClient,
    cancel_jobs_of,
    catch_signals,
    env_versions,
    hubstack_hub,
    load,
    measure,
    p95,
    plain_hub,
    print_latencies,
    queued_jobs,
    unix_account,
)
from hubtest import DEFAULT_ENV, wait_for

from hubstack.envs.builder import uv_binary

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts/slurm-cluster.sh"
BENCH_PREFIX = Path("/opt/hubstack/bench/batchspawner")
BENCH_HUB_PINS = ("jupyterhub==6.1.1", "batchspawner==1.3.0")
BENCH_SINGLEUSER_PIN = "batchspawner==1.3.0"
SLURM_BIN = Path("/usr/bin")
WRAPPED = ("sbatch", "squeue", "sacct", "scontrol", "sinfo", "scancel", "sacctmgr")
QUERIES = ("squeue", "sacct", "scontrol", "sinfo")
PENDING_STEPS = (10, 50)
START_TIMEOUT = 3600
"""Seconds a start may take, queue time included: waiting in the queue is not a failure."""
BLOCKER_TIMEOUT = 1800.0
PENDING_TIMEOUT = 300.0
TARGET_LOCAL_RATIO = 1.1
# slurmctld's notes (at its default log level, info) of a job accepted and a job started.
CONTROLLER_EVENT = re.compile(
    r"^\[(?P<at>[0-9T:.-]+)\] (?:(?P<submitted>_slurm_rpc_submit_batch_job): JobId=(?P<a>\d+)"
    r"|sched: Allocate JobId=(?P<b>\d+)|sched/backfill: _start_job: Started JobId=(?P<c>\d+))"
)


# -- the batchspawner environment -------------------------------------------------------------


@dataclass(frozen=True)
class BenchEnv:
    """batchspawner's own prefix: a hub virtualenv and a batchspawner-only overlay."""

    prefix: Path

    @property
    def hub_python(self) -> Path:
        return self.prefix / "hub/bin/python"

    @property
    def overlay(self) -> Path:
        return self.prefix / "singleuser"

    def versions(self) -> str:
        code = (
            "import batchspawner, jupyterhub;"
            "print(jupyterhub.__version__, batchspawner.__version__)"
        )
        out = subprocess.run(
            [str(self.hub_python), "-c", code], capture_output=True, text=True, check=True
        )
        hub, batchspawner = out.stdout.split()
        return f"batchspawner {batchspawner} on jupyterhub {hub}"


def ensure_bench_env(prefix: Path = BENCH_PREFIX) -> BenchEnv:
    """Install batchspawner's prefix unless it is there with the same pins already.

    Jobs run as other accounts, so everything in it is made readable (and directories and
    programs executable) for all.
    """
    env = BenchEnv(prefix)
    marker = prefix / "installed.txt"
    wanted = "\n".join([*BENCH_HUB_PINS, f"singleuser: {BENCH_SINGLEUSER_PIN}"]) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return env
    print(f"installing {', '.join(BENCH_HUB_PINS)} into {prefix} ...", flush=True)
    prefix.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    # The interpreter under hubstack's own virtualenv; never one uv would download.
    uv("venv", "--clear", "--python", sys.executable, str(prefix / "hub"))
    uv("pip", "install", "--python", str(env.hub_python), *BENCH_HUB_PINS)
    shutil.rmtree(env.overlay, ignore_errors=True)
    target = ["--target", str(env.overlay), "--no-deps", BENCH_SINGLEUSER_PIN]
    uv("pip", "install", "--python", str(DEFAULT_ENV / "bin/python"), *target)
    subprocess.run(["chmod", "-R", "a+rX", str(prefix.parent)], check=True)
    marker.write_text(wanted)
    return env


def uv(*args: str) -> None:
    subprocess.run(
        [uv_binary(), "--quiet", "--no-python-downloads", *args], check=True, umask=0o022
    )


# -- the cluster ------------------------------------------------------------------------------


def cluster_script(*args: str) -> str:
    """Run scripts/slurm-cluster.sh (only ``start`` and ``add-user``: others share it)."""
    proc = subprocess.run(
        [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"slurm-cluster.sh {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class CommandLog:
    """A directory of wrappers of Slurm's commands that log each call to one file."""

    bin_dir: Path
    path: Path

    def counts(self) -> Counter[str]:
        return Counter(self.path.read_text().split())


@contextlib.contextmanager
def counting_wrappers(label: str) -> Iterator[CommandLog]:
    """Wrappers (run as root and, through sudo or runuser, as the job's user) in a temporary
    directory that every account can enter; the log is writable by all for that reason."""
    with tempfile.TemporaryDirectory(prefix=f"slurm-calls-{label}-") as tmp:
        root = Path(tmp)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        log = CommandLog(bin_dir, root / "calls.log")
        log.path.touch()
        for path, mode in ((root, 0o755), (bin_dir, 0o755), (log.path, 0o666)):
            path.chmod(mode)
        for name in WRAPPED:
            wrapper = bin_dir / name
            real = shlex.quote(str(SLURM_BIN / name))
            wrapper.write_text(
                f'#!/bin/sh\necho {name} >> {shlex.quote(str(log.path))}\nexec {real} "$@"\n'
            )
            wrapper.chmod(0o755)
        yield log


def squeue_states(job: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", f"--jobs={job}", "--format=%T"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip()


@contextlib.contextmanager
def node_filled(hold: int) -> Iterator[str]:
    """A root job holding the whole node for ``hold`` seconds, so that new jobs queue."""
    minutes = hold // 60 + 5
    argv = ["sbatch", "--parsable", "--exclusive", "--output=/dev/null", f"--time={minutes}"]
    argv += ["--job-name=hubbench-fill", f"--wrap=sleep {hold}"]
    job = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    try:
        print(f"  node filled by job {job}; waiting for it to run", flush=True)
        wait_for(lambda: squeue_states(job) == "RUNNING", BLOCKER_TIMEOUT, f"job {job} to run")
        yield job
    finally:
        subprocess.run(["scancel", job], check=False, capture_output=True)


# -- the hubs -------------------------------------------------------------------------------


def hubstack_overrides(bin_dir: Path) -> dict[str, Any]:
    """hubstack with the Slurm backend's defaults, Slurm's commands counted through
    ``bin_dir``, and room for the largest number of queued named servers.

    hubtest gives Slurm hubs per-server volumes for the tests; the default is none (servers
    open in the home), as here.
    """
    slurm = {"bin_dir": str(bin_dir), "shared": {"volumes": None}}
    return {
        "backend": {"type": "slurm", "slurm": slurm},
        "policy": {"named_servers": {"max": max(PENDING_STEPS)}},
    }


def batchspawner_traits(bin_dir: Path, env: BenchEnv) -> dict[str, dict[str, Any]]:
    """Stock SlurmSpawner, with its commands counted through ``bin_dir`` and the same job
    size, time limit and server as hubstack's."""
    singleuser = f"env PYTHONPATH={env.overlay} {DEFAULT_ENV / 'bin/python'} -m"
    return {
        "JupyterHub": {"spawner_class": "batchspawner.SlurmSpawner", "allow_named_servers": True},
        "SlurmSpawner": {
            "start_timeout": START_TIMEOUT,
            "batchspawner_singleuser_cmd": f"{singleuser} batchspawner.singleuser",
            "batch_submit_cmd": f"{bin_dir / 'sbatch'} --parsable",
            "batch_query_cmd": f"{bin_dir / 'squeue'} -h -j {{job_id}} -o '%T %B'",
            "batch_cancel_cmd": f"{bin_dir / 'scancel'} {{job_id}}",
            "req_nprocs": "1",
            "req_memory": "1G",
            "req_runtime": "1:00:00",
        },
    }


@contextlib.contextmanager
def slurm_account() -> Iterator[str]:
    """A throwaway Unix account known to Slurm's accounting, for batchspawner's user."""
    name = f"bs-{secrets.token_hex(3)}"
    with unix_account(name):
        cluster_script("add-user", name)
        try:
            yield name
        finally:
            try:
                cancel_jobs_of([name])
            finally:
                subprocess.run(["sacctmgr", "-i", "delete", "user", name], capture_output=True)


# -- queries while queued ---------------------------------------------------------------------


def queries_while_queued(
    client: HubClient, log: CommandLog, window: float
) -> dict[int, Counter[str]]:
    """Calls of each Slurm command during ``window`` seconds with 10, then 50 servers queued.

    The servers are stopped (their jobs cancelled) before this returns, also on errors.
    """
    calls: dict[int, Counter[str]] = {}
    names: list[str] = []
    try:
        for count in PENDING_STEPS:
            new = [f"q{i}" for i in range(len(names) + 1, count + 1)]
            names += new
            # Each POST waits up to JupyterHub's slow_spawn_timeout (10 s): send them at once.
            with ThreadPoolExecutor(len(new)) as pool:
                list(pool.map(client.start, new))
            wait_for(
                lambda count=count: all_queued(client.account, count),
                PENDING_TIMEOUT,
                f"{count} jobs of {client.account} to be PENDING",
            )
            before = log.counts()
            time.sleep(window)
            after = log.counts()
            if not all_queued(client.account, count):
                raise RuntimeError(f"{client.label}: a job left the queue during the window")
            calls[count] = after - before
            rate = per_minute(calls[count], window)
            print(f"  {client.label}: {count} queued: {rate:.0f} queries/min", flush=True)
    finally:
        stop_all(client, names)
    return calls


def all_queued(account: str, count: int) -> bool:
    """Exactly ``count`` jobs of ``account`` are in the queue, and all are PENDING."""
    return len(queued_jobs(account, "PD")) == count == len(queued_jobs(account))


def stop_all(client: HubClient, names: list[str]) -> None:
    """Stop those of these servers the hub has, at once; wait until they and their jobs
    are gone."""
    active = [name for name in names if name in client.servers()]
    with ThreadPoolExecutor(max(1, len(active))) as pool:
        list(pool.map(client.request_stop, active))
    wait_for(lambda: not set(names) & set(client.servers()), PENDING_TIMEOUT, "servers to stop")
    wait_for(lambda: not queued_jobs(client.account), PENDING_TIMEOUT, "their jobs to end")


def job_left(client: HubClient) -> None:
    """Wait until ``client``'s stopped server's job has left the queue."""
    what = f"{client.label}'s job to leave the queue"
    wait_for(lambda: not queued_jobs(client.account), PENDING_TIMEOUT, what, 0.1)


# -- where the time goes ------------------------------------------------------------------------


def controller_log() -> Path:
    """slurmctld's log file, as its configuration names it."""
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.MULTILINE)
    if found is None:
        raise RuntimeError("slurmctld logs to syslog here: no file to read job events from")
    return Path(found.group(1))


def job_events(log: Path, offset: int) -> dict[str, dict[str, float]]:
    """When slurmctld accepted and started each job, from its log past ``offset`` bytes."""
    jobs: dict[str, dict[str, float]] = {}
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        event = CONTROLLER_EVENT.match(line)
        if event is None:
            continue
        job = event["a"] or event["b"] or event["c"]
        at = datetime.fromisoformat(event["at"]).timestamp()
        jobs.setdefault(job, {}).setdefault("submitted" if event["submitted"] else "started", at)
    return jobs


def phases(client: HubClient, jobs: dict[str, dict[str, float]]) -> list[tuple[float, ...]]:
    """(to submission, in the queue, started to ready) of each of ``client``'s spawns: its
    spawns ran one at a time, so the job accepted during a spawn is that spawn's."""
    found = []
    for start, ready in client.spans:
        for times in jobs.values():
            if "started" in times and start <= times.get("submitted", -1) <= ready:
                submitted, started = times["submitted"], times["started"]
                found.append((submitted - start, started - submitted, ready - started))
                break
    return found


# -- reporting --------------------------------------------------------------------------------


def print_header(spawns: int, window: float, cluster: str, env: BenchEnv) -> None:
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    print("Slurm spawners: hubstack's Slurm backend, batchspawner's SlurmSpawner, hubstack local")
    print(f"  machine:      {os.cpu_count()} CPUs, kernel {platform.release()}, load {load()}")
    print(f"  cluster:      {slurm}; {cluster.removeprefix('slurm-cluster: ')}")
    print(
        f"  hubstack:     jupyterhub {jupyterhub.__version__} (Python {platform.python_version()})"
    )
    print(f"  batchspawner: {env.versions()} ({env.prefix})")
    print(f"  servers:      {SINGLEUSER} ({env_versions()})")
    print("  jobs:         1 CPU, 1G, 1 h, default partition")
    print(f"  spawns:       {spawns} per hub, interleaved, after 1 uncounted warm-up each")
    print(f"  queries:      counted over {window:g} s with {' and '.join(map(str, PENDING_STEPS))}")
    print("                servers queued behind a job that fills the node")
    print()


def ratio_line(label: str, a: HubClient, b: HubClient, note: str = "") -> None:
    p50 = statistics.median(a.samples) / statistics.median(b.samples)
    p95_ratio = p95(a.samples) / p95(b.samples)
    print(f"{label:34s} p50 {p50:5.2f}   p95 {p95_ratio:5.2f}{note}")


def per_minute(calls: Counter[str], window: float) -> float:
    return sum(calls[q] for q in QUERIES) * 60 / window


def print_phases(clients: list[HubClient], jobs: dict[str, dict[str, float]]) -> None:
    """Medians of each part of a spawn; the local backend's whole spawn for comparison."""
    slurm, batch, local = clients
    print("Where a spawn's time goes (medians, s): request -> job accepted by slurmctld")
    print("-> started by slurmctld -> ready")
    print(f"{'':16s} {'n':>3s} {'to submit':>10s} {'in queue':>10s} {'to ready':>10s}")
    for client in (slurm, batch):
        rows = phases(client, jobs)
        if not rows:
            print(f"{client.label:16s}   0 (no job events in slurmctld's log)")
            continue
        cols = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(f"{client.label:16s} {len(rows):3d} " + " ".join(f"{c:10.3f}" for c in cols))
    whole = statistics.median(local.samples)
    print(f"{local.label:16s} {len(local.samples):3d} {'-':>10s} {'-':>10s} {whole:10.3f}")
    waits = [row[1] for row in phases(slurm, jobs)]
    if waits:
        print(
            f"{slurm.label}'s time in the queue: min {min(waits):.3f}, mean "
            f"{statistics.fmean(waits):.3f}, max {max(waits):.3f} s"
        )
    print()


def print_tables(
    clients: list[HubClient],
    queries: dict[str, dict[int, Counter[str]]],
    window: float,
    jobs: dict[str, dict[str, float]],
) -> None:
    slurm, batch, local = clients
    print("Spawn latency: POST .../server until the progress stream says ready")
    print_latencies(clients)
    target = statistics.median(slurm.samples) / statistics.median(local.samples)
    verdict = "met" if target <= TARGET_LOCAL_RATIO else "NOT met"
    note = f"   target p50 <= {TARGET_LOCAL_RATIO}: {verdict}"
    ratio_line(f"{slurm.label} / {local.label}", slurm, local, note)
    ratio_line(f"{slurm.label} / {batch.label}", slurm, batch)
    print()
    print_phases(clients, jobs)
    low, high = PENDING_STEPS
    print(f"Scheduler queries per minute ({', '.join(QUERIES)}) with servers queued")
    print(f"{'':16s} {f'{low} queued':>10s} {f'{high} queued':>10s} {f'{high}/{low}':>8s}")
    for label, calls in queries.items():
        at_low, at_high = per_minute(calls[low], window), per_minute(calls[high], window)
        growth = f"{at_high / at_low:8.2f}" if at_low else f"{'-':>8s}"
        print(f"{label:16s} {at_low:10.0f} {at_high:10.0f} {growth}")
    print(f"(growth if linear: {high / low:.2f}; all calls in the windows, per minute:)")
    for label, calls in queries.items():
        for count in PENDING_STEPS:
            each = ", ".join(
                f"{name} {n * 60 / window:.0f}" for name, n in sorted(calls[count].items())
            )
            share = per_minute(calls[count], window) / count
            print(f"  {label}, {count} queued: {each or 'none'} ({share:.1f} per queued server)")


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--spawns", type=int, default=10, help="timed spawns per hub")
    parser.add_argument(
        "--window", type=float, default=60, help="seconds queries are counted for, each time"
    )
    parser.add_argument("--logs", type=Path, help="save the three hubs' logs in this directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the hubs start servers as other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    if args.spawns < 1:
        parser.error("--spawns must be at least 1")
    if args.window < 10:
        parser.error("--window must be at least 10 seconds")
    catch_signals()

    def keeper(label: str) -> Callable[[str], None]:
        def keep(text: str) -> None:
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"{label}.log").write_text(text)

        return keep

    started = time.monotonic()
    cluster = cluster_script("start")
    env = ensure_bench_env()
    print_header(args.spawns, args.window, cluster, env)
    # Long enough for both hubs to queue, count twice and stop all their servers.
    hold = int(900 + 4 * args.window)
    queries: dict[str, dict[int, Counter[str]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            hub_calls = stack.enter_context(counting_wrappers("hubstack"))
            batch_calls = stack.enter_context(counting_wrappers("batchspawner"))
            account = stack.enter_context(slurm_account())
            batch = stack.enter_context(
                plain_hub(
                    "batchspawner",
                    account,
                    batchspawner_traits(batch_calls.bin_dir, env),
                    imports=("batchspawner",),
                    python=env.hub_python,
                    keep_log=keeper("batchspawner"),
                )
            )
            overrides = hubstack_overrides(hub_calls.bin_dir)
            slurm = stack.enter_context(
                hubstack_hub("hubstack-slurm", keeper("hubstack-slurm"), overrides)
            )
            local = stack.enter_context(hubstack_hub("hubstack-local", keeper("hubstack-local")))
            clients = [slurm, batch, local]
            log = controller_log()
            offset = log.stat().st_size
            measure(clients, args.spawns, settle=job_left)
            jobs = job_events(log, offset)
            with node_filled(hold):
                for client, log in ((slurm, hub_calls), (batch, batch_calls)):
                    queries[client.label] = queries_while_queued(client, log, args.window)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the run started has been cleaned up", file=sys.stderr)
        return 130
    print_tables(clients, queries, args.window, jobs)
    print(f"\nruntime {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
