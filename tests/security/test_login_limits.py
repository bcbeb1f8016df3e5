"""Guessing passwords through the real login form: per account, per address, unknown names.

A real hub with small limits (3 failures per account, 6 per address) gets logins from
several loopback addresses (127.0.0.x, which the proxy reports as the client's), the way a
person or a script guessing passwords would send them.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, running_hub
from requests.adapters import HTTPAdapter
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from hubstack.hub import builtin_accounts
from hubstack.hub.auth import HubstackNativeAuthenticator, HubstackPAMAuthenticator, dummy_hash
from hubstack.hub.login_limits import Failures

PER_ACCOUNT = 3
PER_ADDRESS = 6
OVERRIDES = {
    "auth": {"failed_logins": {"per_account": PER_ACCOUNT, "per_address": PER_ADDRESS}},
}
LOCKED_ACCOUNT = "Too many failed logins for this account. Wait 10 minutes, then try again."
LOCKED_ADDRESS = "Too many failed logins from your network address. Wait"
WRONG = "Invalid username or password"


class FromAddress(HTTPAdapter):
    """Connections from one loopback address (the whole of 127/8 is this machine)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def log_in(
    hub: Hub, name: str, password: str, address: str, headers: dict[str, str] | None = None
) -> requests.Response:
    """Open the login form and submit it from ``address``, as a browser does."""
    http = requests.Session()
    http.mount("http://", FromAddress(address))
    http.headers.update(headers or {})
    http.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
    xsrf = http.cookies.get("_xsrf", path="/hub/")
    return http.post(
        f"{hub.url}/hub/login",
        data={"username": name, "password": password, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub(OVERRIDES) as running:
        yield running


@needs_root
@needs_default_env
def test_failed_logins_lock_the_account_even_for_the_right_password(hub: Hub) -> None:
    password = hub.add_user("carol")
    for _ in range(PER_ACCOUNT):
        resp = log_in(hub, "carol", "guess", "127.0.0.2")
        assert resp.status_code == 403 and WRONG in resp.text
    # The right password, from another address: the account itself is locked.
    resp = log_in(hub, "carol", password, "127.0.0.3")
    assert resp.status_code == 429, resp.text
    assert LOCKED_ACCOUNT in resp.text, "the login page says why and how long"
    assert 'name="password"' in resp.text, "on the login form itself"
    assert log_in(hub, "carol", password, "127.0.0.3").status_code == 429


@needs_root
@needs_default_env
def test_a_name_without_an_account_is_answered_like_one_with_an_account(hub: Hub) -> None:
    ghost = f"ghost{secrets.token_hex(3)}"
    for _ in range(PER_ACCOUNT):
        resp = log_in(hub, ghost, "guess", "127.0.0.4")
        assert resp.status_code == 403 and WRONG in resp.text
    resp = log_in(hub, ghost, "guess", "127.0.0.4")
    assert resp.status_code == 429 and LOCKED_ACCOUNT in resp.text


@needs_root
@needs_default_env
def test_one_address_guessing_many_names_is_refused_whatever_it_claims(hub: Hub) -> None:
    password = hub.add_user("dave")
    for index in range(PER_ADDRESS):
        # Each guess claims another client address; the proxy's view is what counts.
        claimed = {"X-Real-Ip": f"10.9.0.{index}", "X-Forwarded-For": f"10.8.0.{index}"}
        resp = log_in(hub, f"name{index}", "guess", "127.0.0.5", claimed)
        assert resp.status_code == 403 and WRONG in resp.text
    resp = log_in(hub, "dave", password, "127.0.0.5", {"X-Real-Ip": "10.9.9.9"})
    assert resp.status_code == 429 and LOCKED_ADDRESS in resp.text
    assert log_in(hub, "dave", password, "127.0.0.6").status_code == 302, "others log in"


@needs_root
@needs_default_env
def test_guesses_sent_all_at_once_do_not_pass_the_limit_together(hub: Hub) -> None:
    hub.add_user("fay")
    burst = 4 * PER_ACCOUNT
    ready = threading.Barrier(burst)

    def guess(index: int) -> int:
        http = requests.Session()
        http.mount("http://", FromAddress(f"127.0.1.{index}"))
        http.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
        form = {"username": "fay", "password": f"guess{index}"}
        form["_xsrf"] = http.cookies.get("_xsrf", path="/hub/")
        ready.wait(30)
        resp = http.post(f"{hub.url}/hub/login", data=form, allow_redirects=False, timeout=60)
        return resp.status_code

    with ThreadPoolExecutor(burst) as pool:
        answers = sorted(pool.map(guess, range(1, burst + 1)))
    assert answers == [403] * PER_ACCOUNT + [429] * (burst - PER_ACCOUNT)


@needs_root
@needs_default_env
def test_a_class_behind_one_address_logs_in_at_once(hub: Hub) -> None:
    """More logins than the address's limit at the same moment, all with the right password
    (a class behind one NAT address): checks in flight wait for each other, none is refused."""
    count = 2 * PER_ADDRESS
    passwords = {f"pupil{n}": hub.add_user(f"pupil{n}") for n in range(count)}
    ready = threading.Barrier(count)

    def enter(name: str) -> int:
        http = requests.Session()
        http.mount("http://", FromAddress("127.0.3.1"))
        http.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
        form = {"username": name, "password": passwords[name]}
        form["_xsrf"] = http.cookies.get("_xsrf", path="/hub/")
        ready.wait(30)
        resp = http.post(f"{hub.url}/hub/login", data=form, allow_redirects=False, timeout=120)
        return resp.status_code

    with ThreadPoolExecutor(count) as pool:
        assert list(pool.map(enter, passwords)) == [302] * count
    assert log_in(hub, "nobody", "guess", "127.0.3.1").status_code == 403, "still counted"


def test_an_unknown_name_costs_the_same_bcrypt_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same code path: one bcrypt check, against a dummy hash for a name with no account."""
    with builtin_accounts.session(f"sqlite:///{tmp_path / 'hub.sqlite'}") as db:
        password = builtin_accounts.add(db, "erin")
        db.commit()
        authenticator = HubstackNativeAuthenticator(
            db=db, failed_logins_per_account=PER_ACCOUNT, failed_logins_per_address=10
        )
        checked: list[bytes] = []
        checkpw = bcrypt.checkpw

        def spy(given: bytes, stored: bytes) -> bool:
            checked.append(stored)
            return checkpw(given, stored)

        monkeypatch.setattr(bcrypt, "checkpw", spy)

        def attempt(name: str, guess: str) -> str | None:
            line = RequestStartLine("POST", "/hub/login", "HTTP/1.1")
            request = HTTPServerRequest(start_line=line, headers=HTTPHeaders({"Host": "hub"}))
            handler = type("Handler", (), {"request": request})()
            data = {"username": name, "password": guess}
            return asyncio.run(authenticator.authenticate(handler, data))

        stored = authenticator.get_user("erin").password
        assert attempt("nobody", "guess") is None
        assert checked == [dummy_hash()]
        assert attempt("erin", "guess") is None
        assert checked == [dummy_hash(), stored]
        assert attempt("erin", password) == "erin"
        assert checked[-1] == stored
        assert bcrypt.gensalt()[:7] == dummy_hash()[:7], "the same cost as real hashes"
        assert set(authenticator.account_failures.recent) == {"nobody"}, "counted like any failure"
        assert len(authenticator.address_failures.recent[""]) == 2, "a success is not counted"


@needs_root
def test_guessing_a_machine_accounts_password_is_limited() -> None:
    """PAM checks the password (for real: a name this machine has no account for); the hub
    counts the failures and refuses the next login however it would have gone."""
    authenticator = HubstackPAMAuthenticator(failed_logins_per_account=2)
    guess = {"username": f"hs-nobody{secrets.token_hex(3)}", "password": "guess"}

    async def attempt() -> str | None:
        return await authenticator.authenticate(None, guess)  # type: ignore[arg-type]

    assert asyncio.run(attempt()) is None
    assert asyncio.run(attempt()) is None
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(attempt())
    assert refused.value.status_code == 429 and LOCKED_ACCOUNT in str(refused.value.log_message)


def test_a_counter_without_a_limit_keeps_nothing() -> None:
    """Limits set to 0 count nothing: a flood of guesses from new names and addresses does
    not grow the hub's memory."""
    failures = Failures(0, 60.0)
    for n in range(1000):
        failures.add(f"name{n}")
    assert failures.recent == {} and failures.wait("name1") == 0
