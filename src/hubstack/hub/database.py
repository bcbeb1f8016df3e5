"""Where the hub's database is.

A module of its own: the `hubstack` commands that only open the database (accounts, groups,
status) would otherwise import the settings, and with them every authenticator and page of
the hub: seconds of each command.
"""

from __future__ import annotations

from hubstack.config import Config


def db_url(config: Config) -> str:
    return f"sqlite:///{config.hub.data_dir / 'jupyterhub.sqlite'}"
