"""Credentials encrypted at rest with Fernet (``cryptography``), under a key file in the hub's
data directory that only the hub's account reads: a copy of the database alone reveals none."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "storage-connections.key"


def load_key(data_dir: Path) -> Fernet:
    """The hub's key, made on first use: created exclusively with mode 0600, opened without
    following links, and refused if anyone else could read it."""
    path = data_dir / KEY_FILE
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # made meanwhile by another process of the hub
            return load_key(data_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
            out.flush()
            os.fsync(out.fileno())
        return Fernet(key)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise PermissionError(
                f"{path} must be a file of the hub's account that no one else can read or "
                "write (mode 0600)"
            )
        return Fernet(src.read().strip())


def seal(box: Fernet, secret: str) -> str:
    return box.encrypt(secret.encode()).decode()


def unseal(box: Fernet, sealed: str) -> str:
    try:
        return box.decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise PermissionError(
            "a stored credential cannot be decrypted: the hub's storage key changed"
        ) from None
