"""What the spawn benchmarks share: the hubs they compare, a client that times spawns, cleanup.

Every hub is driven over its REST API by one :class:`HubClient`, so that all are measured the
same way. Every context manager here undoes what it did (hubs, accounts, directories, jobs)
on exit, also on errors and Ctrl-C. The scripts put tests/ on ``sys.path`` before importing
this module (it uses tests/hubtest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
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

import requests
from hubtest import DEFAULT_ENV, Abort, free_port_block, running_hub, wait_for

from hubstack.hub.settings import proxy_command
from hubstack.system.accounts import kill_processes_of, unix_name

SINGLEUSER = DEFAULT_ENV / "bin/jupyterhub-singleuser"
SERVER_PATH = f"{DEFAULT_ENV / 'bin'}:/usr/local/bin:/usr/bin:/bin"
"""The PATH hubstack gives its servers; plain hubs give theirs the same."""
HUBSTACK_USER = "bench"
SPAWN_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
GONE_POLL_INTERVAL = 0.05
QUEUE_TIMEOUT = 120.0
BENCH_SCOPES = ["admin:users", "admin:servers", "read:users"]
CGROUP_ROOT = Path("/sys/fs/cgroup")
ACTIVE_JOB_STATES = "PD,CF,R,CG,S"
"""Jobs that wait for or hold an allocation; squeue also lists ended ones for a while."""


@dataclass
class HubClient:
    """Starts, times and stops one user's servers through a hub's REST API.

    Every hub is driven by this one class, so they are measured in exactly the same way.
    ``server`` is a named server's name; "" is the user's default server. ``account`` is
    the Unix account the hub runs this user's servers as.
    """

    label: str
    url: str
    token: str
    user: str
    account: str
    samples: list[float] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock (start, ready) of each timed spawn, to place other programs' logs in it."""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=SPAWN_TIMEOUT, **kwargs
        )

    def server_path(self, server: str = "") -> str:
        return f"/users/{self.user}/servers/{server}" if server else f"/users/{self.user}/server"

    def start(self, server: str = "") -> None:
        """Ask for a server on the default options; it may still be starting on return."""
        resp = self.api("POST", self.server_path(server), json={"user_options": {}})
        if resp.status_code not in (201, 202):
            raise RuntimeError(f"{self.label}: start refused: {resp.status_code} {resp.text}")

    def spawn(self, server: str = "") -> float:
        """Seconds from sending the start request until the hub reports the server ready."""
        started, wall = time.perf_counter(), time.time()
        self.start(server)
        last = self._follow_progress(f"{self.server_path(server)}/progress")
        elapsed = time.perf_counter() - started
        if not last.get("ready"):
            raise RuntimeError(f"{self.label}: the server did not become ready: {last}")
        self.spans.append((wall, wall + elapsed))
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

    def stop(self, server: str = "") -> None:
        """Stop the server and wait until the hub has forgotten it (untimed)."""
        self.request_stop(server)
        what = f"{self.label}'s server {server!r} to stop"
        wait_for(lambda: server not in self.servers(), STOP_TIMEOUT, what, GONE_POLL_INTERVAL)

    def request_stop(self, server: str = "") -> None:
        resp = self.api("DELETE", self.server_path(server))
        if resp.status_code not in (202, 204):
            raise RuntimeError(f"{self.label}: stop refused: {resp.status_code} {resp.text}")

    def servers(self) -> dict[str, Any]:
        """The user's active servers (running, starting or stopping) by name."""
        model = self.api("GET", f"/users/{self.user}").json()
        servers: dict[str, Any] = model.get("servers", {})
        return servers


# -- the machine ------------------------------------------------------------------------------


