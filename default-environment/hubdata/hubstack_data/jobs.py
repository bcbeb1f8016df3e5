"""Copies as Slurm jobs (``hubdata cp --job``): the hub submits them, the job runs the copy
and reports its progress to the hub, where ``hubdata jobs``, ``hubdata status`` and the
hub's Storage page show it.

In the job, the hub's token for it arrives on standard input (the job script takes it out
of the environment first) and is kept in this process's memory: setting it in
``os.environ`` after the start leaves the environment the kernel shows for the process
(``ps e``, /proc/PID/environ) without it. The connection's credential is asked from the
hub with that token, as in servers.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hubstack_data import copy
from hubstack_data.connection import UNREACHABLE, ConnectionError_, hub_request

# How often a running job tells the hub its progress, and how long it tries to report its
# end to a hub that cannot be reached (restarting).
REPORT_EVERY = 1.0
END_REPORT_WAIT = 600.0


def submit(
    source: str,
    destination: str,
    recursive: bool,
    checksum: bool,
    machine: str | None = None,
    partition: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": source,
        "destination": destination,
        "workdir": os.getcwd(),
        "recursive": recursive,
        "checksum": checksum,
    }
    # Left out when not chosen: the hub's defaults.
    body |= {k: v for k, v in (("machine", machine), ("partition", partition)) if v}
    return hub_request("jobs", "POST", body)


def listed() -> list[dict[str, Any]]:
    return list(hub_request("jobs")["jobs"])


def status(job_id: str) -> dict[str, Any]:
    return hub_request(f"jobs/{int(job_id)}")


def cancel(job_id: str) -> None:
    hub_request(f"jobs/{int(job_id)}", "DELETE")


def line(job: dict[str, Any]) -> str:
    """One job in a line: id, state, files and bytes done of total, what it copies."""
    files = f"{job['files_done']}/{job['files_total'] if job['files_total'] is not None else '?'}"
    size = f"{job['bytes_done']}/{job['bytes_total'] if job['bytes_total'] is not None else '?'}"
    text = f"{job['id']}\t{job['state']}\t{files} files\t{size} bytes\t"
    text += f"{job['source']} -> {job['destination']}"
    if job.get("machine"):
        where = f" (partition {job['partition']})" if job.get("partition") else ""
        text += f"\ton {job['machine']}{where}"
    return text + (f"\t{job['error']}" if job["error"] else "")


class Reporter:
    """Counts what the copy has done (from its worker threads) and tells the hub."""

    def __init__(self, job_id: str) -> None:
        self.path = f"jobs/{int(job_id)}"
        self.lock = threading.Lock()
        self.counts = {"files_done": 0, "files_total": 0, "bytes_done": 0, "bytes_total": 0}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, items: list[copy.Item]) -> None:
        self.counts |= {"files_total": len(items), "bytes_total": sum(i.size for i in items)}
        self.send("running")
        self.thread.start()

    def add_bytes(self, count: int) -> None:
        with self.lock:
            self.counts["bytes_done"] += count

    def add_file(self, item: copy.Item) -> None:
        with self.lock:
            self.counts["files_done"] += 1

    def send(self, state: str, error: str = "") -> None:
        with self.lock:
            body = {"state": state, **self.counts, "error": error}
        hub_request(self.path, "POST", body)

    def _loop(self) -> None:
        while not self.stopped.wait(REPORT_EVERY):
            try:
                self.send("running")
            except Exception as exc:  # the hub restarting: the next report goes through
                print(f"hubdata: progress not reported: {exc}", file=sys.stderr)

    def end(self, state: str, error: str = "") -> None:
        """Report the end, waiting out a hub that restarts meanwhile (its record of the
        job is kept): otherwise the hub would later find the job gone and call it failed."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        deadline = time.monotonic() + END_REPORT_WAIT
        while True:
            try:
                self.send(state, error)
                return
            except ConnectionError_ as exc:
                if not str(exc).startswith(UNREACHABLE) or time.monotonic() > deadline:
                    raise
                print(f"hubdata: end not reported yet: {exc}", file=sys.stderr)
                self.stopped.wait(2)


def run_job(copy_with: Callable[[dict[str, Any], Reporter], int]) -> int:
    """The job's side: take the token, ask the hub what to copy, copy with progress
    reports, and report the end; ``copy_with`` is hubdata's copy (the CLI's, whose error
    messages it keeps) and returns the exit status, raising for an error."""
    os.environ["JUPYTERHUB_API_TOKEN"] = sys.stdin.readline().strip()
    job_id = os.environ["HUBSTACK_COPY_JOB"]
    spec = status(job_id)
    reporter = Reporter(job_id)
    return copy_with(spec, reporter)
