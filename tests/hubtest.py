"""Drive a real hubstack hub from tests and benchmarks: start it, log in, spawn, run code.

Everything here talks to real processes over loopback: ``hubstack up`` (JupyterHub with
configurable-http-proxy), single-user servers and their kernels.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
import websocket
import yaml

from hubstack.system import tool, volumes
from hubstack.system.accounts import kill_processes_of

T = TypeVar("T")
DEFAULT_ENV = Path("/opt/hubstack/envs/default")
TEST_ROOT = Path("/srv/hubstack-test")


class Abort(Exception):
    """Raised by a condition to stop waiting at once (the thing waited for cannot happen)."""


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Abort:
            raise
        except Exception as exc:  # the condition may raise while the thing starts
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def free_port_block(size: int = 4) -> int:
    """A port whose ``size`` consecutive neighbours are free (the hub uses port..port+3).

    Below the kernel's ephemeral range (32768 up, where any outgoing connection may take a
    port between this check and the hub's bind) and below the Slurm servers' port range
    (20000 up by default)."""
    for _ in range(200):
        base = random.randint(10000, 19990)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


def stream_events(resp: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream as they come; the caller stops reading
    at the event it waits for (a finished launch stream is held open for the browser)."""
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            yield json.loads(line[5:])


def launch_events(
    resp: requests.Response, until: tuple[str, ...] = ("ready", "failed")
) -> list[dict[str, Any]]:
    """A launch stream's events up to the first whose phase is in ``until``."""
    seen = []
    for event in stream_events(resp):
        seen.append(event)
        if event["phase"] in until:
            break
    resp.close()
    return seen