def cgroup_mode() -> str:
    """v2, hybrid or v1, from what is mounted at /sys/fs/cgroup."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2 (unified)"
    if (CGROUP_ROOT / "unified/cgroup.controllers").exists():
        return "hybrid (v1 controllers + v2 for systemd)"
    return "v1"


def env_versions(python: Path = DEFAULT_ENV / "bin/python") -> str:
    """Versions inside a single-user environment (a different Python from this one)."""
    code = (
        "import jupyterhub, jupyterlab, jupyter_server;"
        "print(f'jupyterhub {jupyterhub.__version__}, jupyterlab {jupyterlab.__version__}, "
        "jupyter_server {jupyter_server.__version__}')"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- plain JupyterHub -------------------------------------------------------------------------


def plain_config(
    workdir: Path,
    port: int,
    token: str,
    traits: dict[str, dict[str, Any]],
    imports: tuple[str, ...] = (),
) -> str:
    """jupyterhub_config.py for a stock hub with a bench service; ``traits`` pick the spawner.

    ``traits`` are ``{class: {trait: value}}``, applied last; ``imports`` are modules to
    import first (a spawner package that registers API handlers on import).
    """
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
        "path": SERVER_PATH,
        "traits": traits,
    }
    imported = "".join(f"import {name}  # noqa\n" for name in imports)
    return f"""\
import json
{imported}s = json.loads({json.dumps(json.dumps(settings))})
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
c.Spawner.cmd = s["cmd"]
c.Spawner.default_url = "/lab"
# The same PATH hubstack gives its servers, so both start the same programs.
c.Spawner.environment = {{"PATH": s["path"]}}
c.JupyterHub.services = [{{"name": "bench", "api_token": s["token"]}}]
c.JupyterHub.load_roles = [{{"name": "bench", "scopes": s["scopes"], "services": ["bench"]}}]
for class_name, values in s["traits"].items():
    for trait, value in values.items():
        c[class_name][trait] = value
"""


@contextlib.contextmanager
def unix_account(name: str) -> Iterator[pwd.struct_passwd]:
    """A throwaway Unix account with a home, for a plain hub's spawner to switch to."""
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


