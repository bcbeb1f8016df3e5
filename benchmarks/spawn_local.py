"""Spawn latency of hubstack's local backend against plain JupyterHub, on this machine.

    uv run python benchmarks/spawn_local.py [--spawns N]

Both hubs run JupyterHub 6 with configurable-http-proxy and start the same single-user
command (the default environment's ``jupyterhub-singleuser``). What differs is the spawner:

* hubstack: a ``hubstack up`` hub (tests/hubtest.py) on its default machine, so every spawn
  checks the user's account, loop-mounts the home and the server's volume, creates the cgroup
  and waits for the server's port;
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
server that took ~4 s to boot up to a few seconds late. hubstack's backend waits for the port
itself every 50 ms, so the hub's first check succeeds. That, not storage or cgroups (~15 ms
per spawn), is most of the difference between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import jupyterhub
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubtest import DEFAULT_ENV, Abort, free_port_block, running_hub, wait_for

from hubstack.hub.settings import proxy_command
from hubstack.system import cgroups

SINGLEUSER = DEFAULT_ENV / "bin/jupyterhub-singleuser"
PLAIN_ACCOUNT = "hsbench"
HUBSTACK_USER = "bench"
SPAWN_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
GONE_POLL_INTERVAL = 0.05
BENCH_SCOPES = ["admin:users", "admin:servers", "read:users"]
TARGET_P50_RATIO = 1.15
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class HubClient:
    """Starts, times and stops one user's default server through a hub's REST API.

    Both hubs are driven by this one class, so they are measured in exactly the same way.
    """

    label: str
    url: str
    token: str
    user: str
    samples: list[float] = field(default_factory=list)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=SPAWN_TIMEOUT, **kwargs
        )

    def spawn(self) -> float:
        """Seconds from sending the start request until the hub reports the server ready."""
        server = f"/users/{self.user}/server"
        started = time.perf_counter()
        resp = self.api("POST", server, json={"user_options": {}})  # the default machine
        if resp.status_code not in (201, 202):
            raise RuntimeError(f"{self.label}: start refused: {resp.status_code} {resp.text}")
        last = self._follow_progress(f"{server}/progress")
        elapsed = time.perf_counter() - started
        if not last.get("ready"):
            raise RuntimeError(f"{self.label}: the server did not become ready: {last}")
        return elapsed

    def _follow_progress(self, path: str) -> dict[str, object]:
        """The last event of the progress stream: the one saying ready (or failed)."""
        last: dict[str, object] = {}
        with self.api("GET", path, stream=True) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    last = json.loads(line[5:])
                    if last.get("ready") or last.get("failed"):
                        break
        return last

    def stop(self) -> None:
        """Stop the server and wait until the hub has forgotten it (untimed)."""
        resp = self.api("DELETE", f"/users/{self.user}/server")
        if resp.status_code not in (202, 204):
            raise RuntimeError(f"{self.label}: stop refused: {resp.status_code} {resp.text}")
        wait_for(self._stopped, STOP_TIMEOUT, f"{self.label}'s server to stop", GONE_POLL_INTERVAL)

    def _stopped(self) -> bool:
        model = self.api("GET", f"/users/{self.user}").json()
        return "" not in model.get("servers", {}) and not model.get("pending")


# -- the machine ------------------------------------------------------------------------------


def cgroup_mode() -> str:
    """v2, hybrid or v1, from what is mounted at /sys/fs/cgroup."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2 (unified)"
    if (CGROUP_ROOT / "unified/cgroup.controllers").exists():
        return "hybrid (v1 controllers + v2 for systemd)"
    return "v1"


