"""The ``native`` authenticator: jupyterhub-nativeauthenticator, fitted to JupyterHub 6."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections import deque
from datetime import datetime
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from tornado import web
from tornado.httputil import HTTPServerRequest
from traitlets import Integer

# bcrypt compares at most this many bytes of a password (older bcrypt releases cut longer
# ones silently, and hashes made then must still match; bcrypt 5 refuses them instead).
BCRYPT_MAX = 72
# Past this many remembered names or addresses, those whose failures are over are forgotten.
REMEMBERED_MAX = 10_000


@functools.cache
def dummy_hash() -> bytes:
    """A hash of a random password, made with bcrypt's default cost as real ones are, for
    names that have no account: checking against it costs what checking a real one does."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt())


def password_matches(password: str, stored: bytes) -> bool:
    return bcrypt.checkpw(password.encode()[:BCRYPT_MAX], stored)


def client_address(request: HTTPServerRequest) -> str:
    """The address the proxy saw the request come from: the last ``X-Forwarded-For`` entry
    that is not a trusted proxy's (JupyterHub's ``trusted_downstream_ips``).

    Not tornado's ``remote_ip``: it takes ``X-Real-Ip`` as it comes, which any client may
    send with a new address for every guess.
    """
    context = getattr(request.connection, "context", None)
    trusted = getattr(context, "trusted_downstream", None) or set()
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
    for address in reversed(forwarded):
        if address and address not in trusted:
            return address
    return getattr(context, "_orig_remote_ip", None) or request.remote_ip or ""


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class HubstackNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with JupyterHub's own login page, and limits on guessing.

    nativeauthenticator 1.3.0's login handler uses ``handler.statsd``, which JupyterHub 6
    removed, so every login fails with a 500; JupyterHub's standard login handler is used
    instead, and its signup, authorization and change-password pages are kept.

    Its ``authenticate`` is replaced, keeping its per-account count of failures
    (``allowed_failed_logins`` within ``seconds_before_next_try``) and adding what it lacks:
    a limit per client address (one address trying many names is not stopped by a limit
    per name), a refusal that says why and for how long (it answers a locked account as a
    wrong password), a name without an account costing the same bcrypt check as a wrong
    password (it answers those at once, which tells which names exist), and bcrypt run
    off the event loop (a check takes a quarter of a second, during which the hub would
    serve nobody else).
    """

    allowed_failed_logins_per_address = Integer(
        0,
        config=True,
        help="Failed logins from one address, within seconds_before_next_try, after which "
        "logins from it are refused until the oldest of them is that old; 0: no limit.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address_failures: dict[str, deque[float]] = {}

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [route for route in super().get_handlers(app) if route[0] != r"/login"]

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> str | None:
        username = self.normalize_username(data["username"])
        address = client_address(handler.request)
        self.refuse_while_locked(username, address)
        # Counted as failed before the check and taken back on success: guesses sent all at
        # once would otherwise all pass the limit while the first checks are running.
        self.add_login_attempt(username)
        attempt = time.monotonic()
        self.address_failures.setdefault(address, deque()).append(attempt)
        self.forget_old_failures()
        user = self.get_user(username)
        stored = user.password if user is not None else dummy_hash()
        valid = await asyncio.to_thread(password_matches, data.get("password", ""), stored)
        second_factor = user is not None and (
            not user.has_2fa or user.is_valid_token(data.get("2fa"))
        )
        if user is not None and valid and user.is_authorized and second_factor:
            self.successful_login(username)
            with contextlib.suppress(KeyError, ValueError):
                self.address_failures[address].remove(attempt)
            return username
        return None

    def refuse_while_locked(self, username: str, address: str) -> None:
        """Refuse with HTTP 429, whatever the password, while a limit is reached; the login
        page shows the message."""
        wait = self.account_wait(username)
        if wait > 0:
            raise web.HTTPError(
                429,
                f"Too many failed logins for this account. Wait {_minutes(wait)}, then try again.",
            )
        wait = self.address_wait(address)
        if wait > 0:
            raise web.HTTPError(
                429,
                "Too many failed logins from your network address. Wait "
                f"{_minutes(wait)}, then try again.",
            )

    def account_wait(self, username: str) -> float:
        """Seconds until the account may try again: nativeauthenticator's rule, counted in
        whole seconds (its own check reads only the seconds part of the time since the last
        failure, so a lock came back every day)."""
        attempts = self.login_attempts.get(username)
        limit = self.allowed_failed_logins
        if not limit or not attempts or attempts["count"] < limit:
            return 0.0
        since = (datetime.now() - attempts["time"]).total_seconds()
        return self.seconds_before_next_try - since

    def address_wait(self, address: str) -> float:
        """Seconds until fewer than the limit of failures from ``address`` are recent."""
        limit = self.allowed_failed_logins_per_address
        failures = self.address_failures.get(address)
        if not limit or not failures:
            return 0.0
        now = time.monotonic()
        while failures and now - failures[0] >= self.seconds_before_next_try:
            failures.popleft()
        if len(failures) < limit:
            return 0.0
        return failures[-limit] + self.seconds_before_next_try - now

    def forget_old_failures(self) -> None:
        """Keep memory bounded when many names or addresses fail: drop those that no longer
        count towards a limit."""
        if len(self.login_attempts) > REMEMBERED_MAX:
            for name in [n for n in self.login_attempts if self.account_wait(n) <= 0]:
                self.login_attempts.pop(name)
        if len(self.address_failures) > REMEMBERED_MAX:
            for address in list(self.address_failures):
                if self.address_wait(address) <= 0 and not self.address_failures[address]:
                    self.address_failures.pop(address)
