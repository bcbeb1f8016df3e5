"""Admission of server starts: at most so many at once, the rest wait their turn in order.

A server start is CPU-bound (Jupyter Server, JupyterLab and a kernel import for seconds),
so a class whose members all start at once makes every start slow, and all of them may
time out together. Here the first ``limit`` starts run and the others queue, first come
first served, each told its place in the line through its progress stream. A start that
is cancelled (its user stopped it, or it timed out) leaves the line at once.

asyncio.Semaphore would bound the starts too, but cannot say how many wait ahead of whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hubstack.backends.base import Emit, StartFailed
from hubstack.units import format_duration


def default_limit() -> int:
    """The CPUs this hub may use: one start per CPU keeps each start at full speed."""
    return max(1, len(os.sched_getaffinity(0)))


def position_message(ahead: int) -> str:
    if ahead == 0:
        return "Waiting to start: you are next"
    return f"Waiting to start: {ahead} ahead of you"


@dataclass(eq=False)
class _Waiter:
    emit: Emit
    admitted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    told: int | None = None

    def tell(self, ahead: int) -> None:
        """Show the place in line, once per change."""
        if ahead != self.told:
            self.told = ahead
            self.emit(position_message(ahead))


class Admission:
    """Let at most ``limit`` starts run at once (None: :func:`default_limit`)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or default_limit()
        self.running = 0
        self.waiting: list[_Waiter] = []

    @contextlib.asynccontextmanager
    async def turn(self, emit: Emit, patience: float) -> AsyncIterator[None]:
        """Wait for this start's turn (telling ``emit`` the place in line), run, pass it on.

        A start that has not had its turn after ``patience`` seconds fails, saying why.
        """
        try:
            # asyncio.timeout cancels this task itself (wait_for would run _enter in a
            # task of its own, and a turn given just as it timed out could be lost).
            async with asyncio.timeout(patience):
                await self._enter(emit)
        except TimeoutError:
            raise StartFailed(
                f"The hub is starting many servers at once, and yours waited "
                f"{format_duration(round(patience))} in line without its turn. "
                "Try again in a few minutes.",
                reason="queue",
            ) from None
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, emit: Emit) -> None:
        if self.running < self.limit and not self.waiting:
            self.running += 1
            return
        waiter = _Waiter(emit)
        self.waiting.append(waiter)
        waiter.tell(len(self.waiting) - 1)
        try:
            await waiter.admitted
        except asyncio.CancelledError:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self._leave()  # admitted just as it was cancelled: the turn goes on
            else:
                self.waiting.remove(waiter)
                self._tell_places()
            raise

    def _leave(self) -> None:
        self.running -= 1
        while self.waiting and self.running < self.limit:
            self.running += 1
            self.waiting.pop(0).admitted.set_result(None)
        self._tell_places()

    def _tell_places(self) -> None:
        for ahead, waiter in enumerate(self.waiting):
            waiter.tell(ahead)
