"""Hub-user to Linux-account mapping, and real account creation (root)."""

from __future__ import annotations

import grp
import hashlib
import itertools
import os
import pwd
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hubstack.system.accounts import Account, current_account, ensure_account, unix_name

VALID = re.compile(r"^[a-z_][a-z0-9_-]*$")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")


def short_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:6]


def test_clean_names_are_kept() -> None:
    assert unix_name("alice") == "hs-alice"
    assert unix_name("bob-2") == "hs-bob-2"
    assert unix_name("42") == "hs-42"
    assert unix_name("alice", prefix="u_") == "u_alice"


def test_changed_names_get_a_hash_of_the_original() -> None:
    assert unix_name("Alice") == f"hs-alice-{short_hash('Alice')}"
    assert unix_name("josé") == f"hs-jose-{short_hash('josé')}"
    assert unix_name("a.b@example.org") == f"hs-a-b-example-org-{short_hash('a.b@example.org')}"
    assert unix_name("  Mary  Ann ") == f"hs-mary-ann-{short_hash('  Mary  Ann ')}"
    assert unix_name("日本") == f"hs-{short_hash('日本')}"
    assert unix_name("") == f"hs-{short_hash('')}"


def test_names_that_look_hashed_are_hashed_too() -> None:
    """Otherwise the hub user "alice-<hash of Alice>" would get Alice's account."""
    alice = unix_name("Alice")
    impostor = alice.removeprefix("hs-")
    assert unix_name(impostor) == f"{alice}-{short_hash(impostor)}"
    assert unix_name("cafe12").endswith(f"-{short_hash('cafe12')}")


def test_long_names_are_truncated_to_32() -> None:
    long = "a" * 40
    assert unix_name(long) == f"hs-{'a' * 22}-{short_hash(long)}"
    assert len(unix_name(long)) == 32
    edge = "b" * 29  # hs- + 29 = 32: still fits unchanged
    assert unix_name(edge) == f"hs-{edge}"
    # truncation must not leave a dangling dash before the hash
    dashed = "x" * 21 + "-yyyyyyyyyy"
    assert "--" not in unix_name(dashed)


def test_invalid_prefix_is_rejected() -> None:
    for prefix in ["", "1x-", "Hs-", "a" * 30, "h s"]:
        with pytest.raises(ValueError, match="prefix"):
            unix_name("alice", prefix=prefix)


def tricky_names() -> list[str]:
    """Many names that sanitise to the same few stems, plus lookalikes of hashed forms."""
    stems = ["alice", "a", "a-b", "ab", "x" * 28, "x" * 29, "x" * 30, "x" * 40, "cafe12", "0"]
    decorations: list[Callable[[str], str]] = [
        lambda s: s,
        str.upper,
        str.title,
        lambda s: s + ".",
        lambda s: "." + s,
        lambda s: s.replace("-", "_"),
        lambda s: s.replace("-", ".."),
        lambda s: s + "@example.org",
        lambda s: s + " ",
        lambda s: s + "\u0301",
        lambda s: s + "-",
        lambda s: s + "--",
        lambda s: s + "ß",
        lambda s: s + "\U0001f600",
    ]
    names = {decorate(stem) for stem in stems for decorate in decorations}
    names |= {"".join(p) for p in itertools.product("aA.-é", repeat=3)}
    names |= {unix_name(n).removeprefix("hs-") for n in list(names)}
    return sorted(names)


def test_mapping_is_valid_injective_and_deterministic() -> None:
    names = tricky_names()
    assert len(names) > 300
    mapped = {name: unix_name(name) for name in names}
    for name, unix in mapped.items():
        assert VALID.match(unix), (name, unix)
        assert len(unix) <= 32, (name, unix)
        assert unix_name(name) == unix
    collisions = len(mapped) - len(set(mapped.values()))
    assert collisions == 0


@pytest.fixture
def account_names() -> Iterator[Callable[[], str]]:
    """Hands out unique account names and deletes those accounts and the test group after."""
    made: list[str] = []

    def make() -> str:
        made.append(f"hstest-{secrets.token_hex(3)}")
        return made[-1]

    yield make
    for name in made:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", f"{name}-grp"], capture_output=True, check=False)


def passwd_lines(name: str) -> list[str]:
    with open("/etc/passwd") as f:
        return [line for line in f if line.startswith(f"{name}:")]


@needs_root
def test_ensure_account_creates_a_real_account(
    account_names: Callable[[], str], tmp_path: Path
) -> None:
    name = account_names()
    group = f"{name}-grp"
    home = tmp_path / "home" / name
    account = ensure_account(name, home, shell="/bin/sh", group=group)
    entry = subprocess.run(["getent", "passwd", name], capture_output=True, text=True, check=True)
    _, _, uid, gid, _, home_field, shell = entry.stdout.strip().split(":")
    assert account == Account(name, int(uid), int(gid), home)
    assert (home_field, shell) == (str(home), "/bin/sh")
    assert grp.getgrgid(account.gid).gr_name == name, "private user group"
    assert name in grp.getgrnam(group).gr_mem
    assert not home.exists(), "the home directory is the caller's mount point"
    assert ensure_account(name, tmp_path / "other", group=group) == account


@needs_root
def test_ensure_account_without_extra_group(account_names: Callable[[], str]) -> None:
    name = account_names()
    account = ensure_account(name, Path("/nonexistent") / name, group=None)
    groups = subprocess.run(["id", "-Gn", name], capture_output=True, text=True, check=True)
    assert groups.stdout.split() == [name]
    assert pwd.getpwnam(name).pw_shell == "/bin/bash"
    assert account.uid >= 1000


@needs_root
def test_concurrent_calls_create_one_account(account_names: Callable[[], str]) -> None:
    name = account_names()
    group = f"{name}-grp"
    home = Path("/nonexistent") / name
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ensure_account(name, home, group=group), range(16)))
    assert len(set(results)) == 1
    assert len(passwd_lines(name)) == 1
    assert grp.getgrnam(group).gr_mem == [name]


def test_ensure_account_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="user name"):
        ensure_account("-rf", Path("/home/x"))
    with pytest.raises(ValueError, match="user name"):
        ensure_account("Alice", Path("/home/x"))
    with pytest.raises(ValueError, match="absolute"):
        ensure_account("alice", Path("home/alice"))
    with pytest.raises(ValueError, match="group name"):
        ensure_account("alice", Path("/home/alice"), group="bad group")


def test_current_account_is_the_process_user() -> None:
    account = current_account()
    entry = pwd.getpwuid(os.getuid())
    assert account == Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
