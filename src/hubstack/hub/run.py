"""Run JupyterHub in this process with the configuration built from ours."""

from __future__ import annotations

import logging
import signal
from typing import NoReturn

from hubstack.config import Config
from hubstack.exits import exit_now
from hubstack.hub import builtin_accounts
from hubstack.hub.database import db_url
from hubstack.hub.groups import sync_groups
from hubstack.hub.settings import jupyterhub_config
from hubstack.hub.spawner import backend_for
from hubstack.hub.tables import create_tables

log = logging.getLogger("hubstack")


def announce_admins(config: Config) -> None:
    """Create missing admin accounts and print each new password once."""
    if config.auth.type != "native":
        return
    for name, password in builtin_accounts.ensure_admins(
        db_url(config), config.hub.admin_users
    ).items():
        print(
            f"\n  Created the admin account {name!r} with password: {password}\n"
            f"  It is shown only this once; `hubstack reset-password {name}` sets a new one.\n",
            flush=True,
        )


def run(config: Config, stop_servers: bool = False) -> NoReturn:
    """Run the hub until it is stopped; ``stop_servers``: stop users' servers with it."""
    from hubstack.hub.app import HubstackHub

    # Started in the background of a script (`nohup hubstack up &`), a process inherits
    # SIGINT ignored, and so would its services, which JupyterHub stops with SIGINT first:
    # each stop would wait out JupyterHub's timeouts. A handler is not inherited; SIG_DFL is.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    announce_admins(config)
    sync_groups(db_url(config), config)
    create_tables(db_url(config))
    c = jupyterhub_config(config, stop_servers)
    # Only our config: never pick up a stray jupyterhub_config.py from the working directory.
    empty = config.hub.data_dir / "jupyterhub_config.py"
    empty.write_text("# Intentionally empty: hubstack configures JupyterHub from its YAML file.\n")
    c.JupyterHub.config_file = str(empty)
    backend = backend_for(c.HubstackSpawner.hubstack_config)
    print(f"hubstack: {backend.describe()}", flush=True)
    HubstackHub.instance(config=c)
    HubstackHub.launch_instance([])
    # JupyterHub has stopped its services and proxy; see hubstack.exits for what is left.
    exit_now(0)
