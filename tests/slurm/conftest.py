"""Fixtures for tests against the local Slurm cluster (scripts/slurm-cluster.sh).

Other people use the same cluster at the same time: these fixtures only ever run the
script's ``start`` (idempotent) and ``add-user``, and cancel only jobs of their own accounts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hubtest import wait_for

from hubstack.system import tool

REPO = Path(__file__).parents[2]
CLUSTER_SCRIPT = REPO / "scripts/slurm-cluster.sh"


@dataclass(frozen=True)
class Cluster:
    """The running local cluster: its summary line and where its configuration is."""

    summary: str
    conf: Path

    @property
    def accounting(self) -> bool:
        return "accounting on" in self.summary

    def conf_with(self, directory: Path, **settings: str) -> Path:
        """A copy of slurm.conf with ``settings`` (e.g. SlurmctldPort="6999") put in.

        Pointing a client command at it (``SLURM_CONF``) shows how the command fails when the
        controller or the accounting daemon cannot be reached, without touching the cluster.
        """
        text = self.conf.read_text()
        for key, value in settings.items():
            line = f"{key}={value}"
            text, count = re.subn(rf"(?m)^{key}=.*$", line, text)
            if not count:
                text += f"\n{line}\n"
        path = directory / "slurm.conf"
        path.write_text(text)
        return path


@dataclass(frozen=True)
class User:
    """A throwaway Unix account known to Slurm's accounting (account research)."""

    name: str
    uid: int
    gid: int
    home: Path


def cluster_script(*args: str) -> str:
    """Run scripts/slurm-cluster.sh and return its stdout."""
    proc = subprocess.run(
        [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"slurm-cluster.sh {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def queued_jobs(user: str) -> list[str]:
    """The ids of ``user``'s jobs still in the queue, finished ones left out."""
    out = subprocess.run(
        [tool("squeue"), "--noheader", f"--user={user}", "--format=%i"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out.split()


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The local cluster, started if it is not running."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    summary = cluster_script("start").strip()
    return Cluster(summary, Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")))


@contextlib.contextmanager
def new_slurm_user(*accounts: str) -> Iterator[User]:
    """A fresh ``ts-xxxx`` account with a world-traversable home, in Slurm ``accounts``.

    Afterwards it cancels whatever jobs the account left, then removes it from the machine
    and from Slurm's accounting.
    """
    name = f"ts-{secrets.token_hex(2)}"
    while _exists(name):
        name = f"ts-{secrets.token_hex(2)}"
    base = Path(tempfile.mkdtemp(prefix="hubstack-slurm-"))
    base.chmod(0o711)
    home = base / name
    try:
        subprocess.run(
            [tool("useradd"), "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
        home.chmod(0o711)
        cluster_script("add-user", name, *accounts)
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        if _exists(name):
            subprocess.run([tool("scancel"), f"--user={name}"], check=False, capture_output=True)
            try:
                wait_for(lambda: not queued_jobs(name), 60, f"{name}'s jobs to leave the queue")
            finally:
                subprocess.run([tool("userdel"), "--force", name], check=False, capture_output=True)
                subprocess.run(
                    [tool("sacctmgr"), "-i", "delete", "user", name],
                    check=False,
                    capture_output=True,
                )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_user(slurm_cluster: Cluster) -> Iterator[User]:
    """A throwaway account in the Slurm account research, gone after the module."""
    with new_slurm_user() as user:
        yield user


@contextlib.contextmanager
def non_root_hub_account(sbatch_as_group: str | None) -> Iterator[str]:
    """A non-root account for the hub; with ``sbatch_as_group``, the README's sudoers rule
    lets it run sbatch as that group's members, and nothing else."""
    name = f"hsv-{secrets.token_hex(3)}"
    rules = Path(f"/etc/sudoers.d/hubstack-test-{name}")
    subprocess.run([tool("useradd"), "--system", "--no-create-home", name], check=True)
    try:
        if sbatch_as_group is not None:
            rule = f"{name} ALL=(%{sbatch_as_group}) NOPASSWD:SETENV: /usr/bin/sbatch\n"
            rules.write_text(rule)
            rules.chmod(0o440)
            check = [tool("visudo"), "--check", "--file", str(rules)]
            subprocess.run(check, check=True, capture_output=True)
        yield name
    finally:
        rules.unlink(missing_ok=True)
        subprocess.run([tool("userdel"), name], check=False, capture_output=True)


@pytest.fixture
def hub_account(slurm_user: User) -> Iterator[str]:
    """A non-root hub account allowed to submit as the test user (its private group)."""
    with non_root_hub_account(slurm_user.name) as name:
        yield name


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def job_state(job: str) -> str:
    out = subprocess.run(
        [tool("squeue"), "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class Blocker:
    """A job on every idle CPU, so that the next job has to wait (reason Resources)."""

    def __init__(self) -> None:
        idle = int(
            subprocess.run(
                [tool("sinfo"), "-h", "-p", "debug", "-o", "%C"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("/")[1]
        )
        assert idle > 0, "the node has no idle CPU to fill"
        command = f"{tool('sbatch')} --parsable -pdebug -t10 -c{idle} --mem=64M -o/dev/null"
        self.job = subprocess.run(
            [*command.split(), "--wrap=sleep 600"], capture_output=True, text=True, check=True
        ).stdout.strip()
        wait_for(lambda: job_state(self.job) == "RUNNING", 60, "the blocker")

    def release(self) -> None:
        subprocess.run([tool("scancel"), self.job], check=False)
