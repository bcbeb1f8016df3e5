"""``hubstack status``: one screen on the running hub for its operator.

What runs comes from the hub's REST API (the hub keeps it in memory); what the API does
not show (Slurm job ids, notices of failed starts) from the hub's database, read only;
the queue from the scheduler; the disks and alerts as the hub's monitor sees them.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyterhub import orm

from hubstack.config import Config
from hubstack.envs.declared import current_keys, in_use
from hubstack.hub.alerts import read_firing
from hubstack.hub.database import db_url
from hubstack.hub.group_admin import HubApi
from hubstack.hub.monitor import STATE_FILE, measure_disks, watched_paths
from hubstack.slurm.client import Slurm, SlurmError
from hubstack.units import format_size

RECENT_NOTICES = 10


def printable(text: str) -> str:
    """``text`` with control characters shown as ``?``: names and messages come partly from
    users and the scheduler, and must not move the cursor or recolour the operator's
    terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _since(moment: str | None) -> str:
    if not moment:
        return ""
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")


def server_lines(config: Config, users: list[dict[str, Any]]) -> list[str]:
    rows = []
    for user in sorted(users, key=lambda u: u["name"]):
        for name, server in sorted(user.get("servers", {}).items()):
            options = server.get("user_options") or {}
            state = "ready" if server.get("ready") else (server.get("pending") or "stopped")
            rows.append(
                [
                    user["name"],
                    name or "(default)",
                    str(options.get("machine", "")),
                    str(options.get("environment", "")),
                    state,
                    _since(server.get("started")),
                ]
            )
    head = f"Servers on the {config.backend.type} backend: {len(rows)}"
    if not rows:
        return [head]
    header = ["USER", "SERVER", "MACHINE", "ENVIRONMENT", "STATE", "STARTED"]
    return [head, *_table(rows, header)]


def saved_states(db_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(user, server, state) of every server the database knows, running or not."""
    db = orm.new_session_factory(db_url)()
    try:
        return [(s.user.name, s.name, dict(s.state or {})) for s in db.query(orm.Spawner)]
    finally:
        db.close()


def builds_in_use(config: Config) -> set[str]:
    """The environment builds ``env prune`` keeps however long unused: each declared
    environment's current one and those running servers record, read from the database
    (so it holds after a hub restart too; none before the hub's first start)."""
    url = db_url(config)
    known = Path(url.removeprefix("sqlite:///")).exists()
    states = [state for _user, _server, state in saved_states(url)] if known else []
    return current_keys(config) | in_use(states)


def queue_lines(config: Config, states: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    if config.backend.type != "slurm":
        return []
    jobs = {
        str(state["backend"]["job_id"]): (user, server)
        for user, server, state in states
        if state.get("backend", {}).get("job_id")
    }
    slurm = Slurm(config.backend.slurm.bin_dir, config.backend.slurm.submit_as)
    try:
        found = asyncio.run(slurm.queue(list(jobs)))
    except SlurmError as exc:
        return [f"Slurm queue: the scheduler did not answer ({exc})"]
    rows = [
        [job, user, server or "(default)", info.state, info.reason or "", info.nodes or ""]
        for job, (user, server) in sorted(jobs.items())
        if (info := found.get(job)) is not None
    ]
    head = f"Slurm jobs of the hub's servers: {len(rows)}"
    if not rows:
        return [head]
    return [head, *_table(rows, ["JOB", "USER", "SERVER", "STATE", "REASON", "NODES"])]


def disk_lines(config: Config) -> list[str]:
    rows = []
    for disk in measure_disks(watched_paths(config)):
        flag = "  FULL" if disk.percent > config.alerts.disk_percent else ""
        rows.append(
            [
                str(disk.path),
                disk.role,
                f"{format_size(disk.used)} of {format_size(disk.size)}",
                f"{disk.percent:.0f} %{flag}",
            ]
        )
    return ["Disks:", *_table(rows, ["PATH", "HOLDS", "USED", "FULL"])]


def notice_lines(states: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    notices = sorted(
        (
            (notice["time"], user, server or "(default)", notice["message"])
            for user, server, state in states
            for notice in state.get("notices", [])
        ),
        reverse=True,
    )[:RECENT_NOTICES]
    if not notices:
        return ["Recent failures: none"]
    lines = ["Recent failures and stops (newest first):"]
    lines += [f"  {_since(t)}  {user}/{server}: {message}" for t, user, server, message in notices]
    return lines


def alert_lines(config: Config) -> list[str]:
    firing = read_firing(config.hub.data_dir / STATE_FILE)
    if not firing:
        return ["Alerts: none firing"]
    return ["Alerts firing:", *[f"  {alert.summary}. {alert.action}" for alert in firing]]


def status(config: Config, db_url: str) -> str:
    """The screen; ``ValueError`` with a clear message if the hub is not running."""
    users = HubApi(config, db_url).call("GET", "/users?state=active")
    states = saved_states(db_url)
    sections = [
        server_lines(config, users),
        queue_lines(config, states),
        disk_lines(config),
        notice_lines(states),
        alert_lines(config),
    ]
    return "\n\n".join(
        "\n".join(printable(line) for line in section) for section in sections if section
    )
