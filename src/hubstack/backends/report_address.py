"""Run inside a Slurm job: pick a free port on the node and tell the hub where to connect.

Only the standard library: this runs with the environment's own Python on a compute node,
where hubstack is not installed. The job script passes this file's text to ``python -c``
and reads the chosen port from stdout. The hub's route accepts the report only with the
server's own API token (from the job's environment) and only for that server.
"""

import json
import os
import random
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

ATTEMPTS = 200
RETRY_FOR_SECONDS = 600
# The hub restarting (behind its proxy, which answers 404 until the hub has added its
# route again, or 502-504), or the scheduler not answering it.
RETRY_STATUSES = (404, 502, 503, 504)


def ephemeral_ports() -> range:
    """Ports the node hands out to outgoing connections: one could take ours any moment."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(p) for p in f.read().split())
    except (OSError, ValueError):
        return range(0)
    return range(first, last + 1)


def free_port(low: int, high: int) -> int:
    """A port in [low, high], outside the ephemeral range, that nobody listens on now."""
    ephemeral = ephemeral_ports()
    candidates = [p for p in range(low, high + 1) if p not in ephemeral]
    if not candidates:
        print(f"hubstack: {low}-{high} is all in the ephemeral port range", file=sys.stderr)
        candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates[:ATTEMPTS]:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    sys.exit(f"hubstack: no free port in {low}-{high} on {socket.gethostname()}")


def report(url: str, token: str, host: str, port: int) -> None:
    """POST the address; retry while the hub is unreachable (it may be restarting) or cannot
    check the report yet."""
    body = json.dumps({"host": host, "port": port}).encode()
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    while True:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30):
                return
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            if exc.code not in RETRY_STATUSES:
                sys.exit(f"hubstack: the hub refused this server's address: {exc.code} {detail}")
            problem = f"{exc.code} {detail}"
        except OSError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            sys.exit(f"hubstack: cannot report to the hub at {url}: {problem}")
        print(
            f"hubstack: the hub cannot take the report now ({problem}); retrying", file=sys.stderr
        )
        time.sleep(5)


def report_in_background(host: str, port: int) -> None:
    """Tell the hub in a child process, so the server starts meanwhile: the round trip to
    the hub is time the start need not wait for. A refused or undeliverable report stops
    the server (the job script's shell, which ``exec`` made the server), so the job ends
    with the reason in its log instead of running unknown to the hub."""
    if os.fork() > 0:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the job script reads the port until stdout closes
    os.close(devnull)
    try:
        report(os.environ["HUBSTACK_REPORT_URL"], os.environ["JUPYTERHUB_API_TOKEN"], host, port)
    except SystemExit as exc:
        print(exc, file=sys.stderr, flush=True)
        server = int(os.environ.get("HUBSTACK_SERVER_PID") or 0)
        if server > 1:
            os.kill(server, signal.SIGTERM)
        os._exit(1)
    os._exit(0)


def cloud_address() -> str | None:
    """This node's address when it is a cloud node of Slurm 22.05, which names such nodes'
    addresses to jobs in SLURM_NODE_ALIASES (``name:address:hostname,...``, IPv6 in
    brackets): a booted node's host name need not be its node name, nor resolve to it."""
    node = os.environ.get("SLURMD_NODENAME")
    for alias in os.environ.get("SLURM_NODE_ALIASES", "").split(","):
        name, _, rest = alias.partition(":")
        if name and name == node:
            return rest.rpartition(":")[0].strip("[]") or None
    return None


def main() -> None:
    low, high = (int(p) for p in os.environ["HUBSTACK_PORT_RANGE"].split("-"))
    port = free_port(low, high)
    host = os.environ.get("HUBSTACK_NODE_ADDRESS") or cloud_address() or socket.gethostname()
    print(port, flush=True)
    report_in_background(host, port)


if __name__ == "__main__":
    main()
