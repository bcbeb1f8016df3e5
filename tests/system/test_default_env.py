"""The default environment as scripts/setup.sh installs it, seen by the users who run it."""

from __future__ import annotations

from hubtest import DEFAULT_ENV, startup_facts


def test_the_server_code_is_compiled_and_the_slow_import_left_out() -> None:
    assert startup_facts(DEFAULT_ENV / "bin/python") == {
        "compiled": True,
        "rfc3987_syntax": False,
    }
