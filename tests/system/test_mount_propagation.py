"""Mounts below a shared directory reach other mount namespaces, and so do their unmounts:
a home the hub unmounts is let go by every server's namespace at once (system.propagation)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hubtest import wait_for

from hubstack.system import propagation, tool
from hubstack.system.volumes import create_image, mount, unmount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")

SIZE = 32 * 2**20


def mounts_of(pid: int) -> list[str]:
    """The mount points in ``pid``'s mount namespace."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split(" ")[4] for line in f]


def loop_devices(image: Path) -> str:
    argv = [tool("losetup"), "--associated", str(image)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def namespaces() -> Iterator[Callable[[], int]]:
    """Starts processes in mount namespaces of their own, slave copies of this one, as the
    local backend starts servers; ends them afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        argv = [tool("unshare"), "--mount", "--propagation", "slave", "--", tool("sleep"), "300"]
        proc = subprocess.Popen(argv)
        started.append(proc)
        ours = os.readlink("/proc/self/ns/mnt")
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/mnt") != ours, 30, "a new namespace")
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def homes(scratch: Path) -> Path:
    """A directory for homes on a private mount, as on hosts without systemd (where the
    root is private), whatever this host's root is."""
    private = scratch / "private"
    private.mkdir()
    mount_ = tool("mount")
    subprocess.run([mount_, "--bind", str(private), str(private)], check=True)
    subprocess.run([mount_, "--make-private", str(private)], check=True)
    (private / "homes").mkdir()
    return private / "homes"


def test_an_unmounted_home_leaves_the_namespaces_that_copied_it(
    scratch: Path, homes: Path, namespaces: Callable[[], int]
) -> None:
    assert propagation.share(homes)
    image, home = scratch / "ann.img", homes / "ann"
    create_image(image, SIZE, 0, 0)
    mount(image, home, 0, 0)
    server = namespaces()  # another user's server, started while ann's home is mounted
    assert str(home) in mounts_of(server)

    unmount(home)
    assert str(home) not in mounts_of(server)
    wait_for(lambda: not loop_devices(image), 30, "the home's loop device to be let go")

    # Mounted again later, it reaches the running server's namespace too.
    mount(image, home, 0, 0)
    assert str(home) in mounts_of(server)
    unmount(home)


def test_sharing_twice_stacks_nothing(homes: Path) -> None:
    assert propagation.share(homes) and propagation.share(homes)
    assert mounts_of(os.getpid()).count(str(homes)) == 1


def test_mounts_below_are_never_hidden_by_a_bind(scratch: Path, homes: Path) -> None:
    image, home = scratch / "bo.img", homes / "bo"
    create_image(image, SIZE, 0, 0)
    mount(image, home, 0, 0)
    (home / "mark").write_text("still here")

    assert not propagation.share(homes), "a bind over the mounted home would hide it"
    assert str(homes) not in mounts_of(os.getpid())
    assert (home / "mark").read_text() == "still here"
    unmount(home)
