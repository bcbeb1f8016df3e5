"""``hubstack status``'s screen from given data: what a user or the scheduler wrote cannot
drive the operator's terminal."""

from __future__ import annotations

from hubstack.config.load import validate
from hubstack.hub.status import notice_lines, printable, server_lines


def test_control_characters_are_shown_not_sent() -> None:
    assert printable("ok\x1b[2J\x07 done") == "ok?[2J? done"
    states = [("ann", "", {"notices": [{"time": "2026-12-06T05:00:00+00:00", "message": "x"}]})]
    assert notice_lines(states)[1] == "  2026-12-06 05:00  ann/(default): x"


def test_servers_as_a_table() -> None:
    users = [
        {
            "name": "ann",
            "servers": {
                "": {"ready": True, "user_options": {"machine": "small", "environment": "py"}},
                "gpu": {"ready": False, "pending": "spawn", "user_options": {}},
            },
        }
    ]
    lines = server_lines(validate({}), users)
    assert lines[0] == "Servers on the local backend: 2"
    assert lines[2].split() == ["ann", "(default)", "small", "py", "ready"]
    assert lines[3].split() == ["ann", "gpu", "spawn"]
