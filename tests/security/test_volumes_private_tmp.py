"""A server's /tmp, /var/tmp and /dev/shm are its own and inside its limits: filling them
fills the server's volume (or memory), never the host's disks, and no user sees another's."""

from __future__ import annotations

import pwd
import secrets
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import single_user_servers
from hubtest import Hub, Session

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

VOLUME = 64 * 2**20  # policy.storage.server_volume of the test hub

FILL = """
import errno, os, sys
path, written = sys.argv[1], 0
try:
    with open(path, "wb") as f:
        for _ in range(200):
            f.write(b"0" * 2**20)
            f.flush()
            os.fsync(f.fileno())
            written += 2**20
    print("NO-ERROR", written)
except OSError as exc:
    print(errno.errorcode[exc.errno], written)
finally:
    os.remove(path)
"""


def fill(session: Session, server: str, path: str) -> tuple[str, int]:
    run = session.run_code(f"import sys\nsys.argv = ['fill', {path!r}]\n{FILL}", server)
    code, written = run.stdout.split()
    return code, int(written)


def test_tmp_is_the_servers_own_and_counted_in_its_volume(
    hub: Hub, alice: Session, bob: Session
) -> None:
    assert alice.start("scratchy", {"machine": "tiny"}).status_code in (201, 202)
    assert bob.start("peeky").status_code in (201, 202)
    alice.wait_ready("scratchy")
    bob.wait_ready("peeky")

    for folder in ("/tmp", "/var/tmp"):
        name = f"hubstack-fill-{secrets.token_hex(4)}"
        # The host's disk has room for 200 MB: only the server's volume runs out.
        code, written = fill(alice, "scratchy", f"{folder}/{name}")
        assert code == "ENOSPC" and written <= VOLUME, (folder, code, written)

    secret = f"hubstack-secret-{secrets.token_hex(4)}"
    run = alice.run_code(
        f"for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
        f"    open(d + '/{secret}', 'w').write('mine')\n"
        "import os\n"
        "shm = os.statvfs('/dev/shm')\n"
        "print(os.getuid(), shm.f_blocks * shm.f_frsize)\n"
        "print(open('/proc/self/cgroup').read())",
        "scratchy",
    )
    uid, shm_size, *cgroups = run.stdout.split()
    assert int(uid) == pwd.getpwnam(f"{hub.prefix}alice").pw_uid, "the server runs as the user"
    assert int(shm_size) <= 400 * 2**20, "/dev/shm is capped at the memory limit"
    unit = f"hubstack-{hub.prefix}alice-scratchy"
    assert any(line.endswith(f":memory:/hubstack/{unit}") for line in cgroups), cgroups
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(folder, secret).exists(), f"the host sees the server's {folder}"
    seen = bob.run_code(
        f"import os\nprint([os.path.exists(d + '/{secret}') for d in "
        "('/tmp', '/var/tmp', '/dev/shm')])",
        "peeky",
    )
    assert seen.stdout.strip() == "[False, False, False]", seen

    alice.stop("scratchy", remove=True)
    bob.stop("peeky", remove=True)


def mounts_of(pid: int) -> list[str]:
    """The mount points in ``pid``'s mount namespace."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split(" ")[4] for line in f]


def test_a_stopped_servers_home_leaves_the_other_servers_namespaces(hub: Hub) -> None:
    """Each server's namespace is a copy of the hub's mounts taken at its start: a home the
    hub unmounts later must leave it too, or the home's next mount waits for that server."""
    ida, ned = hub.new_user("ida"), hub.new_user("ned")
    assert ida.start().status_code in (201, 202)
    ida.wait_ready()
    assert ned.start().status_code in (201, 202)
    ned.wait_ready()
    ida_home = str(hub.home_base / f"{hub.prefix}ida")
    ned_uid = pwd.getpwnam(f"{hub.prefix}ned").pw_uid
    (ned_server,) = single_user_servers({ned_uid})[ned_uid]
    assert ida_home in mounts_of(ned_server)

    ida.stop()
    assert ida_home not in mounts_of(ned_server), "ned's server still holds ida's home"
    assert ida.start().status_code in (201, 202)
    ida.wait_ready()

    ida.stop()
    ned.stop()