@dataclass
class Session:
    """A logged-in browser-like session of one hub user, plus an API token."""

    hub: Hub
    name: str
    http: requests.Session
    token: str

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return requests.request(method, f"{self.hub.url}/hub/api{path}", headers=headers, **kwargs)

    def server_path(self, server: str = "") -> str:
        return f"/users/{self.name}/servers/{server}" if server else f"/users/{self.name}/server"

    def start(self, server: str = "", options: dict[str, Any] | None = None) -> requests.Response:
        """POST to start a server with ``user_options`` (JupyterHub 6 body form)."""
        return self.api("POST", self.server_path(server), json={"user_options": options or {}})

    def model(self, server: str = "", include_stopped: bool = False) -> dict[str, Any] | None:
        query = "?include_stopped_servers" if include_stopped else ""
        user = self.api("GET", f"/users/{self.name}{query}").json()
        return user.get("servers", {}).get(server)

    def wait_ready(self, server: str = "", timeout: float = 120) -> dict[str, Any]:
        """Follow the progress event stream until ready; raise with its message if failed."""
        events = self.progress(server, timeout)
        last = events[-1] if events else {}
        if not last.get("ready"):
            raise AssertionError(f"server {server!r} did not become ready: {events}")
        return last

    def progress(
        self,
        server: str = "",
        timeout: float = 120,
        watch: Callable[[dict[str, Any]], bool | None] | None = None,
    ) -> list[dict[str, Any]]:
        """The events of the start's progress stream up to ready or failed, or up to the
        first for which ``watch`` (called with each, as it comes) answers true."""
        path = self.server_path(server) + "/progress"
        events: list[dict[str, Any]] = []
        with self.api("GET", path, stream=True, timeout=timeout) as resp:
            resp.raise_for_status()
            for event in stream_events(resp):
                events.append(event)
                seen = watch is not None and watch(event)
                if seen or event.get("ready") or event.get("failed"):
                    break
        return events

    def stop(self, server: str = "", remove: bool = False) -> None:
        resp = self.api("DELETE", self.server_path(server), json={"remove": remove})
        assert resp.status_code in (202, 204), resp.text
        wait_for(lambda: self.model(server) is None, 60, f"server {server!r} to stop")
        if remove:
            # JupyterHub answers the DELETE before it has finished deleting the server.
            wait_for(
                lambda: self.model(server, include_stopped=True) is None,
                60,
                f"server {server!r} to be deleted",
            )

    def server_url(self, server: str = "") -> str:
        suffix = f"{server}/" if server else ""
        return f"{self.hub.url}/user/{self.name}/{suffix}"

    def run_code(
        self, code: str, server: str = "", timeout: float = 90, kernel_name: str = ""
    ) -> Execution:
        """Start a kernel (the server's default, or ``kernel_name``) on the server through
        the proxy, run ``code``, return its output."""
        base = self.server_url(server)
        headers = {"Authorization": f"token {self.token}"}
        body = {"name": kernel_name} if kernel_name else {}
        kernel = requests.post(f"{base}api/kernels", headers=headers, json=body, timeout=60)
        kernel.raise_for_status()
        kernel_id = kernel.json()["id"]
        try:
            return execute(base, kernel_id, self.token, code, timeout)
        finally:
            with contextlib.suppress(requests.RequestException):
                requests.delete(f"{base}api/kernels/{kernel_id}", headers=headers, timeout=30)

    def run_in_terminal(self, command: str, server: str = "", timeout: float = 60) -> str:
        """Open a terminal on the server (as a user in JupyterLab would), type ``command``
        and return what the terminal showed until it finished."""
        base = self.server_url(server)
        headers = {"Authorization": f"token {self.token}"}
        made = requests.post(f"{base}api/terminals", headers=headers, timeout=30)
        made.raise_for_status()
        name = made.json()["name"]
        ws = websocket.create_connection(
            base.replace("http://", "ws://") + f"terminals/websocket/{name}",
            header=[f"Authorization: token {self.token}"],
            timeout=timeout,
        )
        done = "hubstack-terminal-done-42"  # typed as $((6*7)): its echo does not match
        shown = ""
        try:
            ws.send(json.dumps(["stdin", f"{command}; echo hubstack-terminal-done-$((6*7))\r"]))
            deadline = time.monotonic() + timeout
            while done not in shown and time.monotonic() < deadline:
                message = json.loads(ws.recv())
                if message[0] == "stdout":
                    shown += message[1]
        finally:
            ws.close()
            with contextlib.suppress(requests.RequestException):
                requests.delete(f"{base}api/terminals/{name}", headers=headers, timeout=30)
        assert done in shown, shown
        return shown.split(done)[0]


@dataclass
class Execution:
    """What a kernel did with one cell."""

    status: str  # "ok", "error" or "died"
    stdout: str = ""
    error: str = ""


def execute(base: str, kernel_id: str, token: str, code: str, timeout: float) -> Execution:
    ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}"], timeout=timeout
    )
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False},
                "channel": "shell",
            }
        )
    )
    result = Execution("ok")
    replied = idle = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            content = msg.get("content", {})
            if kind == "status" and content.get("execution_state") in ("restarting", "dead"):
                return Execution("died", result.stdout, content["execution_state"])
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "stream":
                result.stdout += content.get("text", "")
            elif kind == "error":
                result.status = "error"
                result.error = f"{content.get('ename')}: {content.get('evalue')}"
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            # The reply (shell channel) may come before the output (iopub): the kernel's
            # "idle" on iopub comes after all of the cell's output.
            if replied and idle:
                return result
    except websocket.WebSocketConnectionClosedException:
        return Execution("died", result.stdout, "connection closed")
    finally:
        ws.close()
    raise TimeoutError(f"no execute_reply within {timeout}s")


