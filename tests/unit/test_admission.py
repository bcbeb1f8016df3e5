"""Admission of starts: the first ``limit`` run, the rest wait in order and see their place."""

from __future__ import annotations

import asyncio

import pytest

from hubstack.backends.admission import Admission, default_limit
from hubstack.backends.base import StartFailed


class Start:
    """One start: the messages its progress stream got, and a gate the test opens."""

    def __init__(self, admission: Admission, patience: float = 60) -> None:
        self.messages: list[str] = []
        self.running = asyncio.Event()
        self.finish = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(admission, patience))

    async def _run(self, admission: Admission, patience: float) -> None:
        async with admission.turn(self.messages.append, patience):
            self.running.set()
            await self.finish.wait()


async def settle() -> None:
    """Let every task run until it waits on something the test controls."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_default_is_one_start_per_cpu() -> None:
    assert Admission().limit == default_limit() >= 1


async def _test_starts_beyond_the_limit_wait_in_order_and_see_their_place() -> None:
    admission = Admission(2)
    starts = [Start(admission) for _ in range(5)]
    await settle()
    assert [s.running.is_set() for s in starts] == [True, True, False, False, False]
    assert starts[0].messages == starts[1].messages == []
    assert starts[2].messages == ["Waiting to start: you are next"]
    assert starts[4].messages == ["Waiting to start: 2 ahead of you"]

    starts[1].finish.set()
    await settle()
    assert [s.running.is_set() for s in starts] == [True, True, True, False, False]
    assert starts[3].messages[-1] == "Waiting to start: you are next"
    assert starts[4].messages == [
        "Waiting to start: 2 ahead of you",
        "Waiting to start: 1 ahead of you",
    ]
    for start in starts:
        start.finish.set()
    await asyncio.gather(*(s.task for s in starts))
    assert admission.running == 0 and not admission.waiting


async def _test_a_cancelled_start_leaves_the_line_and_frees_nothing_it_did_not_hold() -> None:
    admission = Admission(1)
    first, second, third = (Start(admission) for _ in range(3))
    await settle()
    second.task.cancel()
    await settle()
    assert third.messages[-1] == "Waiting to start: you are next"
    assert admission.running == 1 and not third.running.is_set()

    first.finish.set()
    await settle()
    assert third.running.is_set()
    third.finish.set()
    await third.task
    assert admission.running == 0


async def _test_a_start_cancelled_as_its_turn_came_passes_the_turn_on() -> None:
    admission = Admission(1)
    first, second, third = (Start(admission) for _ in range(3))
    await settle()
    first.finish.set()
    await first.task  # admits the second, which has not run yet
    second.task.cancel()
    await settle()
    assert third.running.is_set()
    assert admission.running == 1


def test_starts_beyond_the_limit_wait_in_order_and_see_their_place() -> None:
    asyncio.run(_test_starts_beyond_the_limit_wait_in_order_and_see_their_place())


def test_a_cancelled_start_leaves_the_line_and_frees_nothing_it_did_not_hold() -> None:
    asyncio.run(_test_a_cancelled_start_leaves_the_line_and_frees_nothing_it_did_not_hold())


def test_a_start_cancelled_as_its_turn_came_passes_the_turn_on() -> None:
    asyncio.run(_test_a_start_cancelled_as_its_turn_came_passes_the_turn_on())


async def _test_a_start_that_waits_too_long_fails_saying_why_and_leaves_the_line() -> None:
    admission = Admission(1)
    first = Start(admission)
    impatient = Start(admission, patience=0.05)
    last = Start(admission)
    with pytest.raises(StartFailed, match="waited 0s in line without its turn") as failed:
        await impatient.task
    assert failed.value.reason == "queue"
    assert last.messages[-1] == "Waiting to start: you are next"
    first.finish.set()
    await settle()
    assert last.running.is_set()
    last.finish.set()
    await asyncio.gather(first.task, last.task)
    assert admission.running == 0 and not admission.waiting


def test_a_start_that_waits_too_long_fails_saying_why_and_leaves_the_line() -> None:
    asyncio.run(_test_a_start_that_waits_too_long_fails_saying_why_and_leaves_the_line())
