"""hubstack's Prometheus metrics, served with JupyterHub's own at ``/hub/metrics``.

JupyterHub serves ``prometheus_client``'s default registry there, so metrics defined here
(in the same registry) appear beside ``jupyterhub_*`` with no endpoint of our own. The
places where events happen call the small functions below; this module also keeps the
few recent facts the alerts are computed from (spawn outcomes, queued builds, proxy
restarts), since those live in the hub's process like the metrics.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Starts take seconds on the hub's machine and up to hours in a Slurm queue.
START_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
BUILD_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, float("inf"))
OUTCOMES_KEPT = 10_000

SPAWN_DURATION = Histogram(
    "hubstack_spawn_duration_seconds",
    "Time from a server's start to its server answering (or the start failing)",
    ["backend", "outcome"],
    buckets=START_BUCKETS,
)
SLURM_QUEUE_WAIT = Histogram(
    "hubstack_slurm_queue_wait_seconds",
    "Time from a server's job being submitted to its server reporting from its node",
    buckets=START_BUCKETS,
)
BUILD_DURATION = Histogram(
    "hubstack_build_duration_seconds",
    "Time a repository environment's build ran",
    ["outcome"],
    buckets=BUILD_BUCKETS,
)
ENVIRONMENT_LOOKUPS = Counter(
    "hubstack_environment_lookups",
    "Launches of a repository environment: found in the cache, or built",
    ["result"],
)
BUILDS_QUEUED = Gauge("hubstack_builds_queued", "Environment builds waiting to start")
PROXY_RESTARTS = Counter(
    "hubstack_proxy_restarts", "Times the hub found the proxy stopped and started it again"
)
STORAGE_USED = Gauge(
    "hubstack_storage_used_bytes", "Bytes used on a file system the hub keeps", ["disk", "path"]
)
STORAGE_SIZE = Gauge(
    "hubstack_storage_size_bytes", "Size of a file system the hub keeps", ["disk", "path"]
)
VOLUMES_ALLOCATED = Gauge(
    "hubstack_volumes_allocated_bytes",
    "Bytes the users' volume images take on the data dir's file system",
)
MONITOR_CHECKS = Counter(
    "hubstack_monitor_checks", "Rounds of the hub's disk and alert checks completed"
)
ALERT_FIRING = Gauge("hubstack_alert_firing", "1 while an alert's incident lasts", ["alert"])

for _outcome in ("success", "failure"):
    BUILD_DURATION.labels(_outcome)
for _result in ("cache_hit", "built"):
    ENVIRONMENT_LOOKUPS.labels(_result)


@dataclass
class Recent:
    """What happened lately, for alerts that count events over a window.

    Spawn outcomes and proxy restarts are kept with wall-clock times, so that the monitor
    can save them and a restarted hub goes on counting (queued builds end with the hub).
    ``changes`` counts the events, for saving only when there is something new.
    """

    spawns: deque[tuple[float, bool]]
    queued_builds: dict[str, float]
    proxy_restarts: deque[float]
    changes: int = 0

    def spawn_failures(self, window: float) -> tuple[int, int]:
        """(failed, all) starts that ended within the last ``window`` seconds."""
        since = time.time() - window
        outcomes = [ok for at, ok in self.spawns if at >= since]
        return outcomes.count(False), len(outcomes)

    def oldest_queued_build(self) -> float | None:
        """Seconds the longest-waiting queued build has waited."""
        if not self.queued_builds:
            return None
        return time.monotonic() - min(self.queued_builds.values())

    def proxy_restarts_within(self, window: float) -> int:
        since = time.time() - window
        return sum(at >= since for at in self.proxy_restarts)

    def saved(self) -> dict[str, Any]:
        return {"spawns": list(self.spawns), "proxy_restarts": list(self.proxy_restarts)}

    def restore(self, saved: dict[str, Any]) -> None:
        self.spawns.extend((float(at), bool(ok)) for at, ok in saved.get("spawns", []))
        self.proxy_restarts.extend(float(at) for at in saved.get("proxy_restarts", []))


RECENT = Recent(deque(maxlen=OUTCOMES_KEPT), {}, deque(maxlen=100))


def spawn_finished(backend: str, seconds: float, ok: bool) -> None:
    SPAWN_DURATION.labels(backend, "success" if ok else "failure").observe(seconds)
    RECENT.spawns.append((time.time(), ok))
    RECENT.changes += 1


def environment_found(cached: bool) -> None:
    ENVIRONMENT_LOOKUPS.labels("cache_hit" if cached else "built").inc()


def build_queued(key: str) -> None:
    RECENT.queued_builds.setdefault(key, time.monotonic())
    BUILDS_QUEUED.set(len(RECENT.queued_builds))


def build_left_queue(key: str) -> None:
    """The build of ``key`` started, or was given up before it did."""
    RECENT.queued_builds.pop(key, None)
    BUILDS_QUEUED.set(len(RECENT.queued_builds))


def build_finished(seconds: float, ok: bool) -> None:
    BUILD_DURATION.labels("success" if ok else "failure").observe(seconds)


def proxy_restarted() -> None:
    PROXY_RESTARTS.inc()
    RECENT.proxy_restarts.append(time.time())
    RECENT.changes += 1


@dataclass(frozen=True)
class RunningServer:
    machine: str
    groups: tuple[str, ...]


class RunningServers(Collector):
    """``hubstack_servers_running{machine, group}``, counted from the hub's database at each
    scrape (a user in two groups counts in both; no group: ``group=""``), so it is right
    after a restart too, with no count of our own to drift."""

    def __init__(self, servers: Callable[[], Iterable[RunningServer]]) -> None:
        self.servers = servers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "hubstack_servers_running",
            "Servers running or starting, by machine type and the owner's groups",
            labels=["machine", "group"],
        )
        counts: dict[tuple[str, str], int] = {}
        for server in self.servers():
            for group in server.groups or ("",):
                counts[server.machine, group] = counts.get((server.machine, group), 0) + 1
        for (machine, group), count in sorted(counts.items()):
            family.add_metric([machine, group], count)
        yield family


def register_running_servers(servers: Callable[[], Iterable[RunningServer]]) -> None:
    REGISTRY.register(RunningServers(servers))
