"""What a build left in its home reaches a user's home only as that user: a link or FIFO the
user planted leads nowhere the user could not write anyway, and no file of theirs is
replaced. Real accounts; the hub's own copy function (backends call it at every launch)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from hubtest import new_test_root

from hubstack.envs.checkout import HOME_MARKS, copy_home
from hubstack.launch.plan import Content
from hubstack.system import SystemOpError
from hubstack.system.accounts import Account, ensure_account

pytestmark = [needs_root]


@pytest.fixture
def site() -> Iterator[tuple[Path, Account]]:
    """A build's kept home (root's, as the cache holds it) and a user with an empty home."""
    root = new_test_root()
    skeleton = root / "envs/k1/home"
    (skeleton / ".jupyter").mkdir(parents=True)
    (skeleton / ".jupyter/jupyter_server_config.json").write_text("{}\n")
    (skeleton / "postbuild.txt").write_text("from the build\n")
    for folder in (root, root / "envs", root / "envs/k1", skeleton, skeleton / ".jupyter"):
        os.chmod(folder, 0o755)
    name = f"hs-hk{secrets.token_hex(3)}"
    home = root / "home" / name
    user = ensure_account(name, home, group=None)
    home.mkdir(parents=True)
    os.chown(home, user.uid, user.gid)
    try:
        yield skeleton, user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def content(skeleton: Path) -> Content:
    return Content("repo", "git://x/repo", "0" * 40, Path("/nonexistent"), home=skeleton)


def as_user(user: Account, *argv: str) -> None:
    subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv],
        check=True,
    )


def test_the_users_files_are_kept_and_the_copy_is_theirs(site: tuple[Path, Account]) -> None:
    skeleton, user = site
    as_user(user, "sh", "-c", f"echo mine > {user.home}/postbuild.txt")
    asyncio.run(copy_home(content(skeleton), user))
    assert (user.home / "postbuild.txt").read_text() == "mine\n"
    copied = user.home / ".jupyter/jupyter_server_config.json"
    assert copied.read_text() == "{}\n"
    assert copied.stat().st_uid == user.uid
    assert (user.home / HOME_MARKS / "k1").exists()
    # Once per environment: what the user deletes afterwards stays deleted.
    copied.unlink()
    asyncio.run(copy_home(content(skeleton), user))
    assert not copied.exists()


def test_a_planted_link_writes_only_where_the_user_may(site: tuple[Path, Account]) -> None:
    skeleton, user = site
    os.symlink("/etc", user.home / ".jupyter")  # root would write jupyter's file into /etc
    with pytest.raises(SystemOpError):
        asyncio.run(copy_home(content(skeleton), user))
    assert not (Path("/etc") / "jupyter_server_config.json").exists()


def test_a_planted_fifo_does_not_stall_the_copy(site: tuple[Path, Account]) -> None:
    skeleton, user = site
    os.mkfifo(user.home / "postbuild.txt")
    os.chown(user.home / "postbuild.txt", user.uid, user.gid)
    asyncio.run(asyncio.wait_for(copy_home(content(skeleton), user), 60))
    assert (user.home / ".jupyter/jupyter_server_config.json").exists()