def env_versions() -> str:
    """Versions inside the single-user environment (a different Python from this one)."""
    code = (
        "import jupyterhub, jupyterlab, jupyter_server;"
        "print(f'jupyterhub {jupyterhub.__version__}, jupyterlab {jupyterlab.__version__}, "
        "jupyter_server {jupyter_server.__version__}')"
    )
    out = subprocess.run(
        [str(DEFAULT_ENV / "bin/python"), "-c", code], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def print_header(spawns: int) -> None:
    enforcer = cgroups.detect("auto").name
    print("Spawn latency: POST .../server until the progress stream says ready")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"  machine:   {os.cpu_count()} CPUs, kernel {platform.release()}, load {load}")
    print(f"  cgroups:   {cgroup_mode()}; hubstack limits via {enforcer}")
    print(f"  hub:       jupyterhub {jupyterhub.__version__} (Python {platform.python_version()})")
    print(f"  servers:   {SINGLEUSER} ({env_versions()})")
    print(f"  spawns:    {spawns} per hub, interleaved, after 1 uncounted warm-up each")
    print()


# -- the plain JupyterHub -------------------------------------------------------------------


def plain_config(workdir: Path, port: int, token: str) -> str:
    """jupyterhub_config.py for a stock hub with LocalProcessSpawner and a bench service."""
    settings = {
        "ip": "127.0.0.1",
        "port": port,
        "hub_ip": "127.0.0.1",
        "hub_port": port + 2,
        "api_url": f"http://127.0.0.1:{port + 1}",
        "proxy": [proxy_command()],
        "workdir": str(workdir),
        "token": token,
        "scopes": BENCH_SCOPES,
        "cmd": [str(SINGLEUSER)],
        "path": f"{DEFAULT_ENV / 'bin'}:/usr/local/bin:/usr/bin:/bin",
    }
    return f"""\
import json
s = json.loads({json.dumps(json.dumps(settings))})
c = get_config()  # noqa
c.JupyterHub.ip = s["ip"]
c.JupyterHub.port = s["port"]
c.JupyterHub.hub_ip = s["hub_ip"]
c.JupyterHub.hub_port = s["hub_port"]
c.ConfigurableHTTPProxy.api_url = s["api_url"]
c.ConfigurableHTTPProxy.command = s["proxy"]
c.ConfigurableHTTPProxy.pid_file = s["workdir"] + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + s["workdir"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = s["workdir"] + "/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = s["workdir"] + "/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = s["cmd"]
c.Spawner.default_url = "/lab"
# The same PATH hubstack gives its servers, so both start the same programs.
c.Spawner.environment = {{"PATH": s["path"]}}
c.JupyterHub.services = [{{"name": "bench", "api_token": s["token"]}}]
c.JupyterHub.load_roles = [{{"name": "bench", "scopes": s["scopes"], "services": ["bench"]}}]
"""


@contextlib.contextmanager
def unix_account(name: str) -> Iterator[pwd.struct_passwd]:
    """A throwaway Unix account with a home, for LocalProcessSpawner to switch to."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        raise SystemExit(f"account {name!r} exists already; remove it first (userdel -r {name})")
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:
        kill_processes_of(entry.pw_uid)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def processes_of(uid: int) -> list[int]:
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
    return pids


def kill_processes_of(uid: int) -> None:
    """SIGKILL what still runs as ``uid`` and wait until it is gone, so userdel can work.

    Only servers this run started run as these accounts. A hub that is stopped while a
    spawn is pending does not stop that server, so such leftovers do happen.
    """
    for _ in range(100):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def plain_hub() -> Iterator[HubClient]:
    """A stock JupyterHub in a temporary directory, its account, and a client for it."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plainhub-")))
        account = stack.enter_context(unix_account(PLAIN_ACCOUNT))
        port = free_port_block()
        token = secrets.token_hex(32)
        config = workdir / "jupyterhub_config.py"
        config.write_text(plain_config(workdir, port, token))
        log_path = workdir / "hub.log"
        proc = stack.enter_context(hub_process(config, workdir, log_path))
        client = HubClient("plain", f"http://127.0.0.1:{port}", token, account.pw_name)
        wait_for(lambda: hub_up(client, proc, log_path), 90, "the plain JupyterHub")
        resp = client.api("POST", f"/users/{client.user}")
        if resp.status_code not in (201, 409):
            raise RuntimeError(f"cannot create hub user {client.user}: {resp.text}")
        yield client


