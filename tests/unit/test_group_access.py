"""Access by group: who may pick which machine type, environment and Slurm choice, as the
form shows it and as a launch is decided (the pure decision, the config, the spawner's 400)."""

from __future__ import annotations

import asyncio
import re
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tornado import web

from hubstack.config import ConfigError
from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.hub.spawner import access_of, checked_request
from hubstack.launch import InvalidLaunch, render_options_form, resolve
from hubstack.launch.access import NO_GROUPS, Access

LAB_A = Access(frozenset({"lab-a"}))
LAB_B = Access(frozenset({"lab-b", "course"}))
ADMIN = Access(admin=True)

MACHINES = [
    {"id": "gpu", "display": "GPU", "cpu": 2, "memory": "4G", "groups": ["lab-a"]},
    {"id": "small", "display": "Small", "cpu": 1, "memory": "2G"},
    {"id": "big", "display": "Big", "cpu": 4, "memory": "8G", "groups": ["lab-a", "lab-b"]},
]
ENVIRONMENTS = [
    {"id": "torch", "display": "PyTorch", "prefix": "/opt/envs/torch", "groups": ["lab-a"]},
    {"id": "python", "display": "Python 3", "prefix": "/opt/envs/python"},
]
SLURM_FIELDS = {
    "partition": {
        "choices": ["gpu", "shared", "debug"],
        "default": "gpu",
        "groups": {"gpu": ["lab-a"], "debug": ["lab-b"]},
    },
    "account": {"choices": ["lab-a", "lab-b"], "groups": {"lab-a": ["lab-a"], "lab-b": ["lab-b"]}},
    "extras": [
        {
            "id": "feature",
            "display": "Node feature",
            "sbatch": "--constraint",
            "choices": ["avx2", "a100"],
            "groups": {"a100": ["lab-a"]},
        }
    ],
}


def local_config(**overrides: Any) -> Config:
    return validate(
        {"machines": MACHINES, "environments": ENVIRONMENTS, "binder": {"enabled": False}}
        | overrides
    )


def slurm_config(fields: dict[str, Any] = SLURM_FIELDS) -> Config:
    backend = {"type": "slurm", "slurm": {"fields": fields}}
    return local_config(backend=backend)


@pytest.mark.parametrize(
    ("access", "groups", "may"),
    [
        (NO_GROUPS, [], True),
        (NO_GROUPS, ["lab-a"], False),
        (LAB_A, ["lab-a"], True),
        (LAB_A, ["lab-b", "lab-a"], True),
        (LAB_B, ["lab-a"], False),
        (ADMIN, ["lab-a"], True),
    ],
)
def test_a_choice_for_groups_is_for_their_members(
    access: Access, groups: list[str], may: bool
) -> None:
    assert access.may_pick(groups) is may


@pytest.mark.parametrize(
    ("access", "options", "machine", "environment"),
    [
        (NO_GROUPS, {}, "small", "python"),  # the first open choice when the first is not
        (LAB_A, {}, "gpu", "torch"),
        (LAB_B, {"machine": "big"}, "big", "python"),
        (LAB_A, {"machine": "big", "environment": "python"}, "big", "python"),
        (ADMIN, {"machine": "gpu", "environment": "torch"}, "gpu", "torch"),
    ],
)
def test_members_pick_their_groups_choices(
    access: Access, options: dict[str, str], machine: str, environment: str
) -> None:
    request = resolve(local_config(), options, access)
    assert (request.machine.id, request.environment.id) == (machine, environment)


@pytest.mark.parametrize(
    ("access", "options", "message"),
    [
        (
            NO_GROUPS,
            {"machine": "gpu"},
            "The machine type 'gpu' is for groups: lab-a, and you are in none of them. "
            "Choose one of: small.",
        ),
        (
            LAB_B,
            {"machine": "gpu"},
            "The machine type 'gpu' is for groups: lab-a, and you are in none of them. "
            "Choose one of: small, big.",
        ),
        (
            LAB_B,
            {"environment": "torch"},
            "The environment 'torch' is for groups: lab-a, and you are in none of them. "
            "Choose one of: python.",
        ),
        # An id that does not exist is refused as before, listing only what is open.
        (NO_GROUPS, {"machine": "huge"}, "Unknown machine type 'huge'. Choose one of: small."),
    ],
)
def test_others_are_refused_with_the_groups_named(
    access: Access, options: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidLaunch) as refused:
        resolve(local_config(), options, access)
    assert refused.value.message == message


def test_the_default_is_someone_in_no_group() -> None:
    """A caller that does not say who it asks for gets only what is open to everyone."""
    assert resolve(local_config(), {}).machine.id == "small"
    with pytest.raises(InvalidLaunch, match="is for groups: lab-a"):
        resolve(local_config(), {"machine": "gpu"})


