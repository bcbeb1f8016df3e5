"""Limits on guessing passwords, for every login that checks one (built-in accounts, PAM,
LDAP): after ``failed_logins_per_account`` failures for one name, or
``failed_logins_per_address`` from one client address, within ``failed_logins_lockout``
seconds, logins are refused with HTTP 429 and a message saying for how long.

JupyterHub's authenticators have no such limit (nativeauthenticator counts per name only,
and answers a locked account as a wrong password; PAM and ldapauthenticator count
nothing), so a script could try passwords of the machine's or the directory's accounts
through the hub as fast as it answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from jupyterhub.auth import Authenticator
from tornado import web
from tornado.httputil import HTTPServerRequest
from traitlets import Float, Integer

# Past this many remembered names or addresses, those whose failures are over are forgotten.
REMEMBERED_MAX = 10_000


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


def minutes(seconds: float) -> str:
    count = max(1, round(seconds / 60))
    return f"{count} minute{'s' if count != 1 else ''}"


class Failures:
    """Recent failures per key (a name or an address): ``limit`` of them within ``window``
    seconds make the key wait until the oldest of those is ``window`` old."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.recent: dict[str, deque[float]] = {}
        self.checking: Counter[str] = Counter()  # checks in flight

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        failures = self.recent.get(key)
        if not self.limit or not failures:
            return 0.0
        now = self.clock()
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0.0
        return failures[-self.limit] + self.window - now

    def add(self, key: str) -> None:
        """Count a failure now. Nothing is kept when there is no limit, so an unlimited
        counter does not grow."""
        if not self.limit:
            return
        self.recent.setdefault(key, deque()).append(self.clock())
        if len(self.recent) > REMEMBERED_MAX:
            for old in [k for k in self.recent if self.wait(k) <= 0 and k != key]:
                if not self.recent[old]:
                    self.recent.pop(old)

    def has_room(self, key: str) -> bool:
        """Whether one more check for ``key`` may start now: the checks in flight count as
        failures until judged, so that guesses sent all at once cannot together pass the
        limit; the others wait for them rather than being refused, so a class logging in
        at once from behind one address is not locked out by its own logins."""
        if not self.limit:
            return True
        self.wait(key)  # forgets failures older than the window
        return len(self.recent.get(key, ())) + self.checking[key] < self.limit

    def start(self, key: str) -> None:
        self.checking[key] += 1

    def finish(self, key: str) -> None:
        self.checking[key] -= 1
        if self.checking[key] <= 0:
            del self.checking[key]

    def clear(self, key: str) -> None:
        self.recent.pop(key, None)


class LimitedLogins(Authenticator):
    """An authenticator whose ``authenticate`` is counted: put it first among the bases,
    before the authenticator that checks the password."""

    failed_logins_per_account = Integer(
        0, config=True, help="Failed logins for one name after which it waits; 0: no limit."
    )
    failed_logins_per_address = Integer(
        0, config=True, help="Failed logins from one address after which it waits; 0: no limit."
    )
    failed_logins_lockout = Float(
        600.0, config=True, help="Seconds a failure counts, and a locked name or address waits."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        lockout = self.failed_logins_lockout
        self.account_failures = Failures(self.failed_logins_per_account, lockout)
        self.address_failures = Failures(self.failed_logins_per_address, lockout)
        self._judged = asyncio.Condition()  # notified when a check ends

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> Any:
        username = self.normalize_username(str(data.get("username", "")))
        # No handler: a login made by the hub's own code, not through a request.
        address = client_address(handler.request) if handler is not None else ""
        counters = ((self.account_failures, username), (self.address_failures, address))
        async with self._judged:
            await self._judged.wait_for(
                lambda: self._locked(username, address) or all(c.has_room(k) for c, k in counters)
            )
        self.refuse_while_locked(username, address)
        for counter, key in counters:
            counter.start(key)
        judged, result = False, None
        try:
            result = await super().authenticate(handler, data)
            judged = True  # else the check could not be made (a directory that is down)
        finally:
            for counter, key in counters:
                counter.finish(key)
                if judged and not result:
                    counter.add(key)
            if result:
                self.account_failures.clear(username)
            async with self._judged:  # counted before the waiting checks look again
                self._judged.notify_all()
        return result

    def _locked(self, username: str, address: str) -> bool:
        return self.account_failures.wait(username) > 0 or self.address_failures.wait(address) > 0

    def refuse_while_locked(self, username: str, address: str) -> None:
        """Refuse with HTTP 429, whatever the password, while a limit is reached; the login
        page shows the message."""
        wait = self.account_failures.wait(username)
        if wait > 0:
            raise web.HTTPError(
                429,
                f"Too many failed logins for this account. Wait {minutes(wait)}, then try again.",
            )
        wait = self.address_failures.wait(address)
        if wait > 0:
            raise web.HTTPError(
                429,
                "Too many failed logins from your network address. Wait "
                f"{minutes(wait)}, then try again.",
            )