@contextlib.contextmanager
def hub_process(config: Path, workdir: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``jupyterhub -f config`` in its own session; stopped (with its proxy) on exit."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute: the hub and its proxy share the group."""
    if proc.poll() is not None:
        return
    # SIGTERM lets JupyterHub stop its servers (cleanup_servers) and its proxy.
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def hub_up(client: HubClient, proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    """Whether the hub's API answers; stops the wait at once if the hub has died."""
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise Abort(f"the plain hub exited with {proc.returncode}:\n{tail}")
    return client.api("GET", "/").status_code == 200


# -- hubstack -------------------------------------------------------------------------------


@contextlib.contextmanager
def hubstack_hub(keep_log: Callable[[str], None]) -> Iterator[HubClient]:
    """A ``hubstack up`` hub with hubtest's config (default machine: 1 CPU, 1G)."""
    with running_hub() as hub:
        try:
            session = hub.new_user(HUBSTACK_USER)
            yield HubClient("hubstack", hub.url, session.token, HUBSTACK_USER)
        finally:
            keep_log(hub.log())
            hub.stop()
            remove_leftovers(hub.prefix)


def remove_leftovers(prefix: str) -> None:
    """Kill servers of the hub's accounts that outlived the hub, and drop their cgroups.

    Interrupted mid-spawn, the hub exits without stopping the server it was starting; then
    its cgroups stay behind and running_hub's cleanup cannot unmount or delete the account.
    """
    for entry in pwd.getpwall():
        if not entry.pw_name.startswith(prefix):
            continue
        kill_processes_of(entry.pw_uid)
        unit = f"hubstack-{entry.pw_name}-*"
        # cgroup v1 has one tree per controller, v2 a single one; systemd collects its scopes.
        for pattern in (f"*/hubstack/{unit}", f"hubstack/{unit}"):
            for group in CGROUP_ROOT.glob(pattern):
                with contextlib.suppress(OSError):
                    group.rmdir()


# -- measuring and reporting ------------------------------------------------------------------


def measure(clients: list[HubClient], spawns: int) -> None:
    """One warm-up spawn each, then ``spawns`` timed spawns each, taking turns."""
    for client in clients:
        client.spawn()
        client.stop()
    for round_ in range(1, spawns + 1):
        for client in clients:
            seconds = client.spawn()
            client.stop()
            client.samples.append(seconds)
            print(f"  spawn {round_:2d}  {client.label:9s} {seconds:6.3f} s", flush=True)
    print()


def p95(samples: list[float]) -> float:
    """95th percentile, interpolated between samples (meaningful even for small n)."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def print_table(hubstack: HubClient, plain: HubClient) -> None:
    print(f"{'':10s} {'n':>3s} {'p50 (s)':>9s} {'p95 (s)':>9s} {'mean (s)':>9s}")
    for client in (hubstack, plain):
        s = client.samples
        print(
            f"{client.label:10s} {len(s):3d} {statistics.median(s):9.3f} {p95(s):9.3f} "
            f"{statistics.fmean(s):9.3f}"
        )
    ratio_p50 = statistics.median(hubstack.samples) / statistics.median(plain.samples)
    ratio_p95 = p95(hubstack.samples) / p95(plain.samples)
    verdict = "met" if ratio_p50 <= TARGET_P50_RATIO else "NOT met"
    print(f"{'ratio':10s} {'':3s} {ratio_p50:9.2f} {ratio_p95:9.2f}   (hubstack / plain)")
    print(f"\ntarget: p50 ratio at most {TARGET_P50_RATIO}: {verdict}")


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception so the cleanup below still runs."""
    raise KeyboardInterrupt(f"signal {signum}")


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
    # Ctrl-C must reach the cleanup even when started where SIGINT is ignored (``cmd &``).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_on_sigterm)

    def keep_log(text: str) -> None:
        if args.hub_log:
            args.hub_log.write_text(text)

    print_header(args.spawns)
    try:
        with hubstack_hub(keep_log) as hubstack, plain_hub() as plain:
            measure([hubstack, plain], args.spawns)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the run started has been cleaned up", file=sys.stderr)
        return 130
    print_table(hubstack, plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
