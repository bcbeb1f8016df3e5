"""Spawn latency of hubstack's local backend against plain JupyterHub, on this machine.

    uv run python benchmarks/spawn_local.py [--spawns N]

Both hubs run JupyterHub 6 with configurable-http-proxy and start the same single-user
command (the default environment's ``jupyterhub-singleuser``). What differs is the spawner:

* hubstack: a ``hubstack up`` hub (tests/hubtest.py) on its default machine, so every spawn
  checks the user's account, loop-mounts the home and the server's volume, creates the cgroup
  and waits until the server answers on the socket it bound for it;
* plain: JupyterHub's stock ``LocalProcessSpawner`` running the server as a Unix account.

One spawn is timed from sending ``POST /hub/api/users/<user>/server`` until the progress
event stream reports ``ready``. The server is then stopped (not timed) before the next spawn.
The hubs take turns (A, B, A, B, ...) so that noise on the machine hits both alike, and each
gets one uncounted warm-up spawn (it creates accounts and volume images, fills caches).

Needs root (hubstack isolates servers as root; the plain hub switches to the account) and
the default environment from scripts/setup.sh. Everything the run creates (hubs, accounts,
temporary directories) is removed at the end, also on errors and Ctrl-C.

Reading the result: JupyterHub only calls a server ready once its own HTTP check gets an
answer. LocalProcessSpawner returns right after starting the process, so the hub polls with
exponential backoff (full jitter, waits up to 0.2, 0.4, 0.8, 1.6, 3.2 s ...) and notices a
server that took ~4 s to boot up to a few seconds late. hubstack's backend asks the server
on the socket it handed over until it answers (a request sent early waits in the socket's
queue and is answered as soon as the server accepts), so the hub's first check succeeds.
That, not storage or cgroups (~15 ms per spawn), is most of the difference between the two.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import jupyterhub

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubbench import (
    SINGLEUSER,
    HubClient,
    catch_signals,
    cgroup_mode,
    env_versions,
    hubstack_hub,
    load,
    measure,
    p95,
    plain_hub,
    print_latencies,
    unix_account,
)

from hubstack.system import cgroups

PLAIN_ACCOUNT = "hsbench"
TARGET_P50_RATIO = 1.15
LOCAL_PROCESS = {"JupyterHub": {"spawner_class": "localprocess"}}


def print_header(spawns: int) -> None:
    enforcer = cgroups.detect("auto").name
    print("Spawn latency: POST .../server until the progress stream says ready")
    print(f"  machine:   {os.cpu_count()} CPUs, kernel {platform.release()}, load {load()}")
    print(f"  cgroups:   {cgroup_mode()}; hubstack limits via {enforcer}")
    print(f"  hub:       jupyterhub {jupyterhub.__version__} (Python {platform.python_version()})")
    print(f"  servers:   {SINGLEUSER} ({env_versions()})")
    print(f"  spawns:    {spawns} per hub, interleaved, after 1 uncounted warm-up each")
    print()


def print_table(hubstack: HubClient, plain: HubClient) -> None:
    print_latencies([hubstack, plain])
    ratio_p50 = statistics.median(hubstack.samples) / statistics.median(plain.samples)
    ratio_p95 = p95(hubstack.samples) / p95(plain.samples)
    verdict = "met" if ratio_p50 <= TARGET_P50_RATIO else "NOT met"
    print(f"{'ratio':10s} {'':3s} {ratio_p50:9.2f} {ratio_p95:9.2f}   (hubstack / plain)")
    print(f"\ntarget: p50 ratio at most {TARGET_P50_RATIO}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--spawns", type=int, default=10, help="timed spawns per hub")
    parser.add_argument("--hub-log", type=Path, help="also save hubstack's hub log here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: both hubs switch servers to other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    if args.spawns < 1:
        parser.error("--spawns must be at least 1")
    catch_signals()

    def keep_log(text: str) -> None:
        if args.hub_log:
            args.hub_log.write_text(text)

    print_header(args.spawns)
    try:
        with (
            hubstack_hub("hubstack", keep_log) as hubstack,
            unix_account(PLAIN_ACCOUNT) as account,
            plain_hub("plain", account.pw_name, LOCAL_PROCESS) as plain,
        ):
            measure([hubstack, plain], args.spawns)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the run started has been cleaned up", file=sys.stderr)
        return 130
    print_table(hubstack, plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
