"""A class arriving at once: hubstack's local backend against stock JupyterHub, on this machine.

    uv run python benchmarks/load.py [--users 30] [--arrival 10] [--rounds 1] [--fork-server]

Each round runs the storm on each hub in turn (hubstack, stock, hubstack, ...): ``--users``
simulated users arrive spread evenly over ``--arrival`` seconds; each logs in through the
login form, asks for an API token with that session (as JupyterLab's pages do), starts a
server through the REST API, follows its progress stream until ready, creates a kernel and
runs ``1+1`` through the kernel's websocket. Then all servers are stopped. Both hubs run
JupyterHub 6 with configurable-http-proxy and the same single-user environment; the stock
hub uses the dummy authenticator and ``LocalProcessSpawner`` with one Unix account per
user. Both get a start timeout of 300 s, so that slow starts show as slow, not as failures.

Reported per hub and round: failed users (and why), p50/p95/max of arrival to first output,
p50 of the login POST, of the spawn (request to ready) and of the kernel (creation to
output), the CPU time the whole machine and the hub process used during the storm (per
user), and, once all have run their cell, per user: the CPU time of the user's own
processes (server and kernel: the cost of a start beyond the hub's) and their memory (PSS,
so pages a fork shares count once). ``--fork-server`` turns on hubstack's
``backend.local.fork_server``. It is plain Python with threads rather than hubtraf or
locust: each user is one linear script, and the figures the issue asks for are read
straight from it.

Needs root and the default environment from scripts/setup.sh. Accounts, hubs and
directories the run creates are removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import pwd
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jupyterhub
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubbench import (
    SINGLEUSER,
    catch_signals,
    hub_process,
    load,
    plain_config,
)
from hubtest import execute, free_port_block, running_hub, wait_for

from hubstack.backends.admission import default_limit
from hubstack.system.accounts import kill_processes_of

START_TIMEOUT = 300
STOCK_PREFIX = "hsload"
CELL = "print(1+1)"


@dataclass
class Outcome:
    """One user's storm: seconds for each step, or why it failed."""

    login: float | None = None
    spawn: float | None = None
    kernel: float | None = None
    total: float | None = None
    error: str | None = None
    token: str | None = None  # the user's API token, to stop the server afterwards


@dataclass
class Target:
    """A hub under test: its URL, its users and their passwords, and its process."""

    label: str
    url: str
    passwords: dict[str, str]
    pid: int
    outcomes: list[Outcome] = field(default_factory=list)
    machine_cpu: float = 0.0
    hub_cpu: float = 0.0
    accounts: dict[str, str] = field(default_factory=dict)  # hub user -> Unix account
    user_cpu: list[float] = field(default_factory=list)
    user_memory: list[int] = field(default_factory=list)


