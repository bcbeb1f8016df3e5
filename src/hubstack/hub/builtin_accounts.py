"""Built-in (``native``) hub accounts: the first admin, added users and password resets.

Accounts live in jupyterhub-nativeauthenticator's ``users_info`` table inside JupyterHub's
own database, so the CLI can manage them before the hub starts, or while it is stopped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import bcrypt
from jupyterhub import orm
from nativeauthenticator.orm import UserInfo
from sqlalchemy.orm import Session

PASSWORD_BYTES = 12


class AccountError(ValueError):
    """An account operation that cannot be done, with a message for the operator."""


def new_password() -> str:
    """A random password that is easy to copy (URL-safe, 16 characters)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


@contextmanager
def session(db_url: str) -> Iterator[Session]:
    """A session on the hub database, creating JupyterHub's schema on a new database."""
    factory = orm.new_session_factory(db_url)
    db = factory()
    try:
        UserInfo.__table__.create(db.get_bind(), checkfirst=True)
        yield db
        db.commit()
    finally:
        db.close()


def hash_password(password: str) -> bytes:
    """bcrypt's hash: slow on purpose, so a server runs it off its event loop."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt())


def exists(db: Session, name: str) -> bool:
    return UserInfo.find(db, name) is not None


def add(db: Session, name: str, password: str | None = None) -> str:
    """Create an authorized account; return its password (generated unless given)."""
    check_new(db, name)
    password = password or new_password()
    add_hashed(db, name, hash_password(password))
    return password


def check_new(db: Session, name: str) -> None:
    """Refuse a name that has an account or cannot be one."""
    if exists(db, name):
        raise AccountError(f"account {name!r} already exists; use reset-password to change it")
    if not name or any(c in name for c in ", /") or name != name.strip():
        raise AccountError(f"{name!r} is not a valid user name (no spaces, commas or slashes)")


def add_hashed(db: Session, name: str, password_hash: bytes) -> None:
    """An authorized account with a password hashed by ``hash_password``."""
    db.add(UserInfo(username=name, password=password_hash, is_authorized=True))


def reset_password(db: Session, name: str, password: str | None = None) -> str:
    """Set a new password for an existing account; return it."""
    info = UserInfo.find(db, name)
    if info is None:
        raise AccountError(f"no account named {name!r}")
    password = password or new_password()
    info.password = hash_password(password)
    info.is_authorized = True
    return password


def ensure_admins(db_url: str, admins: list[str]) -> dict[str, str]:
    """Create any configured admin that has no account yet; return their new passwords."""
    created: dict[str, str] = {}
    with session(db_url) as db:
        for name in admins:
            if not exists(db, name):
                created[name] = add(db, name)
    return created
