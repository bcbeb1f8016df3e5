"""Which Unix account a hub user's servers run as, the same for every backend."""

from __future__ import annotations

import pwd
from pathlib import Path

from hubstack.backends.base import StartFailed
from hubstack.system import accounts


def account_for(
    hub_user: str, *, root: bool, existing: bool, prefix: str, home_base: Path
) -> accounts.Account:
    """The account for ``hub_user``: created on first use, unless ``existing`` (PAM) accounts.

    Without root (dev mode) every server runs as the hub's own account.
    """
    if not root:
        return accounts.current_account()
    if existing:
        return existing_account(hub_user)
    name = accounts.unix_name(hub_user, prefix)
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