@contextlib.contextmanager
def plain_hub(
    label: str,
    user: str,
    traits: dict[str, dict[str, Any]],
    imports: tuple[str, ...] = (),
    python: Path = Path(sys.executable),
    keep_log: Callable[[str], None] = lambda text: None,
) -> Iterator[HubClient]:
    """A stock JupyterHub run by ``python`` in a temporary directory, with hub user ``user``
    (an existing Unix account), and a client for it; see :func:`plain_config`."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plainhub-")))
        port = free_port_block()
        token = secrets.token_hex(32)
        config = workdir / "jupyterhub_config.py"
        config.write_text(plain_config(workdir, port, token, traits, imports))
        log_path = workdir / "hub.log"
        stack.callback(lambda: keep_log(log_path.read_text(errors="replace")))
        proc = stack.enter_context(hub_process(python, config, workdir, log_path))
        client = HubClient(label, f"http://127.0.0.1:{port}", token, user, user)
        wait_for(lambda: hub_up(client, proc, log_path), 90, f"the {label} JupyterHub")
        resp = client.api("POST", f"/users/{client.user}")
        if resp.status_code not in (201, 409):
            raise RuntimeError(f"cannot create hub user {client.user}: {resp.text}")
        yield client


@contextlib.contextmanager
def hub_process(
    python: Path, config: Path, workdir: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``jupyterhub -f config`` in its own session; stopped (with its proxy) on exit."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "jupyterhub", "-f", str(config)],
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
        raise Abort(f"the {client.label} hub exited with {proc.returncode}:\n{tail}")
    return client.api("GET", "/").status_code == 200


# -- hubstack -------------------------------------------------------------------------------


@contextlib.contextmanager
def hubstack_hub(
    label: str, keep_log: Callable[[str], None], overrides: dict[str, Any] | None = None
) -> Iterator[HubClient]:
    """A ``hubstack up`` hub with hubtest's config (default machine: 1 CPU, 1G) plus
    ``overrides``, and a client for one of its users."""
    slurm = (overrides or {}).get("backend", {}).get("type") == "slurm"
    with running_hub(overrides) as hub:
        try:
            session = hub.new_user(HUBSTACK_USER)
            account = unix_name(HUBSTACK_USER, hub.prefix)
            yield HubClient(label, hub.url, session.token, HUBSTACK_USER, account)
        finally:
            keep_log(hub.log())
            hub.stop()
            accounts = [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(hub.prefix)]
            if slurm:
                # Its jobs outlive the hub (a restarted hub takes them back): cancel them.
                cancel_jobs_of(accounts)
            remove_leftovers(accounts)


def remove_leftovers(accounts: list[str]) -> None:
    """Kill servers of the hub's accounts that outlived the hub, and drop their cgroups.

    Interrupted mid-spawn, the hub exits without stopping the server it was starting; then
    its cgroups stay behind and running_hub's cleanup cannot unmount or delete the account.
    """
    for name in accounts:
        kill_processes_of(pwd.getpwnam(name).pw_uid)
        unit = f"hubstack-{name}-*"
        # cgroup v1 has one tree per controller, v2 a single one; systemd collects its scopes.
        for pattern in (f"*/hubstack/{unit}", f"hubstack/{unit}"):
            for group in CGROUP_ROOT.glob(pattern):
                with contextlib.suppress(OSError):
                    group.rmdir()


def queued_jobs(account: str, states: str = ACTIVE_JOB_STATES) -> list[str]:
    """Ids of ``account``'s jobs in ``states`` (squeue's list, e.g. PD or PD,R), oldest first."""
    out = subprocess.run(
        ["squeue", "--noheader", f"--user={account}", f"--states={states}", "--format=%i"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out.split()


def cancel_jobs_of(accounts: list[str]) -> None:
    """Cancel every job of these accounts (only this run's hubs submit as them) and wait
    until they have left the queue, so that the accounts can be deleted."""
    for name in accounts:
        subprocess.run(["scancel", f"--user={name}"], check=False, capture_output=True)
    for name in accounts:
        wait_for(
            lambda name=name: not queued_jobs(name),
            QUEUE_TIMEOUT,
            f"{name}'s jobs to leave the queue",
        )


# -- measuring and reporting ------------------------------------------------------------------


def measure(
    clients: list[HubClient], spawns: int, settle: Callable[[HubClient], None] | None = None
) -> None:
    """One warm-up spawn each, then ``spawns`` timed spawns each, taking turns; after each
    stop, ``settle`` (untimed) waits until what the stop leaves behind is gone."""

    def once(client: HubClient) -> float:
        seconds = client.spawn()
        client.stop()
        if settle:
            settle(client)
        return seconds

    for client in clients:
        once(client)
        client.spans.clear()
    width = max(len(c.label) for c in clients)
    for round_ in range(1, spawns + 1):
        for client in clients:
            seconds = once(client)
            client.samples.append(seconds)
            print(f"  spawn {round_:2d}  {client.label:{width}s} {seconds:6.3f} s", flush=True)
    print()


def p95(samples: list[float]) -> float:
    """95th percentile, interpolated between samples (meaningful even for small n)."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def print_latencies(clients: list[HubClient]) -> None:
    width = max(10, *(len(c.label) for c in clients))
    print(f"{'':{width}s} {'n':>3s} {'p50 (s)':>9s} {'p95 (s)':>9s} {'mean (s)':>9s}")
    for client in clients:
        s = client.samples
        print(
            f"{client.label:{width}s} {len(s):3d} {statistics.median(s):9.3f} {p95(s):9.3f} "
            f"{statistics.fmean(s):9.3f}"
        )


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception so the cleanup still runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals() -> None:
    """Ctrl-C and SIGTERM unwind through every cleanup, even when started where SIGINT is
    ignored (``cmd &``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
