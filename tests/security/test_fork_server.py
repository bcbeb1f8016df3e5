"""Servers forked by an environment's fork server (``backend.local.fork_server``) hold
nothing of the root parent they were forked from, nor of another user's server: each runs
as its own account with exactly that account's groups, in its own cgroup and mount
namespace (its private /tmp), in its home, with its own environment, and with none of the
parent's descriptors; neither the parent nor another user's server has a user's API token
in its memory. A stopped server is gone with its cgroup, and the next start still forks;
after `kill -9` of the hub the forked servers run on and the restarted hub takes them back."""

from __future__ import annotations

import json
import os
import pwd
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import DEFAULT_ENV, Hub, Session, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

USERS = ("forka", "forkb")
# The kernel's parent is the server; the kernel also says which /tmp it sees, and the
# environment it inherited from the server (a fork changes its environment in memory, so
# /proc/<server>/environ still shows the parent's).
WHO = (
    "import os, json; e = {k: os.environ.get(k) for k in "
    "('JUPYTERHUB_USER', 'USER', 'HOME', 'JUPYTERHUB_API_TOKEN', 'PATH', 'LANG')}; "
    "t = os.stat('/tmp'); print(os.getppid(), f'{t.st_dev}:{t.st_ino}', json.dumps(e))"
)


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
    pid, tmp, env = run.stdout.split(maxsplit=2)
    return int(pid), tmp, json.loads(env)


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
