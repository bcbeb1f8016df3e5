"""A Slurm hub's user attacks root through the paths root uses in the user's home, and through
the address the user's job reports: each attack is done for real, as the user's own account."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, Session, new_test_root, running_hub, wait_for
from slurm.conftest import slurm_cluster
from system.conftest import RunAs

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

__all__ = ["slurm_cluster"]  # the fixture, used by name

SECRET = "root-only-4f1c9a"


def fake_environment(prefix: Path, python: str, server: str) -> None:
    """An environment whose python3 and server are the shell scripts given."""
    (prefix / "bin").mkdir(parents=True)
    for name, text in (("python3", python), ("jupyterhub-singleuser", server)):
        (prefix / "bin" / name).write_text(text)
        (prefix / "bin" / name).chmod(0o755)
    for path in (prefix.parent, prefix, prefix / "bin"):
        path.chmod(0o755)


@pytest.fixture(scope="module")
def environments() -> Iterator[Path]:
    """``silent``: its server never listens; ``liar``: its job reports another host."""
    base = new_test_root()
    python = str(DEFAULT_ENV / "bin/python3")
    fake_environment(
        base / "silent", f'#!/bin/sh\nexec {python} "$@"\n', "#!/bin/sh\nexec sleep 600\n"
    )
    fake_environment(
        base / "liar",
        f'#!/bin/sh\nHUBSTACK_NODE_ADDRESS=127.0.0.2 exec {python} "$@"\n',
        f'#!/bin/sh\nexec {DEFAULT_ENV / "bin/jupyterhub-singleuser"} "$@"\n',
    )
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(slurm_cluster: Any, environments: Path) -> Iterator[Hub]:
    overrides = {
        "backend": {
            "type": "slurm",
            "slurm": {"poll_interval": "3s", "pending_poll_interval": "1s"},
        },
        "policy": {"named_servers": {"max": 20}},
        "environments": [
            {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
            {"id": "silent", "display": "Silent", "prefix": str(environments / "silent")},
            {"id": "liar", "display": "Liar", "prefix": str(environments / "liar")},
        ],
    }
    with running_hub(overrides) as running:
        yield running
        account = running.prefix + "mallory"
        subprocess.run(["/usr/bin/scancel", f"--user={account}"], check=False)
        subprocess.run(["/usr/bin/sacctmgr", "-i", "delete", "user", account], capture_output=True)


@pytest.fixture(scope="module")
def mallory(hub: Hub) -> Session:
    """A user whose Unix account exists (a first server made it), with no server running."""
    session = hub.new_user("mallory")
    assert session.start("first").status_code in (201, 202)
    session.wait_ready("first", timeout=180)
    session.stop("first")
    return session


@pytest.fixture
def root_dir(scratch: Path) -> Path:
    """A directory of root's standing in for one root searches or keeps files in (/etc)."""
    path = scratch / "etc"
    path.mkdir(mode=0o755)
    (path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return path


@pytest.fixture
def entry(hub: Hub, mallory: Session, run_as: RunAs) -> Iterator[pwd.struct_passwd]:
    """Mallory's account; links the test planted in the home are gone afterwards."""
    found = pwd.getpwnam(hub.prefix + mallory.name)
    yield found
    code = (
        "import os, sys\nfor path in sys.argv[1:]:\n    if os.path.islink(path): os.unlink(path)\n"
    )
    home = Path(found.pw_dir)
    as_account(run_as, found, code, str(home / "volumes"), str(home / ".hubstack"))


def as_account(run_as: RunAs, entry: pwd.struct_passwd, code: str, *args: str) -> None:
    done = run_as(entry.pw_uid, entry.pw_gid, code, *args)
    assert done.returncode == 0, done.stderr


def relink(run_as: RunAs, entry: pwd.struct_passwd, link: Path, target: Path) -> None:
    """As the user: move whatever ``link`` is aside and make it a symbolic link to ``target``
    (a directory of root's in the user's home can still be renamed by the user)."""
    code = (
        "import os, secrets, sys\n"
        "link, target = sys.argv[1:]\n"
        "if os.path.lexists(link): os.rename(link, f'{link}.{secrets.token_hex(3)}')\n"
        "os.symlink(target, link)\n"
    )
    as_account(run_as, entry, code, str(link), str(target))


def job_of(hub: Hub, session: Session, server: str) -> str:
    name = f"hubstack-{hub.prefix}{session.name}-{server}"
    out = subprocess.run(
        ["/usr/bin/squeue", "-h", "-n", name, "-t", "PD,R", "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] if out[1:] == ["RUNNING"] else ""


def failure(session: Session, server: str) -> str:
    """The message a failed start ends its progress stream with."""
    events = session.progress(server, timeout=120)
    assert events[-1].get("failed"), events
    return str(events[-1]["message"])


def start_failure(session: Session, server: str, options: dict[str, Any] | None = None) -> str:
    """Why a start failed: in the answer to the request, or at the end of its progress."""
    resp = session.start(server, options)
    if resp.status_code == 500:
        return str(resp.json()["message"])
    assert resp.status_code in (201, 202), resp.text
    return failure(session, server)


def test_root_plants_nothing_where_the_users_links_point(
    mallory: Session, entry: pwd.struct_passwd, root_dir: Path, run_as: RunAs
) -> None:
    """``~/volumes`` and ``~/.hubstack`` lead into a directory of root's: a start must not put
    the server's link there (a server named like a tool root runs would be the user's
    program) nor make a directory the user owns there."""
    home = Path(entry.pw_dir)
    relink(run_as, entry, home / "volumes", root_dir)
    relink(run_as, entry, home / ".hubstack", root_dir)
    before = sorted(os.listdir(root_dir))
    message = start_failure(mallory, "runuser")
    assert "storage" in message.lower(), message
    assert sorted(os.listdir(root_dir)) == before
    assert all(p.stat().st_uid == 0 for p in root_dir.iterdir())


def test_deleting_a_server_removes_nothing_where_the_users_link_points(
    hub: Hub, mallory: Session, entry: pwd.struct_passwd, root_dir: Path, run_as: RunAs
) -> None:
    assert mallory.start("passwd").status_code in (201, 202)
    mallory.wait_ready("passwd", timeout=180)
    mallory.stop("passwd")
    volume = hub.root / "volumes" / entry.pw_name / "passwd"
    assert volume.is_dir()
    relink(run_as, entry, Path(entry.pw_dir) / "volumes", root_dir)
    mallory.stop("passwd", remove=True)
    assert (root_dir / "passwd").read_text().startswith("root:")
    assert not volume.exists(), "the server's own directory is deleted"


@pytest.mark.parametrize("plant", ["link to a root-only file", "fifo"])
def test_the_start_failure_shows_no_file_but_the_users_own_log(
    hub: Hub,
    mallory: Session,
    entry: pwd.struct_passwd,
    scratch: Path,
    run_as: RunAs,
    plant: str,
) -> None:
    """The job's log is replaced before the job is cancelled: the hub neither reads the file
    the link names for the user nor blocks on the FIFO."""
    secret = scratch / "shadow"
    secret.write_text(f"{SECRET}\n")
    secret.chmod(0o600)
    server = "tail" + plant[:4]
    assert mallory.start(server, {"environment": "silent"}).status_code in (201, 202)
    job = wait_for(lambda: job_of(hub, mallory, server), 120, "the job to run")
    log = Path(entry.pw_dir) / ".hubstack/jobs" / f"{server}-{job}.log"
    wait_for(log.exists, 60, "the job's log")
    code = (
        "import os, sys\n"
        "log, kind, target = sys.argv[1:]\n"
        "os.unlink(log)\n"
        "os.symlink(target, log) if kind == 'link' else os.mkfifo(log)\n"
    )
    as_account(run_as, entry, code, str(log), plant[:4], str(secret))
    subprocess.run(["/usr/bin/scancel", job], check=True)
    try:
        message = failure(mallory, server)
        assert requests.get(f"{hub.url}/hub/api/", timeout=10).status_code == 200
    finally:
        if plant == "fifo":  # let a hub stuck on the FIFO go
            with contextlib.suppress(OSError):
                os.close(os.open(log, os.O_WRONLY | os.O_NONBLOCK))
    assert "cancelled" in message, message
    assert SECRET not in message


def test_a_job_cannot_send_the_route_to_another_host(hub: Hub, mallory: Session) -> None:
    """The job says its server is on 127.0.0.2 while Slurm runs it on node vm (127.0.0.1)."""
    message = start_failure(mallory, "liar", {"environment": "liar"})
    assert "refused this server's address: 403" in message, message
    assert "127.0.0.2" in message