def test_a_repository_launch_uses_a_machine_the_user_may_pick() -> None:
    config = validate({"machines": MACHINES, "environments": ENVIRONMENTS})
    repo = {"environment": "repository", "repo": "https://github.com/o/r"}
    assert resolve(config, repo, NO_GROUPS).machine.id == "small"
    assert resolve(config, repo | {"machine": "gpu"}, LAB_A).machine.id == "gpu"
    with pytest.raises(InvalidLaunch, match="'gpu' is for groups: lab-a"):
        resolve(config, repo | {"machine": "gpu"}, NO_GROUPS)


NOTHING_OPEN = [
    (
        {"machines": [MACHINES[0]]},
        "No machine type on this hub is open to you (gpu is for groups: lab-a), and you are "
        "in none of these groups. Ask a champion of one of them, or an admin, to add you.",
    ),
    (
        {"environments": [ENVIRONMENTS[0]]},
        "No environment on this hub is open to you (torch is for groups: lab-a), and you are "
        "in none of these groups. Ask a champion of one of them, or an admin, to add you.",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), NOTHING_OPEN)
def test_nothing_to_pick_refuses_every_start(overrides: dict[str, Any], message: str) -> None:
    config = local_config(**overrides)
    asked = {"machine": "gpu"} if "machines" in overrides else {"environment": "torch"}
    for options in ({}, asked):
        with pytest.raises(InvalidLaunch) as refused:
            resolve(config, options, LAB_B)
        assert refused.value.message == message
    resolve(config, {}, LAB_A)