@dataclass
class Hub:
    """One ``hubstack up`` process with its own config, data dir, ports and accounts."""

    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    admin_password: str = ""
    python: str = sys.executable
    run_as: str | None = None  # a Unix account to run the hub as (dev mode), else root
    up_args: tuple[str, ...] = ()  # more options of `hubstack up`
    env: dict[str, str] | None = None  # the environment of the hub and its CLI

    def __post_init__(self) -> None:
        self.port = self.port or free_port_block()
        self.prefix = "t" + secrets.token_hex(2) + "-"
        self.data_dir = self.root / "data"
        self.home_base = self.root / "home"
        self.home_base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.config_path = self.root / "hubstack.yaml"
        self.log_path = self.root / "hub.log"
        self.write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "hub": {"bind": f"127.0.0.1:{self.port}", "data_dir": str(self.data_dir)},
            "accounts": {"prefix": self.prefix},
            "backend": {"local": {"home_base": str(self.home_base)}},
            "machines": [
                {"id": "small", "display": "Small", "cpu": 1, "memory": "1G"},
                {"id": "tiny", "display": "Tiny", "cpu": 0.5, "memory": "400M"},
            ],
            "environments": [
                {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
            ],
            "policy": {
                "named_servers": {"max": 2},
                "storage": {"server_volume": "64M", "home": "128M"},
            },
            # Repositories come from git servers on loopback (tests/gitserver.py).
            "binder": {
                "root": str(self.root / "binder"),
                "allowed_hosts": ["127.0.0.1:*"],
                "allowed_schemes": ["git", "http"],
                "build_account": f"{self.prefix}build",
                # Public conda channels are out of reach here; a test module that serves a
                # channel (tests/condachannel.py) turns this on with its mirror.
                "conda": {"enabled": False},
            },
        }
        fork_server = os.environ.get("HUBSTACK_TEST_FORK_SERVER")
        if fork_server is not None:
            # A run of the suite with the local backend's fork servers on (1) or off (0),
            # whatever the default is; a module's own overrides still decide.
            base["backend"]["local"]["fork_server"] = fork_server == "1"
        if self.overrides.get("backend", {}).get("type") == "slurm":
            # The local cluster's node is this machine: its "shared" paths are local ones.
            shared = {"home_base": str(self.home_base), "volumes": str(self.root / "volumes")}
            base["backend"]["slurm"] = {"shared": shared}
        return merge(base, self.overrides)

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config()))

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-m", "hubstack.cli", *args, "--config", str(self.config_path)],
            user=self.run_as,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> Hub:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "hubstack.cli",
                "up",
                *self.up_args,
                "--config",
                str(self.config_path),
            ],
            user=self.run_as,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        wait_for(self._up, 90, f"the hub at {self.url} (log: {self.log_path})")
        match = re.search(r"admin account 'admin' with password: (\S+)", self.log())
        if match:
            self.admin_password = match.group(1)
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise Abort(f"hub exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return requests.get(f"{self.url}/hub/api/", timeout=5).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def add_user(self, name: str) -> str:
        result = self.cli("add-user", name)
        assert result.returncode == 0, result.stderr
        return result.stdout.rsplit(": ", 1)[1].strip()

    def post_login(self, name: str, password: str) -> tuple[requests.Session, requests.Response]:
        """Send the login form as a browser does; the session and the hub's answer."""
        http = requests.Session()
        page = http.get(f"{self.url}/hub/login", timeout=30)
        page.raise_for_status()
        xsrf = http.cookies.get("_xsrf", path="/hub/")
        resp = http.post(
            f"{self.url}/hub/login",
            data={"username": name, "password": password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        return http, resp

    def login(self, name: str, password: str) -> Session:
        """Log in through the login form, then make an API token with that session."""
        http, resp = self.post_login(name, password)
        assert resp.status_code == 302, f"login failed for {name}: {resp.status_code}"
        xsrf = http.cookies.get("_xsrf", path="/hub/")
        token = http.post(
            f"{self.url}/hub/api/users/{name}/tokens",
            json={"note": "tests"},
            headers={"X-XSRFToken": xsrf},
            timeout=30,
        )
        assert token.status_code == 201, token.text
        return Session(self, name, http, token.json()["token"])

    def new_user(self, name: str) -> Session:
        return self.login(name, self.add_user(name))

    def cleanup(self) -> None:
        """Stop the hub, then undo everything it did to the machine.

        Users' servers outlive the hub by design, so their processes are ended here, and so
        is a proxy that a hub killed by a test left behind.
        """
        self.stop()
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(self.prefix):
                kill_processes_of(entry.pw_uid)
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.data_dir / "proxy.pid").read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            mountpoint = line.split()[1]
            if mountpoint.startswith(str(self.root)):
                volumes.unmount(Path(mountpoint))
        for line in Path("/etc/passwd").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name.startswith(self.prefix):
                subprocess.run(["userdel", name], check=False, capture_output=True)
        # Shared folders' groups are named after the prefix too.
        for line in Path("/etc/group").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name.startswith(self.prefix):
                subprocess.run(["groupdel", name], check=False, capture_output=True)
        if not os.environ.get("HUBSTACK_KEEP_TEST_ROOT"):
            remove_later(self.root)


def hub_user(hub: Hub, token: str, name: str) -> dict[str, Any] | None:
    """The hub's model of user ``name`` as ``token`` may see it; None if there is none."""
    resp = requests.get(
        f"{hub.url}/hub/api/users/{name}", headers={"Authorization": f"token {token}"}, timeout=30
    )
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    user: dict[str, Any] = resp.json()
    return user


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (lists and scalars replace)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


STARTUP_FACTS = """
import importlib.util as u, json, os
spec = u.find_spec("jupyter_server.serverapp")
print(json.dumps({
    "compiled": os.path.exists(u.cache_from_source(spec.origin)),
    "rfc3987_syntax": u.find_spec("rfc3987_syntax") is not None,
}))
"""


def python_as_nobody(python: Path, code: str) -> str:
    """Run ``code`` with ``python`` as nobody (a user as others' servers see the prefix:
    readable, not writable) and return its output."""
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(python)]
    proc = subprocess.run(
        [*argv, "-c", code], capture_output=True, text=True, timeout=60, cwd="/", check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def startup_facts(python: Path) -> dict[str, bool]:
    """What decides how fast a server in this environment starts, seen by its users:
    whether the server's code is compiled to bytecode, and whether rfc3987_syntax (slow to
    import, kept out by server-overrides.txt) is there."""
    facts: dict[str, bool] = json.loads(python_as_nobody(python, STARTUP_FACTS))
    return facts


def remove_later(path: Path) -> None:
    """Delete the tree ``path`` in the background: renamed away at once, so that nothing
    finds it any more, then deleted by an rm of its own that the tests do not wait for.

    This machine's file system is mounted with ``discard``, where deleting a built
    environment (some 40,000 files) takes over a minute, nearly all of it waiting for the
    disk. rm stays on the tree's own file system: it never descends into a mount left there.
    """
    if not path.exists():
        return
    trash = path.with_name(f".removed-{path.name}-{secrets.token_hex(3)}")
    path.rename(trash)
    rm = [tool("rm"), "-rf", "--one-file-system", str(trash)]
    # setsid -f: rm runs on in a new session after setsid returns, so nothing waits for it.
    subprocess.run([tool("setsid"), "-f", *rm], check=True, stdout=subprocess.DEVNULL)


def new_test_root() -> Path:
    """A fresh directory that other accounts can traverse (pytest's tmp_path is 0700)."""
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)
    root = TEST_ROOT / secrets.token_hex(4)
    root.mkdir(mode=0o755)
    return root


@contextlib.contextmanager
def running_hub(overrides: dict[str, Any] | None = None, **options: Any) -> Iterator[Hub]:
    """A started hub that is stopped and cleaned up afterwards; options go to :class:`Hub`."""
    hub = Hub(new_test_root(), overrides or {}, **options)
    try:
        yield hub.start()
    finally:
        hub.cleanup()
