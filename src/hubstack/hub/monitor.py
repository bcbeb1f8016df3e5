"""The hub's watch over itself: every ``alerts.check_interval`` it measures the disks it
keeps (for the storage metrics) and turns what it sees into alerts (``hub.alerts``).

Runs as a task on the hub's event loop; everything that may block (``statvfs`` on a slow
file system, walking the volume images) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubstack.cluster.nodes import Programs
from hubstack.cluster.reconcile import reconcile
from hubstack.cluster.records import NodeRecord
from hubstack.config import Config
from hubstack.hub import metrics
from hubstack.hub.alerts import Alert, Incidents, Notifier

log = logging.getLogger("hubstack.monitor")
STATE_FILE = "alerts.json"


@dataclass(frozen=True)
class Disk:
    """A file system the hub keeps something on, and how full it is."""

    role: str
    path: Path
    used: int
    size: int

    @property
    def percent(self) -> float:
        return 100 * self.used / self.size if self.size else 0.0


def watched_paths(config: Config) -> list[tuple[str, Path]]:
    """The hub's data dir, the binder root, the homes and the extra ``alerts.disks``."""
    paths = [("data_dir", config.hub.data_dir)]
    if config.binder.enabled:
        paths.append(("binder_root", config.binder.root))
    if config.backend.type == "local":
        paths.append(("homes", config.backend.local.home_base))
    paths += [("extra", path) for path in config.alerts.disks]
    return paths


def measure_disks(paths: list[tuple[str, Path]]) -> list[Disk]:
    """How full each path's file system is (paths not there yet are left out)."""
    disks = []
    for role, path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        # As df counts: blocks reserved for root are not space the hub's users can fill.
        size = used + st.f_bavail * st.f_frsize
        disks.append(Disk(role, path, used, size))
    return disks


