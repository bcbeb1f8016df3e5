"""Where a local server start's CPU goes, step by step, with and without the fork server.

    uv run python benchmarks/start_cpu.py [--starts 5] [--no-fork-server]
        [--no-fork-kernels] [--no-language-server-search]

One hub (tests/hubtest.py) starts servers one after the other, each a new user's first
(as in a class); for each start it reads
CPU-seconds from the kernel's accounting, which counts CPU used however busy the machine is:
the server's cgroup (``cpuacct.usage``: every process the start ran in it, the usual chain
and any stand-in or kernel parent included) and ``/proc/<pid>/stat`` of the server and of
its kernel (a forked kernel's own CPU since its fork). Steps:

* **ready**: the start until the hub's check got the server's answer;
* **lab page**: what JupyterLab's page asks the server for at its first load (the page, its
  settings, kernel specs, contents, translations, ``/api/me``, sessions);
* **kernel**: ``POST /api/kernels`` and ``1+1`` run through the kernel's websocket, split
  into the server's share and the kernel process's own.

Printed per start and as medians. Needs root and the default environment (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubbench import SINGLEUSER, catch_signals, load
from hubtest import DEFAULT_ENV, Hub, Session, execute, running_hub, wait_for

TICK = os.sysconf("SC_CLK_TCK")
LAB_PAGE = (
    "lab",
    "lab/api/settings",
    "api/kernelspecs",
    "api/contents?content=1",
    "lab/api/translations/en",
    "api/me",
    "api/sessions",
)
STEPS = ("ready", "chain", "server", "lab page", "kernel: server", "kernel: kernel", "total")


def process_cpu(pid: int) -> float:
    """CPU-seconds of ``pid`` itself, from /proc (user + system)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / TICK


def cgroup_dir(hub: Hub, name: str) -> Path:
    return Path(f"/sys/fs/cgroup/cpuacct/hubstack/hubstack-{hub.prefix}{name}-default")


def cgroup_cpu(group: Path) -> float:
    return int((group / "cpuacct.usage").read_text()) / 1e9


def pids(group: Path) -> list[int]:
    return [int(line) for line in (group / "cgroup.procs").read_text().split()]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def server_alone(group: Path) -> list[int] | None:
    """The group's processes once only the server is there, with its kernel parent if it
    has one (a forked server's stand-in leaves the group a moment after the fork); the
    server first."""
    found = pids(group)
    servers = [pid for pid in found if parent_of(pid) not in found]
    if len(servers) != 1 or len(found) > 2:
        return None
    return servers + [pid for pid in found if pid != servers[0]]


def one_start(hub: Hub, session: Session) -> dict[str, float]:
    """Start, load the lab page, run a cell; CPU-seconds of each step."""
    group = cgroup_dir(hub, session.name)
    assert session.start().status_code in (201, 202)
    session.wait_ready(timeout=300)
    before_kernel = wait_for(lambda: server_alone(group), 30, "the server alone in its cgroup")
    ready = cgroup_cpu(group)
    server = before_kernel[0]
    server_ready = process_cpu(server)
    base = session.server_url()
    headers = {"Authorization": f"token {session.token}"}
    for path in LAB_PAGE:
        requests.get(base + path, headers=headers, timeout=120).raise_for_status()
    after_lab = process_cpu(server)
    made = requests.post(f"{base}api/kernels", headers=headers, json={}, timeout=120)
    made.raise_for_status()
    run = execute(base, made.json()["id"], session.token, "print(1+1)", 120)
    assert run.status == "ok" and run.stdout.strip() == "2", run
    (kernel,) = (pid for pid in pids(group) if pid not in before_kernel)
    result = {
        "ready": ready,
        "chain": ready - server_ready,
        "server": server_ready,
        "lab page": after_lab - server_ready,
        "kernel: server": process_cpu(server) - after_lab,
        "kernel: kernel": process_cpu(kernel),
        "total": cgroup_cpu(group),
    }
    session.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument(
        "--fork-server",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="backend.local.fork_server (default: on)",
    )
    parser.add_argument(
        "--fork-kernels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="backend.local.fork_kernels (default: on)",
    )
    parser.add_argument(
        "--language-server-search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the environment's language_server_search (default: on)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: servers run as other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    catch_signals()
    print(
        f"{args.starts} starts one after the other, fork server {args.fork_server}, "
        f"forked kernels {args.fork_kernels}, "
        f"language server search {args.language_server_search}"
    )
    print(f"  machine: {os.cpu_count()} CPUs, load {load()}; CPU-seconds per step")
    print("  " + " ".join(f"{step:>14s}" for step in STEPS))
    environment = {
        **{"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
        "language_server_search": args.language_server_search,
    }
    overrides = {
        "backend": {"local": {"fork_server": args.fork_server, "fork_kernels": args.fork_kernels}},
        "environments": [environment],
    }
    rows = []
    with running_hub(overrides) as hub:
        for i in range(args.starts):
            # A user of its own per start: each start is a first one, as in a class.
            rows.append(one_start(hub, hub.new_user(f"startcpu{i}")))
            print("  " + " ".join(f"{rows[-1][step]:14.3f}" for step in STEPS), flush=True)
    print("  " + " ".join(f"{statistics.median(r[s] for r in rows):14.3f}" for s in STEPS))
    print("  (medians; ready = chain + server; total = the cgroup's CPU at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
