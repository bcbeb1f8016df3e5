"""JupyterHub's config for each backend, read without starting a hub."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from traitlets.config import Config as TraitletsConfig
from traitlets.utils.importstring import import_item

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.hub.address import ROUTE, ServerAddressHandler
from hubstack.hub.groups import CLI_SERVICE
from hubstack.hub.settings import BINDER_SERVICE, jupyterhub_config
from hubstack.hub.spawner import HubstackSpawner

ENVIRONMENTS = [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/python"}]


def hub_config(**settings: Any) -> tuple[Config, TraitletsConfig]:
    config = validate({"environments": ENVIRONMENTS, **settings})
    return config, jupyterhub_config(config)


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_every_backend_runs_under_the_one_spawner(backend: str) -> None:
    config, c = hub_config(backend={"type": backend})
    assert import_item(c.JupyterHub.spawner_class) is HubstackSpawner
    assert Config.model_validate_json(c.HubstackSpawner.hubstack_config) == config
    assert c.JupyterHub.allow_named_servers is True


def test_local_servers_report_nothing_and_may_wait_their_turn_to_start() -> None:
    _, c = hub_config(backend={"local": {"queue_timeout": "5m", "start_timeout": "2m"}})
    assert (ROUTE, ServerAddressHandler) not in c.JupyterHub.extra_handlers
    # JupyterHub's timeout is a backstop beyond the backend's own three: the wait for a
    # previous run's storage, the wait in line and the start.
    assert c.HubstackSpawner.start_timeout > 120 + 300 + 120


def test_slurm_jobs_report_their_address_and_may_wait_in_the_queue() -> None:
    config, c = hub_config(backend={"type": "slurm", "slurm": {"start_timeout": "2h"}})
    assert c.JupyterHub.extra_handlers[-1] == (ROUTE, ServerAddressHandler)
    assert c.HubstackSpawner.start_timeout == config.backend.slurm.start_timeout == 7200


@pytest.mark.parametrize(
    ("auth", "authenticator"),
    [
        ("native", "hubstack.hub.auth.HubstackNativeAuthenticator"),
        ("pam", "hubstack.hub.auth.HubstackPAMAuthenticator"),
    ],
)
def test_the_authenticator_follows_auth_type(auth: str, authenticator: str) -> None:
    _, c = hub_config(auth={"type": auth})
    assert c.JupyterHub.authenticator_class == authenticator


def test_servers_outlive_the_hub_unless_told_otherwise() -> None:
    config, c = hub_config()
    assert c.JupyterHub.cleanup_servers is False
    assert jupyterhub_config(config, stop_servers=True).JupyterHub.cleanup_servers is True


@pytest.mark.parametrize("enabled", [True, False])
def test_the_binder_service_runs_only_when_enabled(enabled: bool) -> None:
    _, c = hub_config(binder={"enabled": enabled})
    services = [service["name"] for service in c.JupyterHub.services]
    binder = [BINDER_SERVICE] if enabled else []
    assert services == ["idle-culler", *binder, CLI_SERVICE]


def test_extra_jupyterhub_config_has_the_last_word() -> None:
    extra = {"HubstackSpawner": {"poll_interval": 2}, "JupyterHub": {"shutdown_on_logout": True}}
    _, c = hub_config(extra_jupyterhub_config=extra)
    assert c.HubstackSpawner.poll_interval == 2
    assert c.JupyterHub.shutdown_on_logout is True


def test_the_hubs_settings_do_not_bring_rfc3987_syntax() -> None:
    """The hub's settings import jsonschema, which would import rfc3987-syntax and compile its
    parsers (seconds of every hub start and `hubstack` command); pyproject.toml keeps it out."""
    assert "jsonschema" in sys.modules
    assert "rfc3987_syntax" not in sys.modules and "lark" not in sys.modules
