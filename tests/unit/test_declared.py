"""Declared environments (``repository`` or ``spec`` instead of a hand-built ``prefix``):
what the config accepts, what names a build (so what changes rebuild), the plan of a server
of one, and what the spawn form and a start say while it is being built."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from hubstack.config import ConfigError
from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.envs.cache import BuiltEnv
from hubstack.envs.declared import Declared, State, current_keys, in_use, origin_of
from hubstack.envs.repository import PrepareFailed, Repositories
from hubstack.hub.status import builds_in_use
from hubstack.launch import render_options_form, resolve
from hubstack.launch.plan import BuiltRepository, server_plan
from hubstack.system import cgroups
from hubstack.system.accounts import Account

SPEC = {"requirements": "numpy\npandas\n", "postBuild": "#!/bin/bash\necho hi\n"}


def config(tmp_path: Path, spec: dict[str, str] = SPEC, **extra: Any) -> Config:
    environment = {"id": "data", "display": "Data science", "spec": spec, **extra}
    return validate(
        {
            "hub": {"data_dir": str(tmp_path / "data")},
            "binder": {"root": str(tmp_path / "binder")},
            "environments": [environment],
        }
    )


@pytest.mark.parametrize(
    ("environment", "key", "fragment"),
    [
        ({"prefix": "/opt/e", "spec": {"apt.txt": "figlet"}}, "spec", "prefix and spec given"),
        (
            {"prefix": "/opt/e", "repository": {"url": "https://x.org/r"}},
            "repository",
            "exactly one",
        ),
        ({}, "prefix", "none given"),
        ({"spec": {"../requirements.txt": "x"}}, "spec", "is a path"),
        ({"spec": {"binder/apt.txt": "x"}}, "spec", "is a path"),
        ({"spec": {"setup.py": "x"}}, "spec", "requirements.txt, environment.yml, apt.txt"),
        ({"spec": {}}, "spec", "at least one file"),
        ({"spec": {"requirements": "a", "requirements.txt": "b"}}, "spec", "given twice"),
        ({"repository": {"url": "file:///etc"}}, "repository.url", "pattern"),
        ({"repository": {"url": "https://x.org/r", "ref": "a b"}}, "repository.ref", "pattern"),
    ],
)
def test_bad_declarations_name_the_key_and_what_is_allowed(
    environment: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"environments": [{"id": "e", "display": "E", **environment}]}, "t.yaml")
    assert f"  - environments[0].{key}" in str(info.value)
    assert fragment in str(info.value)


def test_a_spec_takes_short_names_and_ends_files_with_a_line_break(tmp_path: Path) -> None:
    environment = config(tmp_path, {"requirements": "numpy", "apt.txt": ""}).environments[0]
    assert environment.spec == {"requirements.txt": "numpy\n", "apt.txt": ""}
    assert environment.declared and environment.prefix is None


def test_the_files_name_the_build_and_nothing_else_does(tmp_path: Path) -> None:
    """Only what the build reads changes the key: not the id, name, interfaces or groups."""
    first = config(tmp_path)
    repositories = Repositories(first, cgroups.NoLimits())
    repositories.cache.work.mkdir(parents=True)
    key = repositories._files_key
    same = config(tmp_path, display="Renamed", interfaces=["lab", "voila"], groups=["x"])
    assert key(first.environments[0].spec)[1] == key(same.environments[0].spec)[1]
    for changed in (
        {**SPEC, "requirements": "numpy\npandas\nscipy\n"},
        {**SPEC, "postBuild": "#!/bin/bash\necho bye\n"},
        {**SPEC, "apt.txt": "figlet\n"},
    ):
        other = config(tmp_path, changed).environments[0].spec
        assert key(other)[1] != key(first.environments[0].spec)[1], changed
    assert origin_of(first.environments[0])[0] == "spec:data"
    assert origin_of(first.environments[0]) != origin_of(
        config(tmp_path, {"apt.txt": "x"}).environments[0]
    )


def built_env(tmp_path: Path, key: str = "ab" * 32) -> BuiltEnv:
    return BuiltEnv(
        key,
        tmp_path / "binder/envs" / key,
        "spec:data",
        "h",
        "",
        "3.11",
        "requirements",
        1,
        0.0,
        0.0,
    )


def test_a_declared_environment_is_refused_and_marked_until_built(tmp_path: Path) -> None:
    hub = config(tmp_path)
    declared = Declared(hub, Repositories(hub, cgroups.NoLimits()))
    environment = hub.environments[0]
    assert "is being built" in (declared.refusal(environment) or "")
    form = render_options_form(hub, building=declared.form_notes())
    assert "Being built; not ready yet" in form
    declared.states["data"] = State(failed="no space")
    assert "could not be built" in (declared.refusal(environment) or "")
    declared.states["data"] = State(built=built_env(tmp_path))
    assert declared.refusal(environment) is None and declared.form_notes() == {}
    assert "Being built" not in render_options_form(hub, building=declared.form_notes())


def test_a_server_of_a_declared_environment_runs_its_build_and_opens_the_home(
    tmp_path: Path,
) -> None:
    hub = config(tmp_path)
    env = built_env(tmp_path)
    account = Account("hs-ann", 1001, 1001, Path("/home/hs-ann"))
    request = resolve(hub, {"environment": "data"})
    built = BuiltRepository(env.prefix, None, apt=False, python="3.11")
    plan = server_plan(hub, request, "", account, Path("/v"), {"JUPYTERHUB_API_URL": "x"}, built)
    assert plan.prefix == env.prefix and plan.argv[0] == str(
        env.prefix / "bin/jupyterhub-singleuser"
    )
    assert plan.workdir == account.home and "REPO_DIR" not in plan.env
    assert plan.env["PIP_PREFIX"] == "/home/hs-ann/.local", "pip install goes to the user's"
    with pytest.raises(ValueError, match="needs its build"):
        server_plan(hub, request, "", account, Path("/v"), {"JUPYTERHUB_API_URL": "x"})


def test_prune_keeps_what_records_and_running_servers_name(tmp_path: Path) -> None:
    hub = config(tmp_path)
    records = tmp_path / "binder/declared"
    records.mkdir(parents=True)
    (records / "data").write_text("k1\n")
    (records / "gone").write_text("k0\n")  # an environment the config no longer declares
    assert current_keys(hub) == {"k1"}
    assert in_use([{"env_key": "k2"}, {}, {"backend": {}}]) == {"k2"}
    assert builds_in_use(hub) == {"k1"}, "no database before the hub's first start"
    assert not (tmp_path / "data/jupyterhub.sqlite").exists(), "and prune makes none"


def test_a_spec_build_is_not_rebuilt_as_a_repository(tmp_path: Path) -> None:
    hub = config(tmp_path)
    with pytest.raises(PrepareFailed, match="hubstack env build data"):
        asyncio.run(Repositories(hub, cgroups.NoLimits()).rebuild(built_env(tmp_path), print))


def test_a_spec_the_builder_refuses_is_logged_marked_and_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before any build (a Python this hub has no source for), as the hub's start
    runs it: the reason in the hub's log, the form and a start say it could not be built."""
    hub = config(tmp_path, {"runtime.txt": "python-3.2"}).model_copy(deep=True)
    hub.binder.python_sources = []
    declared = Declared(hub, Repositories(hub, cgroups.NoLimits()))

    async def start_and_wait() -> None:
        declared.start(logging.getLogger("hub"))
        assert declared._task is not None
        await declared._task

    with caplog.at_level(logging.INFO, "hub"):
        asyncio.run(start_and_wait())
    [failure] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.getMessage().startswith("environment data: runtime.txt asks for")
    assert declared.form_notes() == {"data": "Could not be built"}
    assert "could not be built" in (declared.refusal(hub.environments[0]) or "")
    assert current_keys(hub) == set(), "nothing recorded"
