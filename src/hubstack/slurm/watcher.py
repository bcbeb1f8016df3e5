"""One watcher for every Slurm job the hub tracks: one ``squeue`` per interval, for all.

JupyterHub polls each spawner on its own; asking the scheduler from each of those polls
would grow the scheduler's load with the number of servers. Spawners read the watcher's
last answer instead, so the scheduler sees one query per interval (shorter while any job
waits to start), however many servers there are. A failed query leaves every job as
last seen and marks it *unknown*: a scheduler that does not answer is never taken to mean
that a job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from hubstack.slurm.client import JobInfo, Slurm, SlurmError, is_active

log = logging.getLogger("hubstack.slurm")


@dataclass
class Tracked:
    """What the watcher knows of one job; ``changed`` fires after every query.

    ``urgent`` (set by the backend while a server starts or stops) polls as often as pending.
    """

    job_id: str
    info: JobInfo | None = None
    gone: bool = False
    urgent: bool = False
    unknown_since: float | None = None
    first_answer: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        """Still queued or running (or not seen yet, or the scheduler is not answering)."""
        if self.gone:
            return False
        return self.info is None or is_active(self.info.state)

    @property
    def pending(self) -> bool:
        return self.info is not None and self.info.state == "PENDING"


class JobWatcher:
    """Tracks jobs by id with one shared polling task on the hub's event loop."""

    def __init__(
        self, slurm: Slurm, interval: float, pending_interval: float, unknown_grace: float
    ) -> None:
        self.slurm = slurm
        self.interval = interval
        self.pending_interval = pending_interval
        self.unknown_grace = unknown_grace
        self.jobs: dict[str, Tracked] = {}
        # When queries began to fail (None: the last one was answered), for the alert.
        self.failing_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def track(self, job_id: str) -> Tracked:
        """Start (or keep) watching ``job_id``; a new job is queried right away.

        Tracking a known job changes nothing: spawners call this on every poll, and
        those polls must not turn into scheduler queries.
        """
        tracked = self.jobs.get(job_id)
        if tracked is None:
            tracked = self.jobs[job_id] = Tracked(job_id)
            self.wake()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return tracked

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def wake(self) -> None:
        """Query now rather than at the end of the interval (after a submit or cancel)."""
        self._wake.set()

    async def _run(self) -> None:
        while self.jobs:
            self._wake.clear()
            await self.refresh()
            pending = any(t.pending or t.urgent or t.info is None for t in self.jobs.values())
            delay = self.pending_interval if pending else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def refresh(self) -> None:
        """One query for every tracked job, then wake whoever waits on any of them."""
        tracked = [t for t in self.jobs.values() if not t.gone]
        if not tracked:
            return
        try:
            found = await self.slurm.queue([t.job_id for t in tracked])
        except SlurmError as exc:
            now = time.monotonic()
            if self.failing_since is None:
                self.failing_since = now
            for t in tracked:
                if t.unknown_since is None:
                    t.unknown_since = now
                elif now - t.unknown_since > self.unknown_grace:
                    log.warning("job %s: the scheduler has not answered for a while", t.job_id)
            log.warning("squeue failed; keeping %d job(s) as last seen: %s", len(tracked), exc)
        else:
            self.failing_since = None
            for t in tracked:
                t.unknown_since = None
                t.info = found.get(t.job_id, t.info)
                # A job squeue no longer lists has ended (it was purged after MinJobAge).
                t.gone = t.job_id not in found
        for t in tracked:
            t.first_answer.set()
            t.changed.set()
