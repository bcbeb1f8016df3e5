"""Network namespaces as machines: each with one address on a host bridge.

The local cluster provider makes a compute node of one: its own address, its own slurmd,
the host's file systems (so the same munge key and slurm.conf). The host keeps the bridge's
first address, which is how the node reaches slurmctld and the hub reaches the node.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import time
from pathlib import Path

from hubstack.system import SystemOpError, run, tool

NETNS_DIR = Path("/run/netns")
_STOP_WAIT_S = 5.0


def ensure_bridge(bridge: str, subnet: str) -> str:
    """Create ``bridge`` with the subnet's first address if it is missing; the address."""
    net = ipaddress.IPv4Network(subnet)
    host = f"{net.network_address + 1}/{net.prefixlen}"
    if not Path(f"/sys/class/net/{bridge}").exists():
        run(["ip", "link", "add", bridge, "type", "bridge"], ok_codes=(0, 2))
    addresses = run(["ip", "-o", "-4", "addr", "show", "dev", bridge]).stdout
    if f" {host} " not in addresses:
        run(["ip", "addr", "add", host, "dev", bridge], ok_codes=(0, 2))
    run(["ip", "link", "set", bridge, "up"])
    return str(net.network_address + 1)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def names(prefix: str) -> list[str]:
    """The namespaces whose name starts with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str, bridge: str, address: str) -> None:
    """A namespace ``name`` whose eth0 has ``address`` (CIDR) on ``bridge``; idempotent."""
    host_end = _host_end(name)
    if not exists(name):
        run(["ip", "netns", "add", name])
    if not Path(f"/sys/class/net/{host_end}").exists():
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name])
    run(["ip", "link", "set", host_end, "master", bridge, "up"])
    inside = run(["ip", "-n", name, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    if f" {address} " not in inside:
        run(["ip", "-n", name, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def pids(name: str) -> list[int]:
    """The processes whose network namespace is ``name``."""
    if not exists(name):
        return []
    out = run(["ip", "netns", "pids", name]).stdout
    return [int(word) for word in out.split()]


def delete(name: str) -> None:
    """End every process in ``name`` (TERM, then KILL), then remove it and its link."""
    _signal_all(name, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_WAIT_S
    while pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(name, signal.SIGKILL)
    if exists(name):
        run(["ip", "netns", "delete", name])
    if Path(f"/sys/class/net/{_host_end(name)}").exists():
        run(["ip", "link", "delete", _host_end(name)], ok_codes=(0, 1))


def enter(name: str) -> list[str]:
    """The prefix of a command line that runs in ``name``'s network, with a clock that says
    the machine booted just now, and nothing else (not `ip netns exec`, whose fresh /sys
    would hide the cgroup file systems slurmd needs).

    The clock matters to Slurm: it takes a powering-up node as booted only if its slurmd
    reports a boot after the power-up request, and slurmd reads the boot from the uptime.
    """
    if not exists(name):
        raise SystemOpError(f"network namespace {name} does not exist")
    uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    return [
        tool("nsenter"),
        f"--net={NETNS_DIR / name}",
        tool("unshare"),
        "--time",
        f"--boottime=-{uptime}",
    ]


def _signal_all(name: str, sig: signal.Signals) -> None:
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _host_end(name: str) -> str:
    """The host's end of the namespace's link; interface names have at most 15 characters,
    so a longer one is named by a digest of the namespace's name."""
    end = f"v{name}"
    return end if len(end) <= 15 else "v" + hashlib.sha256(name.encode()).hexdigest()[:14]