def allocated_bytes(folder: Path) -> int:
    """Disk space the files below ``folder`` (root's own) take, links not followed."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += allocated_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


class Monitor:
    """Measures and checks; ``scheduler_silent`` says for how long the scheduler has not
    answered (None: it answers, or there is none)."""

    def __init__(
        self, config: Config, scheduler_silent: Callable[[], float | None] = lambda: None
    ) -> None:
        self.config = config
        self.settings = config.alerts
        self.scheduler_silent = scheduler_silent
        hub = config.hub
        url = f"http://{hub.bind}{hub.base_url}"
        self.incidents = Incidents(Notifier(self.settings, url), hub.data_dir / STATE_FILE)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a failed round must not end the watch
                log.exception("monitor: a check failed")
            await asyncio.sleep(self.settings.check_interval)

    async def check(self) -> None:
        disks = await asyncio.to_thread(measure_disks, watched_paths(self.config))
        volumes = await asyncio.to_thread(allocated_bytes, self.config.hub.data_dir / "storage")
        metrics.VOLUMES_ALLOCATED.set(volumes)
        for disk in disks:
            metrics.STORAGE_USED.labels(disk.role, str(disk.path)).set(disk.used)
            metrics.STORAGE_SIZE.labels(disk.role, str(disk.path)).set(disk.size)
        out: dict[str, NodeRecord] = {}
        if self.config.cluster.node_groups:
            out = await asyncio.to_thread(self._reconcile)
        await self.incidents.update(self.alerts(disks) + self._node_alerts(out))
        metrics.MONITOR_CHECKS.inc()

    def _reconcile(self) -> dict[str, NodeRecord]:
        """One pass of the elastic cluster's reconciler, logged; the nodes still out of
        service (failed, or refused for a spent budget)."""
        programs = Programs(self.config)
        for finding in reconcile(programs):
            log.warning("cluster: %s: %s; %s", finding.node, finding.found, finding.done)
        nodes = programs.records.read().nodes
        return {name: n for name, n in nodes.items() if n.state in ("failed", "refused")}

    def _node_alerts(self, out: dict[str, NodeRecord]) -> list[Alert]:
        failed = {name: n.reason or "" for name, n in out.items() if n.state == "failed"}
        spent = sorted({n.reason or "" for n in out.values() if n.state == "refused"})
        alerts = []
        if spent:
            alerts.append(
                Alert(
                    "cluster-budget-spent",
                    "cluster-budget-spent",
                    f"elastic nodes were refused: {'; '.join(spent)}",
                    "Jobs on these groups' partitions wait until the period resets, when "
                    "hubstack returns the nodes; raise the group's budget in hubstack.yaml "
                    "to return them at the next monitor round.",
                )
            )
        if not failed:
            return alerts
        retry = self.config.cluster.retry_failed_after
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
        return [
            *alerts,
            Alert(
                "cluster-nodes-failed",
                "cluster-nodes-failed",
                f"{len(failed)} elastic node(s) failed to boot ({listed})",
                f"hubstack returns each to service {retry / 60:.0f} min after its failure and "
                "Slurm runs their jobs on other nodes meanwhile; if boots keep failing, read "
                "`hubstack cluster status` and the provider's own log.",
            ),
        ]

    def alerts(self, disks: list[Disk]) -> list[Alert]:
        """Every condition true now."""
        s = self.settings
        found = [self._disk_alert(disk) for disk in disks if disk.percent > s.disk_percent]
        silent = self.scheduler_silent()
        grace = self.config.backend.slurm.unknown_grace
        if silent is not None and silent > grace:
            found.append(
                Alert(
                    "scheduler-unreachable",
                    "scheduler-unreachable",
                    f"The Slurm scheduler has not answered squeue for {silent / 60:.0f} min",
                    "Check that slurmctld runs and answers from the hub's machine "
                    "(`scontrol ping`, `squeue`, munge). Jobs are kept as last seen meanwhile; "
                    "starts wait and no server is taken for ended.",
                )
            )
        failed, total = metrics.RECENT.spawn_failures(s.spawn_failure_window)
        if total >= s.spawn_failure_min and failed / total > s.spawn_failure_rate:
            found.append(
                Alert(
                    "spawn-failures",
                    "spawn-failures",
                    f"{failed} of the last {total} server starts failed "
                    f"(within {s.spawn_failure_window / 60:.0f} min)",
                    "Run `hubstack status` for the recent failures and their causes, then read "
                    "the hub's log around them; a full disk, a missing environment or an "
                    "unreachable scheduler are the usual ones.",
                )
            )
        waited = metrics.RECENT.oldest_queued_build()
        if waited is not None and waited > s.build_queue_stuck:
            found.append(
                Alert(
                    "build-queue-stuck",
                    "build-queue-stuck",
                    f"An environment build has waited {waited / 60:.0f} min to start",
                    "Builds run one at a time: see `hubstack env list` and the hub's log for the "
                    "build that holds the queue (a `hubstack env rebuild` from the command line "
                    "holds it too); if one hangs, restart the hub.",
                )
            )
        restarts = metrics.RECENT.proxy_restarts_within(s.spawn_failure_window)
        if restarts:
            found.append(
                Alert(
                    "proxy-restarted",
                    "proxy-restarted",
                    f"The proxy stopped and the hub started it again ({restarts} time(s) "
                    f"within {s.spawn_failure_window / 60:.0f} min); open connections were cut",
                    "Read the hub's log for the proxy's exit code; if it repeats, check the "
                    "machine's memory (`dmesg` for the OOM killer) and the proxy's version.",
                )
            )
        return found

    def _disk_alert(self, disk: Disk) -> Alert:
        return Alert(
            "disk-full",
            f"disk-full:{disk.path}",
            f"The file system of {disk.path} ({disk.role}) is {disk.percent:.0f} % full",
            f"Free space on {disk.path} or grow its file system: `hubstack env prune` removes "
            "unused environments, deleting servers removes their volumes. Starts and builds "
            "fail when it is full.",
        )
