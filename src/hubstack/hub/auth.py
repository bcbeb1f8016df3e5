"""Password logins checked by the hub: built-in accounts (jupyterhub-nativeauthenticator,
fitted to JupyterHub 6) and the machine's accounts (PAM), both with limits on guessing."""

from __future__ import annotations

import asyncio
import functools
import secrets
from typing import Any

import bcrypt
from jupyterhub.auth import PAMAuthenticator
from nativeauthenticator import NativeAuthenticator
from tornado import web

from hubstack.hub.login_limits import LimitedLogins

# bcrypt compares at most this many bytes of a password (older bcrypt releases cut longer
# ones silently, and hashes made then must still match; bcrypt 5 refuses them instead).
BCRYPT_MAX = 72


@functools.cache
def dummy_hash() -> bytes:
    """A hash of a random password, made with bcrypt's default cost as real ones are, for
    names that have no account: checking against it costs what checking a real one does."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt())


def password_matches(password: str, stored: bytes) -> bool:
    return bcrypt.checkpw(password.encode()[:BCRYPT_MAX], stored)


class NativeLogin(NativeAuthenticator):
    """NativeAuthenticator with JupyterHub's own login page and its own password check.

    nativeauthenticator 1.3.0's login handler uses ``handler.statsd``, which JupyterHub 6
    removed, so every login fails with a 500; JupyterHub's standard login handler is used
    instead, and its signup, authorization and change-password pages are kept.

    Its ``authenticate`` is replaced: its count of failures answers a locked account as a
    wrong password (``LimitedLogins`` counts instead, and says why and for how long), it
    answers a name without an account at once, which tells which names exist (here it costs
    the same bcrypt check as a wrong password), and it runs bcrypt on the event loop (a
    check takes a quarter of a second, during which the hub would serve nobody else).
    """

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [route for route in super().get_handlers(app) if route[0] != r"/login"]

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> str | None:
        username = self.normalize_username(data["username"])
        user = self.get_user(username)
        stored = user.password if user is not None else dummy_hash()
        valid = await asyncio.to_thread(password_matches, data.get("password", ""), stored)
        second_factor = user is not None and (
            not user.has_2fa or user.is_valid_token(data.get("2fa"))
        )
        if user is not None and valid and user.is_authorized and second_factor:
            return username
        return None


class HubstackNativeAuthenticator(LimitedLogins, NativeLogin):
    """Built-in accounts, with limits on guessing their passwords."""


class HubstackPAMAuthenticator(LimitedLogins, PAMAuthenticator):
    """The machine's accounts, with limits on guessing their passwords through the hub
    (PAM's own delay after a failure slows one guess, not many sent at once)."""
