"""What hubstack knows of each node: its state, since when, why; and how long boots take.

Slurm knows whether a node is powered down, booting or up; the provider knows which
machines exist; these records add what neither keeps: when a boot began, why one failed, and
recent boot times, which give users a "typically ~N s" while they wait. One JSON file in a
root-only directory, replaced atomically under a lock, because the resume and suspend
programs and the reconciler are separate processes that run at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hubstack.config import Config

State = Literal["booting", "up", "failed", "released", "refused"]
_BOOTS_KEPT = 20


@dataclass
class NodeRecord:
    group: str
    state: State
    since: float
    address: str | None = None
    reason: str | None = None
    started: float | None = None  # when its machine was asked for: node time counts from it


@dataclass
class Records:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    boots: dict[str, list[float]] = field(default_factory=dict)
    # Each group's past machine lifetimes [start, end], for its budget of node time.
    spans: dict[str, list[list[float]]] = field(default_factory=dict)

    def booting(self, node: str, group: str) -> None:
        now = time.time()
        self.nodes[node] = NodeRecord(group, "booting", now, started=now)

    def up(self, node: str, address: str | None) -> None:
        record = self.nodes.get(node)
        if record is None or record.state == "up":
            return
        now = time.time()
        if record.state == "booting":
            kept = self.boots.setdefault(record.group, [])
            kept.append(round(now - record.since, 1))
            del kept[:-_BOOTS_KEPT]
        started = record.started or record.since
        self.nodes[node] = NodeRecord(
            record.group, "up", now, address or record.address, started=started
        )

    def failed(self, node: str, group: str, reason: str) -> None:
        self._ended(node)
        self.nodes[node] = NodeRecord(group, "failed", time.time(), reason=reason)

    def released(self, node: str, group: str) -> None:
        self._ended(node)
        self.nodes[node] = NodeRecord(group, "released", time.time())

    def machine_released(self, node: str, group: str) -> None:
        """The node's machine is gone. A failed or refused node keeps its record (why it is
        out of service, since when), which status shows and the reconciler's cool-down
        reads: Slurm suspends a failed boot's node, and the reconciler may find its
        machine, at the moment the failure is recorded."""
        record = self.nodes.get(node)
        if record is None or record.state not in ("failed", "refused"):
            self.released(node, group)

    def refused(self, node: str, group: str, reason: str) -> None:
        """Not started at all (its group's budget is spent): no machine, no node time."""
        self.nodes[node] = NodeRecord(group, "refused", time.time(), reason=reason)

    def _ended(self, node: str) -> None:
        """Keep the lifetime of ``node``'s machine, if it had one, in its group's spans."""
        record = self.nodes.get(node)
        if record is not None and record.state in ("booting", "up"):
            start = record.started or record.since
            self.spans.setdefault(record.group, []).append([start, time.time()])

    def forget_spans(self, group: str, before: float) -> None:
        """Drop lifetimes that ended before ``before`` (a past budget period)."""
        self.spans[group] = [span for span in self.spans.get(group, []) if span[1] >= before]

    def typical_boot(self, group: str) -> float | None:
        """The median of the group's recent boots, in seconds; None before the first."""
        kept = self.boots.get(group)
        return statistics.median(kept) if kept else None


class RecordStore:
    """The records file in ``directory`` (created 0700, root's)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "nodes.json"

    def read(self) -> Records:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return Records()
        nodes = {name: NodeRecord(**value) for name, value in data.get("nodes", {}).items()}
        boots = {k: list(v) for k, v in data.get("boots", {}).items()}
        return Records(nodes, boots, data.get("spans", {}))

    @contextlib.contextmanager
    def change(self) -> Iterator[Records]:
        """The records, written back when the block ends without an error."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / "nodes.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.read()
            yield records
            self._write(records)

    def _write(self, records: Records) -> None:
        data = {
            "nodes": {k: asdict(v) for k, v in records.nodes.items()},
            "boots": records.boots,
            "spans": records.spans,
        }
        replace_file(self.path, json.dumps(data, indent=1, sort_keys=True), 0o600)


def replace_file(path: Path, text: str, mode: int) -> None:
    """Write ``path`` as a new file renamed into place: readers see the old or the new whole,
    and a failed write leaves no partial file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_for(config: Config) -> RecordStore:
    """The records of ``config``'s cluster: ``cluster.state_dir``, or under the hub's data."""
    return RecordStore(config.cluster.state_dir or config.hub.data_dir / "cluster")
