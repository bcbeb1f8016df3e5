"""Shared folders as real accounts see them: Unix groups and ACLs decide, for any process
of the account, who reads and who writes; a full folder stops only its writer."""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubstack.config.models import Config
from hubstack.system.accounts import Account, ensure_account
from hubstack.system.shared_folders import SharedFolders

from .conftest import PYTHON

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (accounts, mounts)")

# A file operation as the account, reported as {"ok": value} or {"errno": n}.
OPERATION = """
import json, os, sys
op, path = sys.argv[1], sys.argv[2]
os.umask(0o077)  # the folder's default ACL, not the writer's umask, decides who may read
try:
    if op == "read":
        result = open(path).read()
    elif op == "write":
        with open(path, "w") as f:
            f.write(sys.argv[3])
        result = True
    elif op == "append":
        with open(path, "a") as f:
            f.write(sys.argv[3])
        result = True
    elif op == "mkdir":
        os.mkdir(path)
        result = True
    elif op == "fill":
        with open(path, "wb") as f:
            while True:
                f.write(b"x" * 2**20)
                f.flush()
                os.fsync(f.fileno())
    print(json.dumps({"ok": result}))
except OSError as exc:
    print(json.dumps({"errno": exc.errno}))
"""


@dataclass
class Folks:
    shared: SharedFolders
    base: Path
    people: dict[str, Account]

    def do(self, who: str, op: str, path: str, text: str = "") -> dict[str, object]:
        """``op`` on ``base/path`` as ``who``, with the groups the account has now."""
        account = self.people[who]
        argv = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups"]
        run = subprocess.run(
            [*argv, PYTHON, "-c", OPERATION, op, str(self.base / path), text],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            check=False,
        )
        assert run.returncode == 0, run.stderr
        result: dict[str, object] = json.loads(run.stdout)
        return result


@pytest.fixture(scope="module")
def folks() -> Iterator[Folks]:
    """Folders ``lab`` and ``other`` (8M each) and ``everyone``, and accounts: two
    champions of lab (one also of other), a member of lab, a member of other, an admin."""
    prefix = f"hs{secrets.token_hex(2)}-"
    root = Path(f"/var/tmp/hstest-shared-{secrets.token_hex(3)}")
    root.mkdir(mode=0o755)
    config = Config.model_validate(
        {
            "hub": {"data_dir": str(root / "data")},
            "accounts": {"prefix": prefix},
            "groups": {"lab": {"shared": {"quota": "8M"}}, "other": {"shared": {"quota": "8M"}}},
            # A path every account can traverse (the data directory is root's alone).
            "policy": {"shared": {"path": str(root / "shared"), "everyone": {"quota": "8M"}}},
        }
    )
    shared = SharedFolders(config)
    hub_groups = {
        "champ": ["lab-champions", "other-champions"],
        "champ2": ["lab-champions"],
        "member": ["lab"],
        "outsider": ["other"],
        "admin": [],
    }
    people = {}
    try:
        for who, groups in hub_groups.items():
            people[who] = ensure_account(f"{prefix}{who}", root / who)
            shared.prepare(people[who].name, shared.grants(groups, admin=who == "admin"))
        yield Folks(shared, shared.mounts, people)
    finally:
        for name in shared.folders:
            subprocess.run(["umount", str(shared.path(name))], check=False)
        for account in people.values():
            subprocess.run(["userdel", account.name], check=False, capture_output=True)
        for group in grp.getgrall():
            if group.gr_name.startswith(prefix):
                subprocess.run(["groupdel", group.gr_name], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def test_champions_write_members_read_other_groups_cannot(folks: Folks) -> None:
    assert folks.do("champ", "write", "lab/notes.txt", "first") == {"ok": True}
    assert folks.do("champ2", "append", "lab/notes.txt", ", second") == {"ok": True}
    assert folks.do("champ2", "mkdir", "lab/data") == {"ok": True}
    assert folks.do("champ", "write", "lab/data/table.csv", "a,b") == {"ok": True}

    assert folks.do("member", "read", "lab/notes.txt") == {"ok": "first, second"}
    assert folks.do("member", "read", "lab/data/table.csv") == {"ok": "a,b"}
    assert folks.do("member", "write", "lab/mine.txt", "x") == {"errno": errno.EACCES}
    assert folks.do("member", "append", "lab/notes.txt", "x") == {"errno": errno.EACCES}

    assert folks.do("outsider", "read", "lab/notes.txt") == {"errno": errno.EACCES}
    assert folks.do("outsider", "write", "lab/theirs.txt", "x") == {"errno": errno.EACCES}
    assert folks.do("member", "read", "other/x") == {"errno": errno.EACCES}


def test_everyone_reads_shared_everyone_and_admins_write_it(folks: Folks) -> None:
    assert folks.do("admin", "write", "everyone/welcome.txt", "hello") == {"ok": True}
    for who in ("member", "outsider", "champ"):
        assert folks.do(who, "read", "everyone/welcome.txt") == {"ok": "hello"}
        assert folks.do(who, "write", f"everyone/{who}.txt", "x") == {"errno": errno.EACCES}


def test_a_full_folder_gives_its_writer_enospc_and_nothing_else(folks: Folks) -> None:
    folks.do("champ", "write", "lab/kept.txt", "kept")
    assert folks.do("champ", "fill", "lab/big") == {"errno": errno.ENOSPC}
    assert folks.do("champ", "write", "other/still.txt", "fine") == {"ok": True}
    assert folks.do("member", "read", "lab/kept.txt") == {"ok": "kept"}
    assert (folks.base / "lab/big").stat().st_size < 8 * 2**20
    os.unlink(folks.base / "lab/big")
    assert folks.do("champ", "write", "lab/after.txt", "room again") == {"ok": True}


def test_membership_follows_the_hub_groups_and_leaves_other_groups(folks: Folks) -> None:
    account = folks.people["outsider"]
    reader = folks.shared.folders["other"].readers
    assert reader is not None
    folks.shared.prepare(account.name, folks.shared.grants(["lab"], admin=False))
    assert account.name not in grp.getgrnam(reader).gr_mem
    assert folks.do("outsider", "read", "lab/notes.txt") == {"ok": "first, second"}
    folks.shared.prepare(account.name, folks.shared.grants([], admin=False))
    assert folks.do("outsider", "read", "lab/notes.txt") == {"errno": errno.EACCES}
    assert "hubstack-users" in [g.gr_name for g in grp.getgrall() if account.name in g.gr_mem], (
        "groups that are not a folder's stay"
    )
    assert pwd.getpwnam(account.name).pw_gid == account.gid
