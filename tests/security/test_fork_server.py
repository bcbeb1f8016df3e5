"""Servers forked by an environment's fork server (``backend.local.fork_server``) hold
nothing of the root parent they were forked from, nor of another user's server: each runs
as its own account with exactly that account's groups, in its own cgroup and mount
namespace (its private /tmp), in its home, with its own environment, and with none of the
parent's descriptors; neither the parent nor another user's server has a user's API token
in its memory. A stopped server is gone with its cgroup, and the next start still forks;
after `kill -9` of the hub the forked servers run on and the restarted hub takes them back.

Their kernels are forks of each server's kernel parent (``hubstack_kernels``): it runs as
the server's account in its cgroup and mount namespace, holds no socket anyone else can
reach, and each kernel has its own directory and variables; interrupt, restart and
shutdown work as for a kernel started afresh, and without its parent a server starts its
kernels afresh."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import (
    DEFAULT_ENV,
    Hub,
    Session,
    execute,
    python_as_nobody,
    running_hub,
    wait_for,
)

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

USERS = ("forka", "forkb")
# The kernel's parent is the server's kernel parent, whose parent is the server; the kernel
# also says which /tmp it sees, and the environment it inherited from the server (a fork
# changes its environment in memory, so /proc/<server>/environ still shows the parent's).
WHO = (
    "import os, json; e = {k: os.environ.get(k) for k in "
    "('JUPYTERHUB_USER', 'USER', 'HOME', 'JUPYTERHUB_API_TOKEN', 'PATH', 'LANG')}; "
    "t = os.stat('/tmp'); print(os.getppid(), f'{t.st_dev}:{t.st_ino}', json.dumps(e))"
)
KERNEL_PARENT = b"hubstack-kernel-parent"
IDS = "import os; print(os.getpid(), os.getppid(), os.getcwd(), os.environ.get('JPY_SESSION_NAME'))"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"backend": {"local": {"fork_server": True}}}) as running:
        yield running


@pytest.fixture(scope="module")
def servers(hub: Hub) -> dict[str, tuple[Session, int]]:
    """Each user's server, started one after the other, with its process id."""
    found: dict[str, tuple[Session, int]] = {}
    for name in USERS:
        session = hub.new_user(name)
        assert session.start().status_code in (201, 202)
        session.wait_ready(timeout=180)
        found[name] = (session, who(session)[0])
    return found


def status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def who(session: Session) -> tuple[int, str, dict[str, str | None]]:
    """The server's pid, its /tmp (device:inode) and its environment, as its kernel sees them."""
    run = session.run_code(WHO, timeout=120)
    assert run.status == "ok", run
    parent, tmp, env = run.stdout.split(maxsplit=2)
    assert cmdline(int(parent)) == [KERNEL_PARENT], "the kernel was not forked"
    return parent_of(int(parent)), tmp, json.loads(env)


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")


