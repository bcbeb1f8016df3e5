"""The storage connections in JupyterLab's file browser (the jupyter-fsspec extension).

jupyter-fsspec reads its sources from ``jupyter-fsspec.yaml`` in the user's Jupyter config
directory. At the server's start this extension, running as the user, lists the user's
connections through the hub's API and writes one source per connection: only its name and
``hubbrowse://NAME``, never a credential (the filesystem asks the hub for it in the server's
memory, as ``hub://`` does). Sources the user added by hand are kept.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml
from jupyter_core.paths import jupyter_config_dir

from hubstack_data.connection import ConnectionError_, connections

CONFIG = "jupyter-fsspec.yaml"
PROTOCOL = "hubbrowse://"


def sources(existing: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``existing`` with the hub's sources replaced by one for each of ``names``."""
    own = [s for s in existing.get("sources") or [] if not is_hubs(s)]
    taken = {s.get("name") for s in own}
    hubs = [
        {"name": name, "path": PROTOCOL + name, "kwargs": {"connection": name}}
        for name in names
        if name not in taken
    ]
    return {**existing, "sources": own + hubs}


def is_hubs(source: Any) -> bool:
    return isinstance(source, dict) and str(source.get("path", "")).startswith(PROTOCOL)


def write_sources(directory: str, names: list[str]) -> str:
    """Rewrite ``directory``/jupyter-fsspec.yaml for ``names``; its path."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, CONFIG)
    try:
        with open(path) as current:
            existing = yaml.safe_load(current) or {}
    except FileNotFoundError:
        existing = {}
    if not isinstance(existing, dict):
        existing = {}
    # Written beside and renamed: jupyter-fsspec may read the file at any moment.
    fd, temporary = tempfile.mkstemp(prefix=".jupyter-fsspec-", dir=directory)
    with os.fdopen(fd, "w") as out:
        out.write("# The hub's storage connections are written here at each server start.\n")
        yaml.safe_dump(sources(existing, names), out, sort_keys=False)
    os.replace(temporary, path)
    return path


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hubstack_data.browser"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    if "JUPYTERHUB_API_TOKEN" not in os.environ:
        return
    # The server starts whatever happens here: a hub that cannot answer or a full home
    # only leaves the file browser without the connections.
    try:
        names = [c["name"] for c in connections()]
        path = write_sources(jupyter_config_dir(), names)
    except (ConnectionError_, OSError, yaml.YAMLError) as exc:
        server_app.log.warning("storage connections not in the file browser: %s", exc)
        return
    server_app.log.info("%d storage connections in the file browser (%s)", len(names), path)
