"""The log filter's redaction, on the forms a token takes in the hub's log lines."""

from __future__ import annotations

import logging
import sys

import pytest

from hubstack.hub.logs import QuietExpected, RedactSecrets, redact

SECRET = "c4n4ry5ecret"


@pytest.mark.parametrize(
    "line",
    [
        f"403 GET /hub/api/users?token={SECRET} (127.0.0.1): Missing or invalid credentials.",
        f"404 GET /services/binder/x?a=1&access_token={SECRET}&b=2 (127.0.0.1)",
        f"302 GET /hub/home -> /hub/login?next=%2Fhub%2Fhome%3Ftoken%3D{SECRET} (@127.0.0.1)",
        f"302 GET /x -> /hub/login?next=%2Fx%3Fa%3D1%26token%3D{SECRET}%26b%3D2",
        f"redirect to /a?next=%252Fb%253Ftoken%253D{SECRET}",
        f"GET /services/binder/build/gh/o/r/main?_xsrf={SECRET}",
        f'headers: {{"Authorization": "token {SECRET}", "Accept": "*/*"}}',
        f"Authorization: Bearer {SECRET}",
    ],
)
def test_secrets_are_redacted(line: str) -> None:
    clean = redact(line)
    assert SECRET not in clean
    assert "[secret]" in clean


def test_other_text_is_left_alone() -> None:
    line = "200 GET /hub/spawn?machine=small&ref=main (alice@127.0.0.1) exit code 1"
    assert redact(line) == line


def test_the_filters_rewrite_records() -> None:
    record = logging.LogRecord(
        "JupyterHub", logging.WARNING, "web", 1, "%d GET %s", (403, f"/?token={SECRET}"), None
    )
    assert RedactSecrets().filter(record)
    assert record.getMessage() == "403 GET /?token=[secret]"

    class Quiet(Exception):
        log_quietly = True

    try:
        raise Quiet("a link fills in the form")
    except Quiet:
        record = logging.LogRecord(
            "JupyterHub", logging.ERROR, "pages", 1, "Failed", (), sys.exc_info()
        )
    assert QuietExpected().filter(record)
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert record.getMessage() == "Failed: a link fills in the form"
