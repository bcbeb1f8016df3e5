"""Builds wait in a bounded queue: one account cannot line up builds without end, a launch
given up takes its waiting build with it, and a build's log stays small in memory and on disk.

The cache's build lock is held by the test, so every build waits in the queue until the test
lets go: nothing depends on how long a build takes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from system.test_builds import Site, site

from hubstack.envs.repository import Prepared, PrepareFailed, Repositories
from hubstack.launch.repo import repo_source
from hubstack.system import cgroups

__all__ = ["site"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")


class Launches:
    """Launches of repositories by named owners, each with its own event list."""

    def __init__(self, site: Site, **limits: object) -> None:
        self.site = site
        self.config = site.config(**limits)
        self.repositories = Repositories(self.config, cgroups.detect())
        self.events: dict[str, list[tuple[str, str]]] = {}

    def start(self, owner: str, name: str) -> asyncio.Task[Prepared]:
        source = repo_source(self.site.git.url(name), "main", self.config.binder)
        events = self.events.setdefault(name, [])

        def phase(step: str, message: str) -> None:
            events.append((step, message))

        return asyncio.ensure_future(self.repositories.prepare(source, phase, owner=owner))

    def waiting(self, name: str) -> Callable[[], bool]:
        return lambda: any("Waiting" in message for _, message in self.events.get(name, []))


async def until(check: Callable[[], bool], what: str) -> None:
    """``hubtest.wait_for`` for a check that needs the event loop to move on meanwhile."""
    await asyncio.wait_for(_poll(check), 120)
    assert check(), what


async def _poll(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.05)


def test_the_queue_refuses_a_third_build_of_one_account_and_a_full_hub(site: Site) -> None:
    names = [site.repo({"requirements.txt": f"# queue {i}\n"}) for i in range(5)]
    launches = Launches(site, queued_per_user=2, queued=3)
    lock = launches.repositories.cache.acquire_build_lock()

    async def scenario() -> tuple[str, str]:
        tasks = [launches.start("alice", names[0]), launches.start("alice", names[1])]
        for name in names[:2]:
            await until(launches.waiting(name), f"{name} queued")
        with pytest.raises(PrepareFailed) as mine:
            await launches.start("alice", names[2])
        tasks.append(launches.start("bob", names[3]))
        await until(launches.waiting(names[3]), "bob's build queued")
        with pytest.raises(PrepareFailed) as full:
            await launches.start("carol", names[4])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return mine.value.message, full.value.message

    try:
        mine, full = asyncio.run(scenario())
    finally:
        lock.close()
    assert mine.startswith("You already have 2 builds waiting")
    assert "3 builds are waiting" in full


def test_a_launch_given_up_takes_its_waiting_build_with_it(site: Site) -> None:
    given_up = site.repo({"requirements.txt": "# given up\n"})
    kept = site.repo({"requirements.txt": "# kept\n"})
    launches = Launches(site)
    cache = launches.repositories.cache
    lock = cache.acquire_build_lock()
    cache.logs.mkdir(parents=True, exist_ok=True)
    before = {path.stem for path in cache.logs.iterdir()}

    async def scenario() -> Prepared:
        abandoned = launches.start("alice", given_up)
        await until(launches.waiting(given_up), "queued")
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        waiting = launches.start("bob", kept)
        await until(launches.waiting(kept), "queued")
        lock.close()
        return await waiting

    try:
        prepared = asyncio.run(scenario())
    finally:
        lock.close()
    layers = {layer.key for layer in cache.layers()}  # the first build may make one
    assert {path.stem for path in cache.logs.iterdir()} - before - layers == {prepared.env.key}
    assert not any(
        message.startswith("Building the environment") for _, message in launches.events[given_up]
    )
    assert [env.key for env in cache.list() if env.repo.endswith(given_up)] == []


def test_a_build_log_is_capped_per_line_and_on_disk(site: Site) -> None:
    noisy = (
        "#!/bin/sh\npython3 -c \"print('x' * 1_000_000)\"\n"
        'python3 -c "import sys\nfor i in range(12_000): print(str(i) * 300)"\n'
    )
    prepared, events = site.prepare(site.repo({"postBuild": noisy}, executable=("postBuild",)))
    assert max(len(message) for _, message in events) <= 2000
    log = site.root / "binder/logs" / f"{prepared.env.key}.log"
    assert 9 * 1024**2 < log.stat().st_size <= 10 * 1024**2 + 4096
    assert log.read_text().splitlines()[-1].startswith("(log truncated")
