"""Shared folders on a real hub with real local servers: what kernels of a group's
champion, member and outsider see at ~/shared, a full folder, and a member removed from
the group losing it at the next start."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import Hub, Session, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

GROUP, OTHER = "sflab", "sfother"

# What a kernel finds: each probe is (name, Python expression) reported as value or error.
PROBE = """
import grp, json, os
def probe(f):
    try:
        return {"ok": f()}
    except OSError as exc:
        return {"errno": exc.errno}
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return True
home = os.path.expanduser("~")
print(json.dumps({name: probe(f) for name, f in CHECKS.items()}))
"""


def probe(session: Session, checks: str) -> dict[str, dict[str, object]]:
    """Run ``checks`` (a dict literal of name -> lambda) in a kernel of ``session``."""
    run = session.run_code(f"CHECKS = {checks}\n{PROBE}")
    assert run.status == "ok", run.error
    result: dict[str, dict[str, object]] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    overrides = {
        "groups": {GROUP: {"shared": {"quota": "8M"}}, OTHER: {"shared": {"quota": "8M"}}},
        "policy": {"shared": {"everyone": {"quota": "8M"}}},
    }
    with running_hub(overrides) as running:
        yield running


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    return hub.login("admin", hub.admin_password)


def set_groups(admin: Session, user: str, groups: list[str], *, leave: list[str] = ()) -> None:
    """Put ``user`` in ``groups`` and out of ``leave`` through JupyterHub's REST API."""
    for group in [*groups, *leave]:
        created = admin.api("POST", f"/groups/{group}")
        assert created.status_code in (201, 409), created.text
    for group in groups:
        added = admin.api("POST", f"/groups/{group}/users", json={"users": [user]})
        assert added.status_code == 200, added.text
    for group in leave:
        removed = admin.api("DELETE", f"/groups/{group}/users", json={"users": [user]})
        assert removed.status_code == 200, removed.text


@pytest.fixture(scope="module")
def people(hub: Hub, admin: Session) -> dict[str, Session]:
    """A champion and a member of GROUP and a member of OTHER, with servers started."""
    found = {role: hub.new_user(f"sf{role}") for role in ("champ", "mem", "out")}
    set_groups(admin, found["champ"].name, [f"{GROUP}-champions"])
    set_groups(admin, found["mem"].name, [GROUP])
    set_groups(admin, found["out"].name, [OTHER])
    for session in found.values():
        assert session.start().status_code in (201, 202)
        session.wait_ready()
    return found


GROUPS = '"groups": lambda: sorted(grp.getgrgid(g).gr_name for g in os.getgroups())'


def ours(hub: Hub, probed: dict[str, dict[str, object]]) -> set[str]:
    """The kernel's groups of this hub (its account's own and its folders'), unprefixed."""
    names = probed["groups"]["ok"]
    assert isinstance(names, list)
    return {n.removeprefix(hub.prefix) for n in names if n.startswith(hub.prefix)}


def test_champion_writes_member_reads_outsider_sees_nothing(
    hub: Hub, people: dict[str, Session]
) -> None:
    wrote = probe(
        people["champ"],
        '{"write": lambda: write(home + "/shared/sflab/notes.txt", "from the champion"),'
        ' "everyone": lambda: write(home + "/shared/everyone/x", "not an admin"),'
        f" {GROUPS}}}",
    )
    assert wrote["write"] == {"ok": True}
    assert "errno" in wrote["everyone"], "only admins write shared/everyone"
    assert ours(hub, wrote) == {"sfchamp", "sflab_r", "sflab_w"}

    seen = probe(
        people["mem"],
        '{"read": lambda: open(home + "/shared/sflab/notes.txt").read(),'
        ' "write": lambda: write(home + "/shared/sflab/mine.txt", "member"),'
        ' "overwrite": lambda: write(home + "/shared/sflab/notes.txt", "member"),'
        ' "everyone": lambda: os.listdir(home + "/shared/everyone"),'
        ' "folders": lambda: sorted(os.listdir(home + "/shared"))}',
    )
    assert seen["read"] == {"ok": "from the champion"}
    assert "errno" in seen["write"] and "errno" in seen["overwrite"]
    assert seen["folders"] == {"ok": ["everyone", GROUP]}
    assert "ok" in seen["everyone"]

    outside = probe(
        people["out"],
        f'{{"folders": lambda: sorted(os.listdir(home + "/shared")), {GROUPS}}}',
    )
    assert outside["folders"] == {"ok": ["everyone", OTHER]}
    assert ours(hub, outside) == {"sfout", "sfother_r"}


def test_a_full_folder_stops_its_writer_only(people: dict[str, Session]) -> None:
    champion = people["champ"]
    result = probe(
        champion,
        '{"fill": lambda: write(home + "/shared/sflab/big", "x" * (16 * 2**20)),'
        ' "home": lambda: write(home + "/after-full.txt", "still fine"),'
        ' "read": lambda: open(home + "/shared/sflab/notes.txt").read(),'
        ' "free": lambda: os.remove(home + "/shared/sflab/big")}',
    )
    assert result["fill"] == {"errno": 28}, "ENOSPC for the writer"
    assert result["home"] == {"ok": True}
    assert result["read"] == {"ok": "from the champion"}
    assert result["free"] == {"ok": None}, "the writer can make room again"
    model = champion.model()
    assert model is not None and model["ready"], "the server still runs"


def test_folders_and_membership_survive_kill_of_the_hub(
    hub: Hub, people: dict[str, Session]
) -> None:
    """The folders' state is on disk (images, the group file): a crash loses none of it."""
    kill_hub(hub)
    hub.start()
    champion = people["champ"]
    wait_for(lambda: champion.model() is not None, 60, "the champion's server to be taken back")
    running = probe(champion, '{"read": lambda: open(home + "/shared/sflab/notes.txt").read()}')
    assert running["read"] == {"ok": "from the champion"}

    champion.stop()
    assert champion.start().status_code in (201, 202)
    champion.wait_ready()
    again = probe(
        champion,
        f'{{"write": lambda: write(home + "/shared/sflab/after-crash.txt", "kept"), {GROUPS}}}',
    )
    assert again["write"] == {"ok": True}
    assert ours(hub, again) == {"sfchamp", "sflab_r", "sflab_w"}


def test_a_removed_member_loses_the_folder_at_the_next_start(
    hub: Hub, admin: Session, people: dict[str, Session]
) -> None:
    member = people["mem"]
    set_groups(admin, member.name, [], leave=[GROUP])
    still = probe(member, '{"read": lambda: open(home + "/shared/sflab/notes.txt").read()}')
    assert still["read"] == {"ok": "from the champion"}, "a running server keeps what it had"

    member.stop()
    assert member.start().status_code in (201, 202)
    member.wait_ready()
    after = probe(
        member,
        f'{{"folders": lambda: sorted(os.listdir(home + "/shared")), {GROUPS}}}',
    )
    assert after["folders"] == {"ok": ["everyone"]}
    assert ours(hub, after) == {"sfmem"}