# -- Slurm choices ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "options", "expected"),
    [
        (NO_GROUPS, {}, {"partition": "shared", "feature": "avx2"}),  # no account is open
        (LAB_A, {}, {"partition": "gpu", "account": "lab-a", "feature": "avx2"}),
        (LAB_B, {}, {"partition": "shared", "account": "lab-b", "feature": "avx2"}),
        (LAB_B, {"partition": "debug"}, {"partition": "debug", "account": "lab-b"}),
        (LAB_A, {"feature": "a100"}, {"partition": "gpu", "feature": "a100"}),
        (ADMIN, {"partition": "debug", "account": "lab-a"}, {"account": "lab-a"}),
    ],
)
def test_slurm_choices_for_groups(
    access: Access, options: dict[str, str], expected: dict[str, str]
) -> None:
    if "account" not in expected and access is NO_GROUPS:
        with pytest.raises(InvalidLaunch, match="No account on this hub is open to you"):
            resolve(slurm_config(), options, access)
        fields = {**SLURM_FIELDS, "account": {"choices": ["lab-a", "open"]}}
        chosen = resolve(slurm_config(fields), options, access).slurm
        assert chosen is not None and chosen.account == "lab-a"
    else:
        chosen = resolve(slurm_config(), options, access).slurm
        assert chosen is not None
    options = chosen.as_user_options()
    assert {key: options[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("access", "options", "message"),
    [
        (
            LAB_B,
            {"partition": "gpu"},
            "The partition 'gpu' is for groups: lab-a, and you are in none of them. "
            "Choose one of: shared, debug.",
        ),
        (
            LAB_A,
            {"account": "lab-b"},
            "The account 'lab-b' is for groups: lab-b, and you are in none of them. "
            "Choose one of: lab-a.",
        ),
        (
            LAB_B,
            {"feature": "a100"},
            "The Node feature 'a100' is for groups: lab-a, and you are in none of them. "
            "Choose one of: avx2.",
        ),
    ],
)
def test_slurm_choices_of_other_groups_are_refused(
    access: Access, options: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidLaunch) as refused:
        resolve(slurm_config(), options, access)
    assert refused.value.message == message


@pytest.mark.parametrize(
    ("fields", "key", "fragment"),
    [
        (
            {"partition": {"choices": ["a", "b"], "groups": {"gpu": ["lab-a"]}}},
            "backend.slurm.fields.partition.groups.gpu",
            "is not one of the choices: a, b",
        ),
        (
            {"account": {"choices": ["x"], "groups": {"x": ["Lab A"]}}},
            "backend.slurm.fields.account.groups.x[0]",
            "use 1-30 lowercase letters, digits and hyphens",
        ),
        (
            {"extras": [{**SLURM_FIELDS["extras"][0], "groups": {"h100": ["lab-a"]}}]},
            "backend.slurm.fields.extras[0].groups.h100",
            "is not one of the choices: avx2, a100",
        ),
    ],
)
def test_config_refuses_groups_of_choices_it_does_not_offer(
    fields: dict[str, Any], key: str, fragment: str
) -> None:
    data = {"backend": {"type": "slurm", "slurm": {"fields": fields}}}
    with pytest.raises(ConfigError) as info:
        validate(data, "test.yaml")
    problems = [p for p in info.value.problems if p.startswith(f"{key}: ")]
    assert problems, info.value.problems
    assert fragment in problems[0]


# -- the form -----------------------------------------------------------------------------


def radios(html: str, field: str) -> list[str]:
    return re.findall(rf'name="{field}" id="[^"]*" value="([^"]*)"', html)


def checked(html: str, field: str) -> str | None:
    match = re.search(rf'name="{field}" id="[^"]*" value="([^"]*)"[^>]*checked', html, re.S)
    return match.group(1) if match else None


def select_options(html: str, name: str) -> list[str]:
    select = re.search(rf'<select[^>]*name="{name}".*?</select>', html, re.S)
    return re.findall(r'<option value="([^"]*)"', select.group(0)) if select else []


@pytest.mark.parametrize(
    ("access", "machines", "environments"),
    [
        (NO_GROUPS, ["small"], ["python"]),
        (LAB_A, ["gpu", "small", "big"], ["torch", "python"]),
        (LAB_B, ["small", "big"], ["python"]),
        (ADMIN, ["gpu", "small", "big"], ["torch", "python"]),
    ],
)
def test_the_form_shows_only_what_the_user_may_pick(
    access: Access, machines: list[str], environments: list[str]
) -> None:
    html = render_options_form(local_config(), access=access)
    assert radios(html, "machine") == machines
    assert radios(html, "environment") == environments
    assert checked(html, "machine") == machines[0]
    assert "hs-none" not in html


def test_the_form_says_who_a_choice_is_for_and_keeps_a_previous_choice_only_if_open() -> None:
    html = unescape(render_options_form(local_config(), {"machine": "gpu"}, access=LAB_B))
    assert checked(html, "machine") == "small"
    refusal = "The machine type 'gpu' is for groups: lab-a, and you are in none of them."
    assert f"{refusal} It is not selected." in html
    assert "For groups: lab-a, lab-b" in html  # on the card of "big"
    html = render_options_form(local_config(), {"machine": "big"}, access=LAB_B)
    assert checked(html, "machine") == "big"
    assert "not selected" not in html


def test_the_form_says_why_a_linked_slurm_choice_is_not_selected() -> None:
    link = {"partition": "gpu", "feature": "a100"}
    html = unescape(render_options_form(slurm_config(), link=link, access=LAB_B))
    assert "The partition 'gpu' is for groups: lab-a" in html
    assert "The Node feature 'a100' is for groups: lab-a" in html
    assert re.search(r'<option value="shared" selected', html)


@pytest.mark.parametrize(("overrides", "message"), NOTHING_OPEN)
def test_the_form_says_when_there_is_nothing_to_pick(
    overrides: dict[str, Any], message: str
) -> None:
    html = unescape(render_options_form(local_config(**overrides), access=LAB_B))
    assert message in html
    assert "hs-none" in html


@pytest.mark.parametrize(
    ("access", "partitions", "accounts", "features"),
    [
        (LAB_A, ["gpu", "shared"], ["lab-a"], ["avx2", "a100"]),
        (LAB_B, ["shared", "debug"], ["lab-b"], ["avx2"]),
        (ADMIN, ["gpu", "shared", "debug"], ["lab-a", "lab-b"], ["avx2", "a100"]),
    ],
)
def test_the_form_offers_the_slurm_choices_the_user_may_pick(
    access: Access, partitions: list[str], accounts: list[str], features: list[str]
) -> None:
    html = render_options_form(slurm_config(), access=access)
    assert select_options(html, "partition") == partitions
    assert select_options(html, "account") == accounts
    assert select_options(html, "feature") == features
    selected = re.search(r'<option value="([^"]*)" selected', html)
    assert selected and selected.group(1) == partitions[0]


def test_the_form_says_when_no_slurm_choice_is_open() -> None:
    html = unescape(render_options_form(slurm_config(), access=NO_GROUPS))
    assert select_options(html, "account") == []
    assert "No account on this hub is open to you (lab-a is for groups: lab-a; lab-b is" in html


# -- the spawner reads the user's groups from the hub ----------------------------------------


def hub_user(name: str, groups: list[str], admin: bool = False) -> SimpleNamespace:
    """The parts of JupyterHub's User the spawner reads: the name, groups and admin flag."""
    return SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups], admin=admin)


def test_the_users_hub_groups_decide() -> None:
    assert access_of(hub_user("ann", ["lab-a"])) == LAB_A
    assert access_of(hub_user("root", [], admin=True)) == ADMIN


def test_a_refusal_is_http_400_with_the_reason(tmp_path: Path) -> None:
    # A start also checks budgets, in the usage ledger under the hub's data directory.
    config_json = local_config(hub={"data_dir": str(tmp_path)}).model_dump_json()
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(checked_request(config_json, hub_user("ben", ["lab-b"]), {"machine": "gpu"}))
    assert refused.value.status_code == 400
    assert "'gpu' is for groups: lab-a" in str(refused.value.log_message)
    request = asyncio.run(checked_request(config_json, hub_user("ann", ["lab-a"]), {}))
    assert request.machine.id == "gpu"