def open_files(pid: int) -> set[str]:
    """What the process's descriptors are (``socket:[inode]``, ``pipe:[inode]``, paths)."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return targets


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the readable memory of ``pid`` (read as root)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(part, 16) for part in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:
                continue
    return False


def parent_of(pid: int) -> int:
    return int(status(pid)["PPid"][0])


def test_forked_servers_come_from_the_root_fork_server(
    servers: dict[str, tuple[Session, int]],
) -> None:
    parents = {parent_of(pid) for _, pid in servers.values()}
    assert len(parents) == 1, parents  # one fork server for the one environment
    (parent,) = parents
    assert status(parent)["Uid"] == ["0"] * 4
    cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [str(DEFAULT_ENV / "bin/python3").encode(), b"-I", b"-c"]
    for _, pid in servers.values():
        # What ps shows: the server's own command line, not its parent's code.
        shown = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert shown[0] == str(DEFAULT_ENV / "bin/jupyterhub-singleuser").encode(), shown


def test_each_runs_as_its_account_with_its_groups_cgroup_home_and_tmp(
    hub: Hub, servers: dict[str, tuple[Session, int]]
) -> None:
    tmps = set()
    for name, (session, pid) in servers.items():
        account = pwd.getpwnam(hub.prefix + name)
        facts = status(pid)
        assert facts["Uid"] == [str(account.pw_uid)] * 4, name
        assert facts["Gid"] == [str(account.pw_gid)] * 4, name
        groups = sorted(os.getgrouplist(account.pw_name, account.pw_gid))
        assert sorted(map(int, facts["Groups"])) == groups, name
        assert facts["CapEff"] == ["0000000000000000"], name
        unit = f"hubstack-{account.pw_name}-default"
        assert all(
            unit in line
            for line in Path(f"/proc/{pid}/cgroup").read_text().split()
            if re.search(r":(memory|pids|cpu|cpuacct):", line)
        ), name
        assert os.readlink(f"/proc/{pid}/cwd") == account.pw_dir, name
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), name
        # Its own /tmp: the kernel (started by this server) sees the server's, no one else's.
        server, tmp, env = who(session)
        assert server == pid
        tmps.add(tmp)
        assert env["JUPYTERHUB_USER"] == name and env["USER"] == account.pw_name, name
        assert env["HOME"] == account.pw_dir, name
        assert env["PATH"].startswith(f"{DEFAULT_ENV / 'bin'}:"), name
        assert "/root" not in env["PATH"], name
        assert env["LANG"] is None, name  # the fork server's own variable is not passed on
    host = os.stat("/tmp")
    assert len(tmps) == len(servers) and f"{host.st_dev}:{host.st_ino}" not in tmps


def test_no_descriptor_of_the_parent_and_no_token_of_another_user(
    servers: dict[str, tuple[Session, int]],
) -> None:
    (_, first), (_, second) = servers.values()
    parent = parent_of(first)
    shared = {f for f in open_files(parent) if f.startswith(("socket:", "pipe:"))}
    tokens = {}
    for session, pid in servers.values():
        token = who(session)[2]["JUPYTERHUB_API_TOKEN"]
        assert token
        tokens[pid] = token.encode()
    for pid in (first, second):
        assert not shared & open_files(pid), pid
        assert not memory_holds(parent, tokens[pid]), "the fork server saw a user's token"
    # The second server was forked after the first had started: nothing of the first's.
    assert not memory_holds(second, tokens[first])
    assert memory_holds(second, tokens[second])  # the search does find what is there


def unnamed_unix_sockets(pid: int) -> set[str]:
    """``socket:[inode]`` of every Unix socket without a path (none can be connected to) in
    the network namespace of ``pid``."""
    lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    return {f"socket:[{line.split()[6]}]" for line in lines if len(line.split()) == 7}


def test_kernels_are_forks_of_a_kernel_parent_of_the_server_that_no_one_else_reaches(
    hub: Hub, servers: dict[str, tuple[Session, int]]
) -> None:
    """Each server's kernel parent: the server's child, as its account without capabilities
    in its cgroup and mount namespace, holding only its standard streams and sockets
    without a path; a kernel of another user can neither read its descriptors nor signal
    it, and no kernel holds its sockets."""
    parents = {}
    for name, (session, server) in servers.items():
        account = pwd.getpwnam(hub.prefix + name)
        run = session.run_code(IDS, timeout=120)
        assert run.status == "ok", run
        parent = int(run.stdout.split()[1])
        parents[name] = parent
        assert cmdline(parent) == [KERNEL_PARENT] and parent_of(parent) == server, name
        unit = f"hubstack-{account.pw_name}-default"
        for pid in (parent, server):
            facts = status(pid)
            assert facts["Uid"] == [str(account.pw_uid)] * 4, (name, pid)
            assert facts["CapEff"] == ["0000000000000000"], (name, pid)
            assert all(
                unit in line
                for line in Path(f"/proc/{pid}/cgroup").read_text().split()
                if re.search(r":(memory|pids|cpu|cpuacct):", line)
            ), (name, pid)
            assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{server}/ns/mnt")
        sockets = {f for f in open_files(parent) if f.startswith("socket:")}
        assert sockets and sockets <= unnamed_unix_sockets(parent), (name, sockets)
        others = {f for f in open_files(parent) if not f.startswith(("socket:", "pipe:"))}
        assert all(f == "/dev/null" or f.endswith(".log") for f in others), others
    # forkb's kernel against forka's kernel parent: its descriptors and signals are closed.
    parent_a = parents["forka"]
    probe = (
        f"import os\nfor attempt in (lambda: os.listdir('/proc/{parent_a}/fd'), "
        f"lambda: os.kill({parent_a}, 0)):\n    try:\n        attempt(); print('reached')\n"
        "    except PermissionError:\n        print('denied')"
    )
    run = servers["forkb"][0].run_code(probe, timeout=120)
    assert run.status == "ok" and run.stdout.split() == ["denied", "denied"], run


def test_a_forked_kernel_has_its_own_directory_and_variables_interrupt_restart_shutdown(
    hub: Hub, servers: dict[str, tuple[Session, int]]
) -> None:
    session, server = servers["forka"]
    home = pwd.getpwnam(hub.prefix + "forka").pw_dir
    base, headers = session.server_url(), {"Authorization": f"token {session.token}"}

    def api(method: str, path: str, status: int, **kwargs: object) -> requests.Response:
        resp = requests.request(method, base + path, headers=headers, timeout=60, **kwargs)
        assert resp.status_code == status, (path, resp.status_code, resp.text)
        return resp

    def ids(kernel_id: str) -> list[str]:
        run = execute(base, kernel_id, session.token, IDS, 60)
        assert run.status == "ok", run
        return run.stdout.split()

    api("PUT", "api/contents/kdir", 201, json={"type": "directory"})
    made = api(
        "POST",
        "api/sessions",
        201,
        json={"path": "kdir/a.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    ).json()
    kernel_id = made["kernel"]["id"]
    pid, parent, cwd, name = ids(kernel_id)
    assert cmdline(int(parent)) == [KERNEL_PARENT] and parent_of(int(parent)) == server
    assert cwd == f"{home}/kdir" and name.endswith("kdir/a.ipynb"), (cwd, name)
    assert os.readlink(f"/proc/{pid}/cwd") == cwd
    assert not {f for f in open_files(int(parent)) if f.startswith("socket:")} & open_files(
        int(pid)
    ), "the kernel holds a socket of its parent"
    assert execute(base, kernel_id, session.token, "x = 42", 60).status == "ok"
    # Another kernel of the same server: another fork, its own directory and variables.
    other = session.run_code(IDS + "; print('x' in globals())", timeout=60)
    other_pid, other_parent, other_cwd, other_name, has_x = other.stdout.split()
    assert other_parent == parent and other_pid != pid
    assert (other_cwd, other_name, has_x) == (home, "None", "False")

    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            execute, base, kernel_id, session.token, "import time; time.sleep(300)", 120
        )
        wait_for(
            lambda: api("GET", f"api/kernels/{kernel_id}", 200).json()["execution_state"] == "busy",
            60,
            "the kernel to be busy",
        )
        api("POST", f"api/kernels/{kernel_id}/interrupt", 204)
        interrupted = busy.result(timeout=60)
    assert interrupted.status == "error" and interrupted.error.startswith("KeyboardInterrupt")
    still = execute(base, kernel_id, session.token, "print(x)", 60)
    assert still.stdout.strip() == "42", still  # the same kernel, only interrupted

    api("POST", f"api/kernels/{kernel_id}/restart", 200)
    wait_for(
        lambda: not Path(f"/proc/{pid}").exists(), 30, "the restarted kernel's old process to end"
    )
    new_pid, new_parent, new_cwd, _ = ids(kernel_id)
    assert new_pid != pid and new_parent == parent and new_cwd == cwd
    fresh = execute(base, kernel_id, session.token, "print('x' in globals())", 60)
    assert fresh.stdout.strip() == "False", fresh

    api("DELETE", f"api/sessions/{made['id']}", 204)
    wait_for(lambda: not Path(f"/proc/{new_pid}").exists(), 30, "the shut down kernel to end")
    assert status(int(parent))["State"][0] == "S"  # the kernel parent stays for the next one
    # Without its kernel parent, the server starts its kernels afresh.
    os.kill(int(parent), signal.SIGKILL)
    wait_for(lambda: status(int(parent))["State"][0] == "Z", 30, "the kernel parent to end")
    afresh = session.run_code(IDS, timeout=120)
    assert afresh.status == "ok" and int(afresh.stdout.split()[1]) == server, afresh


# Launches the kernel parent must not take: another kernel spec, another Python, a Popen
# argument it cannot honour, a variable read when Python or its imports start.
FORKABLE = """
import sys
from hubstack_kernels.provisioner import forkable
own = [sys.executable, "-m", "ipykernel_launcher", "-f", "c.json"]
cases = [
    (own, {"env": {}, "cwd": "/tmp"}),
    (own, {"env": {"HOME": "/h", "JPY_SESSION_NAME": "a.ipynb"}}),
    (["R", "--slave", "-e", "IRkernel::main()"], {"env": {}}),
    (["/usr/bin/python3", *own[1:]], {"env": {}}),
    ([own[0], "-m", "other_kernel", *own[3:]], {"env": {}}),
    (own, {"env": {}, "independent": True}),
    (own, {"env": {}, "stdout": 1}),
    (own, {"env": {"PYTHONPATH": "/x"}}),
    (own, {"env": {"LD_PRELOAD": "/x.so"}}),
    (own, {"env": {"PYDEVD_USE_CYTHON": "NO"}}),
]
print(" ".join(str(forkable(cmd, kwargs)) for cmd, kwargs in cases))
"""


def test_only_this_pythons_ipykernel_without_start_time_variables_is_forked() -> None:
    assert python_as_nobody(DEFAULT_ENV / "bin/python3", FORKABLE).split() == (
        ["True", "True"] + ["False"] * 8
    )


def test_a_stopped_server_is_gone_and_the_next_start_forks_again(
    hub: Hub, servers: dict[str, tuple[Session, int]]
) -> None:
    session, pid = servers["forka"]
    parent = parent_of(pid)
    session.stop()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the stopped server to end")
    unit = f"hubstack-{hub.prefix}forka-default"
    assert not any(Path("/sys/fs/cgroup").glob(f"*/hubstack/{unit}"))
    assert session.start().status_code in (201, 202)
    session.wait_ready(timeout=180)
    assert parent_of(who(session)[0]) == parent


def test_forked_servers_outlive_a_killed_hub_and_its_fork_server(
    hub: Hub, servers: dict[str, tuple[Session, int]]
) -> None:
    """``kill -9`` of the hub: its fork server ends with it, the forked server runs on, the
    restarted hub routes to it, forks again with a new fork server and stops it."""
    session, pid = servers["forkb"]
    parent = parent_of(pid)
    kill_hub(hub)
    wait_for(lambda: not Path(f"/proc/{parent}").exists(), 30, "the fork server to end")
    hub.start()
    assert who(session)[0] == pid  # the same server, reached through the restarted hub
    session.stop()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the stopped server to end")
    assert session.start().status_code in (201, 202)
    session.wait_ready(timeout=180)
    assert parent_of(who(session)[0]) not in (parent, 1)


def test_the_users_site_packages_are_read_as_the_user_only(hub: Hub) -> None:
    """A forked server compares the user's ~/.local site-packages with what its parent
    imported (another version of a module makes it start afresh): it lists them as the user,
    after dropping root. A user whose site-packages link to a folder only root can read, with
    a changed copy of a module every server imports, gets a forked server: root never looked.
    """
    session = hub.new_user("forkc")
    assert session.start().status_code in (201, 202)  # makes the account and its home
    session.wait_ready(timeout=180)
    session.stop()
    account = pwd.getpwnam(f"{hub.prefix}forkc")
    secret = hub.root / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "six.py").write_text("raise ImportError('read through the link')\n")
    version = next(DEFAULT_ENV.glob("lib/python3*")).name
    local = Path(account.pw_dir) / ".local/lib" / version
    local.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(local / "site-packages", ignore_errors=True)
    (local / "site-packages").symlink_to(secret)
    for path in (local.parent.parent, local.parent, local, local / "site-packages"):
        os.lchown(path, account.pw_uid, account.pw_gid)
    assert session.start().status_code in (201, 202)
    session.wait_ready(timeout=180)
    who(session)  # its kernel is forked: the server was forked too
    log = next((hub.data_dir / "logs").glob("*forkc/default.log")).read_text()
    assert "starting the server afresh" not in log
    session.stop()
