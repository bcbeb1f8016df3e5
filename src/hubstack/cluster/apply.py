"""`hubstack cluster apply` and `status`: the files slurmctld needs, and one table of nodes."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hubstack.cluster.nodes import Programs as NodePrograms
from hubstack.cluster.nodes import SlurmNode
from hubstack.cluster.records import NodeRecord, Records, replace_file
from hubstack.cluster.slurmconf import INCLUDE_NAME, Programs, render
from hubstack.config import Config
from hubstack.config.cluster import NodeGroup

PROGRAMS = ("resume", "suspend", "resume-fail")


def _write(path: Path, text: str, mode: int) -> bool:
    """Replace ``path`` atomically if its text differs; whether it changed."""
    try:
        if path.read_text() == text:
            os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    replace_file(path, text, mode)
    return True


def apply(config_path: Path, cluster_conf: Path) -> list[str]:
    """Write the programs and the include beside ``cluster_conf`` (the site's slurm.conf),
    add the Include line to it if missing; what was changed, one line each."""
    from hubstack.config import load

    config, _ = load(config_path)
    etc = cluster_conf.parent
    bin_dir = etc / "hubstack"
    bin_dir.mkdir(mode=0o755, exist_ok=True)
    changed: list[str] = []
    paths = {}
    for name in PROGRAMS:
        path = bin_dir / name
        paths[name] = path
        command = [sys.executable, "-m", "hubstack.cli", "cluster", name]
        script = (
            "#!/bin/sh\n# Written by `hubstack cluster apply`: slurmctld's power-saving program.\n"
            f'exec {shlex.join(command)} --config {shlex.quote(str(config_path))} "$@"\n'
        )
        if _write(path, script, 0o755):
            changed.append(f"wrote {path}")
    programs = Programs(paths["resume"], paths["suspend"], paths["resume-fail"])
    include = etc / INCLUDE_NAME
    if _write(include, render(config.cluster, programs), 0o644):
        changed.append(f"wrote {include}")
    site = cluster_conf.read_text()
    line = f"Include {include}"
    if line not in site.splitlines():
        _write(cluster_conf, site.rstrip("\n") + f"\n{line}\n", 0o644)
        changed.append(f"added `{line}` to {cluster_conf}")
    return changed


@dataclass(frozen=True)
class NodeRow:
    node: str
    group: str
    partition: str
    status: str
    address: str


def describe(
    node: str, group: str, slurm: SlurmNode | None, record: NodeRecord | None, now: float
) -> str:
    """One word or phrase a person reads: powered down, booting (for 42 s), idle, busy,
    failed (why)."""
    flags = slurm.flags if slurm else set()
    if record is not None and record.state in ("failed", "refused") and "DOWN" in flags:
        return f"{record.state} ({record.reason})"
    if "DOWN" in flags or "DRAIN" in flags:
        return f"down ({slurm.reason})" if slurm and slurm.reason else "down"
    if "POWERING_UP" in flags or (record is not None and record.state == "booting"):
        since = f" for {int(now - record.since)} s" if record is not None else ""
        return f"booting{since}"
    if "POWERED_DOWN" in flags or "POWERING_DOWN" in flags:
        return "powered down"
    if flags & {"ALLOCATED", "MIXED", "COMPLETING"}:
        return "busy"
    if "IDLE" in flags:
        return "idle"
    return slurm.state.lower() if slurm else "unknown to Slurm"


def rows(
    groups: dict[str, NodeGroup],
    slurm: dict[str, SlurmNode],
    records: Records,
    now: float | None = None,
) -> list[NodeRow]:
    """A row per configured node (``groups``: node -> its group)."""
    now = time.time() if now is None else now
    return [
        NodeRow(
            node,
            group.name,
            group.partition,
            describe(node, group.name, slurm.get(node), records.nodes.get(node), now),
            slurm[node].address if node in slurm and slurm[node].address != node else "",
        )
        for node, group in groups.items()
    ]


def status(config: Config) -> list[NodeRow]:
    """What `hubstack cluster status` and the hub's cluster page show; blocking (scontrol)."""
    programs = NodePrograms(config)
    return rows(programs.groups, programs.slurm.nodes(), programs.records.read())
