"""The spawner without a hub: its state in the database, its options, refused renames, and
the refused address reports of local servers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from tornado import web

from hubstack.backends.local import LocalBackend
from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.hub.spawner import HubstackSpawner
from hubstack.launch import resolve
from hubstack.launch.policy import repository_launch_timeout

GIB = 2**30
NOTICE = {"time": "2026-01-01T00:00:00+00:00", "message": "Your server stopped."}
RUNNING = {"backend": {"pid": 4242, "unit": "hubstack-hs-alice-default"}, "env_key": "3f9a"}


@pytest.fixture
def config() -> Config:
    return validate(
        {
            "machines": [{"id": "small", "display": "Small", "cpu": 1, "memory": "2G"}],
            "environments": [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/py"}],
        }
    )


@pytest.fixture
def spawner(config: Config) -> HubstackSpawner:
    made = HubstackSpawner(hubstack_config=config.model_dump_json())
    made.orm_spawner = SimpleNamespace(user_options=None, server=None)  # its database row
    return made


def test_a_new_spawner_has_no_state(spawner: HubstackSpawner) -> None:
    assert spawner.get_state() == {}


@pytest.mark.parametrize(
    "state",
    [
        RUNNING,
        {**RUNNING, "notices": [NOTICE]},
        {**RUNNING, "resuming": True},
        {"notices": [NOTICE]},
    ],
    ids=["running", "with notices", "resuming", "notices only"],
)
def test_state_round_trips_through_the_database(
    spawner: HubstackSpawner, state: dict[str, Any]
) -> None:
    spawner.load_state(state)
    assert spawner.get_state() == state


def test_saved_state_is_a_copy_so_the_database_sees_a_change(spawner: HubstackSpawner) -> None:
    spawner.load_state(RUNNING)
    saved = spawner.get_state()
    spawner.backend_state["pid"] = 1
    assert saved["backend"]["pid"] == 4242
    assert spawner.get_state()["backend"]["pid"] == 1


def test_clearing_forgets_the_server_but_keeps_its_notices(spawner: HubstackSpawner) -> None:
    spawner.load_state({**RUNNING, "notices": [NOTICE]})
    spawner.clear_state()
    assert spawner.get_state() == {"notices": [NOTICE]}


def test_clearing_keeps_a_start_to_resume_after_a_hub_restart(spawner: HubstackSpawner) -> None:
    resuming = {**RUNNING, "resuming": True}
    spawner.load_state(resuming)
    spawner.clear_state()
    assert spawner.get_state() == resuming


def test_renaming_is_refused_with_a_reason(spawner: HubstackSpawner) -> None:
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.rename("old", "new"))
    assert refused.value.status_code == 400
    assert "Renaming servers is not supported" in str(refused.value.log_message)


def test_a_request_sets_the_options_and_jupyterhub_limits(
    spawner: HubstackSpawner, config: Config
) -> None:
    spawner.apply_request(resolve(config, {}))
    assert spawner.user_options == {"machine": "small", "environment": "python"}
    assert spawner.orm_spawner.user_options == spawner.user_options
    assert (spawner.cpu_limit, spawner.mem_limit) == (1, 2 * GIB)


def test_a_repository_launch_may_take_as_long_as_a_build(
    spawner: HubstackSpawner, config: Config
) -> None:
    before = spawner.start_timeout
    spawner.apply_request(
        resolve(config, {"environment": "repository", "repo": "https://github.com/o/r"})
    )
    assert spawner.start_timeout == max(before, repository_launch_timeout(config))
    assert spawner.start_timeout > before


def test_local_servers_report_no_address(config: Config) -> None:
    backend = LocalBackend(config)
    state = {"pid": 4242}
    refusal = asyncio.run(backend.refuse_address(state, "127.0.0.1"))
    assert refusal is not None and "none reports it" in refusal
    with pytest.raises(ValueError, match="none reports it"):
        backend.address_reported(state, "127.0.0.1", 20000)
    assert state == {"pid": 4242}
