"""Launch options from the form and the REST API: defaults, and every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.launch import (
    FIELDS,
    InvalidLaunch,
    LaunchRequest,
    options_from_form,
    quote_untrusted,
    resolve,
)


@pytest.fixture
def config() -> Config:
    return validate(
        {
            "machines": [
                {"id": "small", "display": "Small", "cpu": 1, "memory": "2G"},
                {"id": "medium", "display": "Medium", "cpu": 2, "memory": "4G"},
            ],
            "environments": [
                {"id": "python", "display": "Python 3", "prefix": "/opt/envs/python"},
                {"id": "r", "display": "R", "prefix": "/opt/envs/r"},
            ],
        }
    )


def refusal(config: Config, options: Any) -> str:
    with pytest.raises(InvalidLaunch) as info:
        resolve(config, options)
    assert str(info.value) == info.value.message
    return info.value.message


@pytest.mark.parametrize("options", [None, {}])
def test_nothing_sent_gets_the_first_choices(config: Config, options: Any) -> None:
    request = resolve(config, options)
    assert request.machine.id == "small"
    assert request.environment.id == "python"


def test_chosen_ids_resolve_to_the_configured_objects(config: Config) -> None:
    request = resolve(config, {"machine": "medium", "environment": "r"})
    assert request == LaunchRequest(machine=config.machines[1], environment=config.environments[1])
    assert request.machine.cpu == 2


def test_an_omitted_field_takes_its_default(config: Config) -> None:
    assert resolve(config, {"environment": "r"}).machine.id == "small"
    assert resolve(config, {"machine": "medium"}).environment.id == "python"


def test_user_options_round_trip(config: Config) -> None:
    request = resolve(config, {"machine": "medium", "environment": "r"})
    assert request.as_user_options() == {"machine": "medium", "environment": "r"}
    assert resolve(config, request.as_user_options()) == request


def test_fields_are_the_user_options_keys(config: Config) -> None:
    assert FIELDS == ("machine", "environment", "interface")
    # The interface is left out while it is the environment's default, as the form may.
    assert tuple(resolve(config, None).as_user_options()) == FIELDS[:2]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"cpu": 64}, "cpu"),
        ({"machine": "small", "memory": "64G"}, "memory"),
        ({"machine": "small", "environment": "python", "cpu": "64"}, "cpu"),
    ],
)
def test_resource_overrides_are_refused_not_applied(
    config: Config, options: dict[str, object], name: str
) -> None:
    assert refusal(config, options) == (
        f"Unknown option '{name}'. "
        "Allowed options: machine, environment, interface, repo, ref, commit."
    )


def test_unknown_machine_lists_the_choices(config: Config) -> None:
    assert refusal(config, {"machine": "huge"}) == (
        "Unknown machine type 'huge'. Choose one of: small, medium."
    )


def test_unknown_environment_lists_the_choices(config: Config) -> None:
    assert refusal(config, {"environment": "julia"}) == (
        "Unknown environment 'julia'. Choose one of: python, r, repository."
    )


@pytest.mark.parametrize("value", ["", "Small", " small", "small ", "small\n"])
def test_ids_must_match_exactly(config: Config, value: str) -> None:
    assert refusal(config, {"machine": value}).startswith("Unknown machine type ")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (["small"], "a list"),
        ({"id": "small"}, "an object"),
        (2, "a number"),
        (1.5, "a number"),
        (True, "true/false"),
        (None, "null"),
    ],
)
def test_non_string_values_are_refused(config: Config, value: object, kind: str) -> None:
    assert refusal(config, {"machine": value}) == (
        f"The machine type must be given as a string id, not {kind}. Choose one of: small, medium."
    )


def test_non_string_environment_is_refused(config: Config) -> None:
    assert refusal(config, {"environment": ["python", "r"]}).startswith(
        "The environment must be given as a string id, not a list."
    )


@pytest.mark.parametrize("options", [["machine"], "small", 5])
def test_options_that_are_not_an_object_are_refused(config: Config, options: object) -> None:
    assert refusal(config, options).startswith(
        "Launch options must be an object with the keys: "
        "machine, environment, interface, repo, ref, commit; got "
    )


def test_long_values_are_cut_in_the_message(config: Config) -> None:
    message = refusal(config, {"machine": "x" * 10_000})
    assert "x" * 56 not in message
    assert "'" + "x" * 55 + "...'" in message
    assert len(message) < 140


def test_long_unknown_keys_are_cut_in_the_message(config: Config) -> None:
    message = refusal(config, {"k" * 500: "small"})
    assert "k" * 56 not in message
    assert message.endswith(
        "...'. Allowed options: machine, environment, interface, repo, ref, commit."
    )


@pytest.mark.parametrize("value", ["\x1b[2J\x1b[31mred", "a\nb\rc\x00d", "evil\u202etxt.exe"])
def test_control_characters_are_escaped_in_the_message(config: Config, value: str) -> None:
    message = refusal(config, {"machine": value})
    assert message.isprintable()
    assert repr(value) in message


def test_quote_untrusted_stays_within_the_limit() -> None:
    for text in ["x" * 61, "\x00" * 100, "\U0001f600" * 100, "'\"" * 100]:
        shown = quote_untrusted(text)
        assert len(shown) <= 60
        assert shown.isprintable()
        assert shown[-4:-1] == "..."
    assert quote_untrusted("short") == "'short'"


# --- options_from_form -------------------------------------------------------------------


def test_form_values_are_unwrapped_and_xsrf_ignored() -> None:
    form = {"_xsrf": ["token"], "machine": ["medium"], "environment": ["r"]}
    assert options_from_form(form) == {"machine": "medium", "environment": "r"}


def test_form_values_may_be_bytes() -> None:
    assert options_from_form({"machine": [b"medium"], "environment": [b"r"]}) == {
        "machine": "medium",
        "environment": "r",
    }


def test_form_output_resolves(config: Config) -> None:
    options = options_from_form({"_xsrf": ["t"], "machine": ["medium"]})
    assert resolve(config, options).machine.id == "medium"


def test_empty_form_gives_defaults(config: Config) -> None:
    assert options_from_form({"_xsrf": ["t"]}) == {}
    assert resolve(config, options_from_form({})).machine.id == "small"


@pytest.mark.parametrize("field", FIELDS)
def test_a_field_sent_twice_is_refused(field: str) -> None:
    with pytest.raises(InvalidLaunch, match=r"^Choose exactly one .*; the form sent 2 values\.$"):
        options_from_form({field: ["a", "b"]})


def test_a_field_sent_without_value_is_refused() -> None:
    with pytest.raises(InvalidLaunch, match="the form sent 0 values"):
        options_from_form({"machine": []})


@pytest.mark.parametrize("field", ["cpu", "memory", "machine_file", "xsrf"])
def test_unknown_form_fields_are_refused(field: str) -> None:
    with pytest.raises(InvalidLaunch) as info:
        options_from_form({"machine": ["small"], field: ["64"]})
    assert info.value.message == (
        f"Unknown option '{field}'. Allowed options: machine, environment, interface."
    )


def test_form_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(InvalidLaunch, match=r"^The machine type sent is not valid UTF-8 text\.$"):
        options_from_form({"machine": [b"\xff\xfe"]})


def test_form_values_that_are_not_text_are_refused() -> None:
    with pytest.raises(InvalidLaunch, match=r"^The environment must be sent as text, not a number"):
        options_from_form({"environment": [3]})  # type: ignore[list-item]


# -- environments from a repository -----------------------------------------------------------

REPO = "https://github.com/org/analysis"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_repository_launch_resolves_to_its_source(config: Config) -> None:
    request = resolve(config, {"environment": "repository", "repo": REPO, "ref": "v2"})
    assert request.repo is not None
    assert (request.repo.provider, request.repo.url, request.repo.ref) == ("gh", REPO, "v2")
    assert request.environment.id == "repository"
    assert request.commit is None
    assert request.as_user_options() == {
        "machine": "small",
        "environment": "repository",
        "repo": REPO,
        "ref": "v2",
    }


def test_a_pinned_commit_round_trips(config: Config) -> None:
    options = {"environment": "repository", "repo": REPO, "ref": "main", "commit": COMMIT}
    request = resolve(config, options)
    assert request.commit == COMMIT
    assert resolve(config, request.as_user_options()) == request


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"environment": "repository"}, "Give the URL of the git repository"),
        ({"environment": "repository", "repo": 5}, "must be text"),
        ({"environment": "repository", "repo": "file:///etc"}, "not allowed"),
        ({"environment": "repository", "repo": REPO, "ref": "-x"}, "-"),
        ({"environment": "repository", "repo": REPO, "commit": "abc"}, "40-character"),
        ({"environment": "python", "repo": REPO}, "only used with the environment"),
        ({"environment": "python", "commit": COMMIT}, "only used with the environment"),
    ],
)
def test_repository_options_are_checked(config: Config, options: Any, says: str) -> None:
    assert says in refusal(config, options)


def test_without_binder_there_is_no_repository_choice(config: Config) -> None:
    config.binder.enabled = False
    assert "Unknown option 'repo'" in refusal(config, {"repo": REPO})
    assert "Unknown environment 'repository'" in refusal(config, {"environment": "repository"})


def test_the_form_drops_empty_repository_fields_for_other_environments(config: Config) -> None:
    form = {"environment": ["python"], "repo": [""], "ref": [""]}
    assert options_from_form(form, config) == {"environment": "python"}
    form = {"environment": ["repository"], "repo": [REPO], "ref": [""]}
    assert options_from_form(form, config) == {"environment": "repository", "repo": REPO, "ref": ""}


def test_the_environment_id_repository_is_reserved() -> None:
    from hubstack.config.load import ConfigError

    with pytest.raises(ConfigError, match="reserved"):
        validate({"environments": [{"id": "repository", "display": "X", "prefix": "/opt/x"}]})