def machine_cpu_seconds() -> float:
    """CPU time used by everything on the machine so far (user + system, all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system = (int(v) for v in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
    return found


def account_usage(account: str) -> tuple[float, int]:
    """CPU-seconds (with reaped children) and PSS bytes of every process of ``account``."""
    cpu, pss = 0.0, 0
    for pid in processes_of(pwd.getpwnam(account).pw_uid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += sum(int(v) for v in stat[11:15]) / os.sysconf("SC_CLK_TCK")
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return cpu, pss


def arrive(target: Target, name: str) -> Outcome:
    """One user: form login, token, start, progress until ready, kernel, ``1+1``."""
    outcome = Outcome()
    arrived = time.perf_counter()
    try:
        http = requests.Session()
        http.get(f"{target.url}/hub/login", timeout=START_TIMEOUT).raise_for_status()
        xsrf = http.cookies.get("_xsrf", path="/hub/")
        sent = time.perf_counter()
        resp = http.post(
            f"{target.url}/hub/login",
            data={"username": name, "password": target.passwords[name], "_xsrf": xsrf},
            allow_redirects=False,
            timeout=START_TIMEOUT,
        )
        outcome.login = time.perf_counter() - sent
        if resp.status_code != 302:
            raise RuntimeError(f"login answered {resp.status_code}")
        xsrf = http.cookies.get("_xsrf", path="/hub/")
        made = http.post(
            f"{target.url}/hub/api/users/{name}/tokens",
            json={"note": "load"},
            headers={"X-XSRFToken": xsrf},
            timeout=START_TIMEOUT,
        )
        made.raise_for_status()
        outcome.token = made.json()["token"]
        headers = {"Authorization": f"token {outcome.token}"}
        api = f"{target.url}/hub/api/users/{name}/server"
        asked = time.perf_counter()
        started = requests.post(
            api, headers=headers, json={"user_options": {}}, timeout=START_TIMEOUT
        )
        if started.status_code not in (201, 202):
            raise RuntimeError(f"start answered {started.status_code}: {started.text[:200]}")
        last = follow_progress(f"{api}/progress", headers)
        if not last.get("ready"):
            raise RuntimeError(f"start failed: {str(last.get('message'))[:200]}")
        outcome.spawn = time.perf_counter() - asked
        base = f"{target.url}/user/{name}/"
        opened = time.perf_counter()
        kernel = requests.post(f"{base}api/kernels", headers=headers, json={}, timeout=120)
        kernel.raise_for_status()
        run = execute(base, kernel.json()["id"], outcome.token, CELL, 120)
        if run.status != "ok" or run.stdout.strip() != "2":
            raise RuntimeError(f"the cell gave {run}")
        outcome.kernel = time.perf_counter() - opened
        outcome.total = time.perf_counter() - arrived
    except Exception as exc:  # a failed user is a result, not the end of the run
        outcome.error = f"{type(exc).__name__}: {exc}"[:300]
    return outcome


def follow_progress(url: str, headers: dict[str, str]) -> dict[str, object]:
    last: dict[str, object] = {}
    with requests.get(url, headers=headers, stream=True, timeout=START_TIMEOUT) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                last = json.loads(line[5:])
                if last.get("ready") or last.get("failed"):
                    break
    return last


def storm(target: Target, arrival: float) -> None:
    """All users of ``target`` arrive spread over ``arrival`` seconds; then all stop."""
    names = sorted(target.passwords)
    gap = arrival / max(len(names) - 1, 1)
    cpu, hub_cpu = machine_cpu_seconds(), process_cpu_seconds(target.pid)
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = []
        for i, name in enumerate(names):
            futures.append(pool.submit(arrive, target, name))
            if i < len(names) - 1:
                time.sleep(gap)  # the arrival schedule
        target.outcomes = [f.result() for f in futures]
    target.machine_cpu = machine_cpu_seconds() - cpu
    target.hub_cpu = process_cpu_seconds(target.pid) - hub_cpu
    ran = [n for n, o in zip(names, target.outcomes, strict=True) if o.error is None]
    usage = [account_usage(target.accounts[name]) for name in ran]
    target.user_cpu = [cpu for cpu, _ in usage]
    target.user_memory = [memory for _, memory in usage]


def stop_all(target: Target) -> None:
    """Every user stops their server with their own token; wait until all are gone."""
    names = sorted(target.passwords)
    tokens = {n: o.token for n, o in zip(names, target.outcomes, strict=True) if o.token}
    for name, token in tokens.items():
        requests.delete(
            f"{target.url}/hub/api/users/{name}/server",
            headers={"Authorization": f"token {token}"},
            timeout=120,
        )

    def stopped(name: str) -> bool:
        headers = {"Authorization": f"token {tokens[name]}"}
        user = requests.get(f"{target.url}/hub/api/users/{name}", headers=headers, timeout=60)
        return not user.json().get("servers")

    for name in tokens:
        wait_for(lambda name=name: stopped(name), 300, f"{name}'s server to stop")


@contextlib.contextmanager
def hubstack_target(users: int, concurrent_starts: int | None, fork: bool) -> Iterator[Target]:
    overrides = {
        "backend": {"local": {"concurrent_starts": concurrent_starts, "fork_server": fork}},
        "extra_jupyterhub_config": {"HubstackSpawner": {"start_timeout": START_TIMEOUT}},
    }
    with running_hub(overrides) as hub:
        names = [f"load{i}" for i in range(users)]
        passwords = {name: hub.add_user(name) for name in names}
        assert hub.proc is not None
        accounts = {name: hub.prefix + name for name in names}
        yield Target("hubstack", hub.url, passwords, hub.proc.pid, accounts=accounts)


@contextlib.contextmanager
def stock_target(users: int) -> Iterator[Target]:
    names = [f"{STOCK_PREFIX}{i}" for i in range(users)]
    with contextlib.ExitStack() as stack:
        for name in names:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
            stack.callback(subprocess.run, ["userdel", "--remove", name], capture_output=True)
            stack.callback(kill_processes_of, pwd.getpwnam(name).pw_uid)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loadhub-")))
        port = free_port_block()
        token = secrets.token_hex(32)
        traits = {
            "JupyterHub": {"spawner_class": "localprocess"},
            "Spawner": {"start_timeout": START_TIMEOUT},
        }
        config = workdir / "jupyterhub_config.py"
        config.write_text(plain_config(workdir, port, token, traits))
        log = workdir / "hub.log"
        proc = stack.enter_context(hub_process(Path(sys.executable), config, workdir, log))
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: requests.get(f"{url}/hub/api/", timeout=5).status_code == 200,
            90,
            "the stock JupyterHub",
        )
        accounts = {name: name for name in names}
        yield Target("stock", url, dict.fromkeys(names, "any"), proc.pid, accounts=accounts)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(round_no: int, target: Target) -> None:
    ok = [o for o in target.outcomes if o.error is None]
    failed = [o for o in target.outcomes if o.error is not None]
    users = len(target.outcomes)

    def p50(values: list[float | None]) -> str:
        present = [v for v in values if v is not None]
        return f"{statistics.median(present):6.2f}" if present else "     -"

    totals = [o.total for o in ok if o.total is not None]
    spread = (
        f"{percentile(totals, 0.5):6.1f} {percentile(totals, 0.95):6.1f} {max(totals):6.1f}"
        if totals
        else "     -      -      -"
    )
    print(
        f"{round_no:5d} {target.label:9s} {len(failed):6d} {spread}  "
        f"{p50([o.login for o in target.outcomes])} {p50([o.spawn for o in ok])} "
        f"{p50([o.kernel for o in ok])}  {target.machine_cpu / users:7.2f} "
        f"{target.hub_cpu / users:7.3f}  {p50(target.user_cpu)} "
        f"{p50([m / 2**20 for m in target.user_memory])}"
    )
    for outcome in failed:
        print(f"        failed: {outcome.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--arrival", type=float, default=10.0, help="seconds to arrive over")
    parser.add_argument("--rounds", type=int, default=1, help="storms per hub, alternating")
    parser.add_argument(
        "--concurrent-starts", type=int, help="hubstack's backend.local.concurrent_starts"
    )
    parser.add_argument(
        "--fork-server", action="store_true", help="hubstack's backend.local.fork_server"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: both hubs run servers as other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    if args.users < 1 or args.rounds < 1 or args.arrival < 0:
        parser.error("--users and --rounds must be at least 1, --arrival not negative")
    catch_signals()
    print(f"A class of {args.users} arriving over {args.arrival:g} s, then all stop")
    print(f"  machine: {os.cpu_count()} CPUs, kernel {platform.release()}, load {load()}")
    print(f"  hub:     jupyterhub {jupyterhub.__version__}; servers: {SINGLEUSER}")
    starts = args.concurrent_starts or f"{default_limit()} (the CPU count)"
    print(f"  hubstack starts at once: {starts}; fork server: {args.fork_server}")
    print()
    print(
        "round hub       failed arrival->output s    login  spawn kernel  CPU-s/user"
        "         server+kernel"
    )
    print(
        "                       p50    p95    max     p50    p50    p50  machine     hub"
        "   CPU-s p50 PSS MB p50"
    )
    try:
        with (
            hubstack_target(args.users, args.concurrent_starts, args.fork_server) as hubstack,
            stock_target(args.users) as stock,
        ):
            for round_no in range(1, args.rounds + 1):
                for target in (hubstack, stock):
                    storm(target, args.arrival)
                    report(round_no, target)
                    stop_all(target)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the run started has been cleaned up", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
