"""Which Unix account a hub user's servers run as, the same for every backend."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from hubstack.backends.base import StartFailed
from hubstack.config import Config
from hubstack.system import accounts


@dataclass(frozen=True)
class Accounts:
    """Which Unix account each hub user's servers run as, the same for every backend."""

    root: bool  # the hub runs as root; without root (dev mode), servers run as its account
    existing: bool  # PAM: the machine's own accounts, which hubstack never creates
    prefix: str  # of the accounts hubstack creates

    @classmethod
    def of(cls, config: Config) -> Accounts:
        return cls(os.geteuid() == 0, config.auth.type == "pam", config.accounts.prefix)

    @property
    def kind(self) -> str:
        """What the accounts are, for ``describe``."""
        return "existing machine accounts" if self.existing else "hub accounts"

    def unix_name(self, hub_user: str) -> str:
        return hub_user if self.existing else accounts.unix_name(hub_user, self.prefix)

    def account(self, hub_user: str, home_base: Path) -> accounts.Account:
        """The account for ``hub_user``: created on first use with its home under
        ``home_base``, unless ``existing``; in dev mode, the hub's own."""
        if not self.root:
            return accounts.current_account()
        if self.existing:
            return existing_account(hub_user)
        name = self.unix_name(hub_user)
        return accounts.ensure_account(name, home_base / name)


def existing_account(name: str) -> accounts.Account:
    """The machine's account ``name``, which hubstack does not create (PAM, sudo)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise StartFailed(
            f"There is no Unix account named {name!r} on this machine.", reason="account"
        ) from None
    return accounts.Account(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
