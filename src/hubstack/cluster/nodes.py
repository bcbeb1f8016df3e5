"""Slurm's view of the cluster's nodes, and what slurmctld's power-saving programs do.

slurmctld runs the resume program with the nodes it allocated while they were powered
down, the suspend program with nodes idle for their partition's SuspendTime, and the
resume-fail program with nodes that did not register within ResumeTimeout. Each is
``hubstack cluster resume|suspend|resume-fail HOSTLIST``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hubstack.cluster.budget import forget_past, refusal
from hubstack.cluster.providers import provider_for
from hubstack.cluster.records import store_for
from hubstack.config import Config
from hubstack.config.cluster import NodeGroup
from hubstack.system import SystemOpError, run

_REGISTER_POLL_S = 1.0


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # e.g. IDLE+CLOUD+POWERED_DOWN
    address: str
    reason: str
    last_busy: float | None = None  # when it was last busy (epoch seconds): idle since

    @property
    def flags(self) -> set[str]:
        return set(self.state.split("+"))

    @property
    def registered(self) -> bool:
        """slurmd has answered since the power-up (POWERING_UP itself stays until the
        node's first job has been configured, up to half a minute later)."""
        return not self.flags & {"POWERED_DOWN", "NOT_RESPONDING", "DOWN"}


class Scontrol:
    """scontrol against the cluster's slurm.conf."""

    def __init__(self, slurm_conf: Path) -> None:
        self.env = {**os.environ, "SLURM_CONF": str(slurm_conf)}

    def _run(self, *args: str) -> str:
        return run(["scontrol", *args], env=self.env).stdout

    def hostnames(self, hostlist: str) -> list[str]:
        return self._run("show", "hostnames", hostlist).split()

    def announce(self, node: str, address: str) -> None:
        self._run("update", f"nodename={node}", f"nodeaddr={address}", f"nodehostname={node}")

    def set_down(self, node: str, reason: str) -> None:
        """Out of service with ``reason``: Slurm requeues its jobs at once, and powers it
        down when its ResumeTimeout ends (a DOWN set before would not outlast a forced
        power-down, and the node would be handed out again)."""
        self._run("update", f"nodename={node}", "state=down", f"reason={reason[:200]}")

    def power_down(self, node: str) -> None:
        """Back to powered down and eligible again (e.g. a failed node after its cool-down)."""
        self._run("update", f"nodename={node}", "state=resume")

    def power_up(self, node: str) -> None:
        """Boot a powered-down node without a job (a warm spare): Slurm runs the resume
        program as for a job's node."""
        self._run("update", f"nodename={node}", "state=power_up")

    def release(self, node: str) -> None:
        """Power an idle node down now, through the suspend program, as Slurm would after
        its SuspendTime (a job that lands on it first keeps it until the job ends)."""
        self._run("update", f"nodename={node}", "state=power_down")

    def nodes(self, names: Iterable[str] | None = None) -> dict[str, SlurmNode]:
        found: dict[str, SlurmNode] = {}
        listed = [",".join(names)] if names else []
        for line in self._run("show", "node", "--oneliner", *listed).splitlines():
            fields = dict(_pairs(line))
            if "NodeName" in fields:
                found[fields["NodeName"]] = SlurmNode(
                    fields["NodeName"],
                    fields.get("State", ""),
                    fields.get("NodeAddr", ""),
                    fields.get("Reason", ""),
                    _moment(fields.get("LastBusyTime", "")),
                )
        return found


def _moment(text: str) -> float | None:
    """scontrol's local ``2026-12-06T09:15:02`` as epoch seconds; None for None/Unknown."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _pairs(line: str) -> Iterable[tuple[str, str]]:
    """``Key=value`` words of one scontrol line; a value runs up to the next key (Reason
    holds spaces and ends the line)."""
    key, _, rest = line.partition("=")
    while rest:
        if key == "Reason":
            yield key, rest.strip()
            return
        value, _, rest = rest.partition(" ")
        yield key.strip(), value
        while rest.startswith(" "):
            rest = rest[1:]
        key, _, rest = rest.partition("=")


class Programs:
    """What each power-saving program does, for one hubstack config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cluster = config.cluster
        self.usage = config.usage
        self.slurm = Scontrol(config.cluster.slurm_conf)
        self.records = store_for(config)
        self.groups = {node: g for g in config.cluster.node_groups for node in g.nodes()}

    def _ours(self, hostlist: str) -> list[tuple[str, NodeGroup]]:
        nodes = self.slurm.hostnames(hostlist)
        return [(node, self.groups[node]) for node in nodes if node in self.groups]

    def resume(self, hostlist: str) -> None:
        """Create each node's machine, then wait for the slurmds to register, so each boot's
        duration is known (slurmctld does not wait for this program). A node whose group's
        budget is spent is not created: Slurm gets it DOWN with the reason, and the
        reconciler returns it once the budget allows."""
        started: list[tuple[str, NodeGroup]] = []
        for node, group in self._ours(hostlist):
            with self.records.change() as records:
                forget_past(records, self.usage)
                refused = refusal(group, self.usage, records)
                if refused is None:
                    records.booting(node, group.name)
                else:
                    records.refused(node, group.name, refused)
            if refused is not None:
                self.slurm.set_down(node, f"hubstack: {refused}")
                continue
            try:
                provider_for(self.cluster, group).create(
                    node, group, lambda address, n=node: self.slurm.announce(n, address)
                )
            except SystemOpError as exc:
                self._failed(node, group, f"could not create the node: {exc}")
            else:
                started.append((node, group))
        self._wait_registered(started)

    def _wait_registered(self, started: list[tuple[str, NodeGroup]]) -> None:
        deadline = time.monotonic() + self.cluster.resume_timeout
        waiting = dict(started)
        while waiting and time.monotonic() < deadline:
            for name, node in self.slurm.nodes(waiting).items():
                if node.registered:
                    with self.records.change() as records:
                        records.up(name, node.address)
                    waiting.pop(name, None)
            time.sleep(_REGISTER_POLL_S)

    def suspend(self, hostlist: str) -> None:
        """Release the machines. Slurm suspends a node whose boot outlived ResumeTimeout
        too, at the same time as it runs the resume-fail program: whichever runs first
        fails the boot."""
        known = self.records.read().nodes
        for node, group in self._ours(hostlist):
            record = known.get(node)
            if record is not None and record.state == "booting":
                self._failed(node, group, self._not_registered())
                continue
            provider_for(self.cluster, group).delete(node)
            with self.records.change() as records:
                records.machine_released(node, group.name)

    def _not_registered(self) -> str:
        return f"its slurmd did not register within {self.cluster.resume_timeout} s"

    def resume_fail(self, hostlist: str) -> None:
        """Slurm also runs this for nodes the resume program failed itself, maybe after the
        reconciler returned them: only a boot still under way has timed out."""
        known = self.records.read().nodes
        for node, group in self._ours(hostlist):
            if node in known and known[node].state == "booting":
                self._failed(node, group, self._not_registered())
            elif node in known and known[node].state in ("refused", "failed"):
                # Slurm has just put its own reason (ResumeTimeout reached) in place of ours.
                self.slurm.set_down(node, f"hubstack: {known[node].reason}")
            else:
                provider_for(self.cluster, group).delete(node)

    def _failed(self, node: str, group: NodeGroup, reason: str) -> None:
        """Release the machine and take the node out of service with the reason: Slurm
        requeues its job onto another node; the reconciler returns it after a cool-down."""
        provider_for(self.cluster, group).delete(node)
        with self.records.change() as records:
            records.failed(node, group.name, reason)
        self.slurm.set_down(node, f"hubstack: {reason}")
