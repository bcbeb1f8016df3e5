"""A user's files never stall or exhaust the hub: a FIFO or a link to /dev/zero where the hub
keeps the mark of a repository's checkout leaves it answering, and the launch still works."""

from __future__ import annotations

import concurrent.futures
import secrets
from typing import Any

import pytest
import requests
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, make_repo
from hubtest import Hub, Session

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

PLANT = {
    # open() of a FIFO blocks until someone writes to it: forever.
    "fifo": "os.mkfifo(mark)",
    # read() of /dev/zero never ends and fills memory.
    "zero": "os.symlink('/dev/zero', mark)",
}


@pytest.fixture(scope="module")
def grace(hub: Hub) -> Session:
    return hub.new_user("grace")


@pytest.fixture(scope="module")
def repository(git: GitDaemon) -> str:
    name = f"r{secrets.token_hex(3)}"
    make_repo(git.base / name, {"data.txt": "from the repository\n"})
    return name


def start_while_hub_answers(hub: Hub, session: Session, server: str, sent: dict[str, Any]) -> int:
    """Start ``server`` and, for as long as the start request runs, check again and again
    that the hub answers its API within a few seconds; return the start's status code."""
    answered = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(session.start, server, sent)
        while not started.done():
            assert requests.get(f"{hub.url}/hub/api/", timeout=5).status_code == 200
            answered += 1
            concurrent.futures.wait([started], timeout=0.2)
        assert answered, "the start ended before the hub could be asked"
        return started.result().status_code


@pytest.mark.parametrize("kind", sorted(PLANT))
def test_a_planted_mark_neither_stalls_the_hub_nor_breaks_the_launch(
    hub: Hub, git: GitDaemon, grace: Session, repository: str, kind: str
) -> None:
    server = f"mark-{kind}"
    sent = {"environment": "repository", "repo": git.url(repository), "ref": "main"}
    assert grace.start(server, sent).status_code in (201, 202)
    grace.wait_ready(server, timeout=600)
    model = grace.model(server)
    assert model is not None
    plant = grace.run_code(
        "import os\n"
        "marks = os.path.join(os.environ['HUBSTACK_VOLUME'], '.hubstack/checkouts')\n"
        f"mark = os.path.join(marks, {repository!r})\n"
        "os.remove(mark)\n"
        f"{PLANT[kind]}\n"
        "print('planted')",
        server,
    )
    assert plant.stdout.strip() == "planted", plant
    grace.stop(server)

    status = start_while_hub_answers(hub, grace, server, model["user_options"])
    assert status in (201, 202)
    grace.wait_ready(server, timeout=300)
    run = grace.run_code("print(open('data.txt').read().strip())", server)
    assert run.stdout.strip() == "from the repository", run
    grace.stop(server, remove=True)
