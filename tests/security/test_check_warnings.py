"""``hubstack check`` warns about unsafe settings it can see, on stderr, with status 0.

Real directories under a root-owned test root: made writable by every account, by a
group other than root's, or owned by another account, where the config puts the hub's
data, the built environments and the Slurm volumes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import needs_root
from hubtest import merge, new_test_root

pytestmark = [needs_root]
WARNING = "hubstack: warning: "


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory owned by root, mode 0755, under directories that are too."""
    path = new_test_root()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def safe_config(root: Path) -> dict[str, Any]:
    for name in ("data", "binder", "home", "volumes"):
        (root / name).mkdir(mode=0o755)
    return {
        "hub": {"data_dir": str(root / "data")},
        "binder": {"root": str(root / "binder")},
        "backend": {"local": {"home_base": str(root / "home")}},
    }


def check(root: Path, config: dict[str, Any]) -> list[str]:
    """Run ``hubstack check`` on ``config``; its warnings (it must succeed)."""
    path = root / "hubstack.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "hubstack.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["hub"], "the effective config is printed as before"
    lines = result.stderr.splitlines()
    assert all(line.startswith(("# config:", WARNING)) for line in lines), lines
    return [line.removeprefix(WARNING) for line in lines if line.startswith(WARNING)]


def test_a_safe_config_gets_no_warning(root: Path) -> None:
    assert check(root, safe_config(root)) == []


@pytest.mark.parametrize(
    "key", ["hub.data_dir", "binder.root", "backend.local.home_base", "policy.shared.path"]
)
def test_a_directory_above_writable_by_every_account(root: Path, key: str) -> None:
    config = safe_config(root)
    shared = root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: sticky, and still anyone can plant the path
    section, _, name = key.rpartition(".")
    config = merge(config, _nested(section, {name: str(shared / "not-yet-made")}))
    (warning,) = check(root, config)
    assert warning.startswith(f"{key} {shared}/not-yet-made: {shared} is writable by every")
    assert "owned by root and writable by root only" in warning


def test_a_directory_writable_by_a_group_or_owned_by_another_account(
    root: Path, free_ids: tuple[int, int]
) -> None:
    uid, gid = free_ids
    config = safe_config(root)
    os.chown(root / "binder", 0, gid)
    os.chmod(root / "binder", 0o775)
    os.chown(root / "volumes", uid, 0)
    volumes = root / "volumes" / "servers"
    volumes.mkdir(mode=0o755)
    config = merge(
        config, {"backend": {"type": "slurm", "slurm": {"shared": {"volumes": str(volumes)}}}}
    )
    warnings = check(root, config)
    assert [w.split(":", 1)[0] for w in warnings] == [
        f"binder.root {root / 'binder'}",
        f"backend.slurm.shared.volumes {volumes}",
    ]
    assert f"{root / 'binder'} is writable by group gid {gid}" in warnings[0]
    assert f"{root / 'volumes'} is owned by uid {uid}" in warnings[1]


def test_a_symbolic_link_is_judged_by_where_it_leads(root: Path, free_ids: tuple[int, int]) -> None:
    uid, _ = free_ids
    theirs = root / "theirs"
    theirs.mkdir()
    os.chown(theirs, uid, uid)
    (root / "data-link").symlink_to(theirs)
    config = merge(safe_config(root), {"hub": {"data_dir": str(root / "data-link")}})
    (warning,) = check(root, config)
    assert f"{theirs} is owned by uid {uid}" in warning


def test_open_signup_without_a_login_limit(root: Path) -> None:
    limited = merge(safe_config(root), {"auth": {"open_signup": True}})
    assert check(root, limited) == [], "the default limits are enough"
    unlimited = merge(limited, {"auth": {"failed_logins": {"per_address": 0}}})
    (warning,) = check(root, unlimited)
    assert warning.startswith("auth.open_signup is on while auth.failed_logins sets no limit")


def test_repositories_over_unencrypted_transports_or_from_any_host(root: Path) -> None:
    config = merge(
        safe_config(root),
        {"binder": {"allowed_schemes": ["https", "http", "git"], "allowed_hosts": ["*:*"]}},
    )
    schemes, hosts = check(root, config)
    assert schemes.startswith("binder.allowed_schemes allows http:// and git://")
    assert hosts.startswith("binder.allowed_hosts has a '*' host")
    config["binder"]["enabled"] = False
    assert check(root, config) == [], "nothing is fetched when launches are off"


def _nested(dotted: str, value: dict[str, Any]) -> dict[str, Any]:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value
