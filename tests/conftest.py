"""Shared fixtures: a real hub (JupyterHub + configurable-http-proxy + real servers)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hubtest import DEFAULT_ENV, Hub, Session, running_hub

pytest_plugins = ["gitserver"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local backend isolates as root")
needs_default_env = pytest.mark.skipif(
    not (DEFAULT_ENV / "bin/jupyterhub-singleuser").exists(),
    reason="run scripts/setup.sh first: the default environment is missing",
)


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    """One hub per test module, with small volumes and a 'tiny' machine for OOM tests."""
    overrides = {
        "machines": [
            {"id": "small", "display": "Small", "cpu": 1, "memory": "1G"},
            {"id": "tiny", "display": "Tiny", "cpu": 0.5, "memory": "400M"},
            # Too small for a server to answer, even a forked one (whose imported modules
            # stay its fork server's pages until written to).
            {"id": "starved", "display": "Starved", "cpu": 0.5, "memory": "16M"},
        ],
        "environments": [
            {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
            {"id": "broken", "display": "Broken", "prefix": "/opt/hubstack/envs/missing"},
        ],
        # Poll often so that out-of-memory kills show up quickly in tests.
        "extra_jupyterhub_config": {"HubstackSpawner": {"poll_interval": 2}},
    }
    with running_hub(overrides) as running:
        yield running


@pytest.fixture(scope="module")
def alice(hub: Hub) -> Session:
    return hub.new_user("alice")


@pytest.fixture(scope="module")
def bob(hub: Hub) -> Session:
    return hub.new_user("bob")
