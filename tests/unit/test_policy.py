"""Named-server policy: JupyterHub 6's name rule, the length limit and the count limit."""

from __future__ import annotations

from typing import Any

import pytest
from jupyterhub.slugs import is_valid_safe_slug

from hubstack.config import Config
from hubstack.config.models import NamedServers
from hubstack.launch import NAME_RE, PolicyViolation, check_new_server, check_server_name
from hubstack.launch.policy import repository_launch_timeout

POLICY = NamedServers(max=3, name_max_length=20)
RULE = (
    "use lowercase letters, digits and single hyphens, starting with a letter and ending "
    "with a letter or digit, at most 20 characters."
)

VALID = ["a", "dev", "my-server", "a1", "gpu-2", "x-y-z", "a" * 20]
INVALID = [
    "",
    "My-Server",
    "My Server",
    "my_server",
    "1st",
    "-dev",
    "dev-",
    "my--server",
    "my.server",
    "dev/../x",
    "dev\n",
    "café",
    "\uff44\uff45\uff56",  # "dev" in fullwidth letters
    "dév",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass(name: str) -> None:
    check_server_name(name, POLICY)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        check_server_name(name, POLICY)
    assert info.value.message == f"Server name {name!r} is not allowed: {RULE}"
    assert str(info.value) == info.value.message


def test_message_example() -> None:
    with pytest.raises(PolicyViolation, match=r"^Server name 'My Server' is not allowed: use "):
        check_server_name("My Server", POLICY)


def test_length_limit_is_inclusive() -> None:
    policy = NamedServers(name_max_length=8)
    check_server_name("a" * 8, policy)
    with pytest.raises(PolicyViolation, match=r"at most 8 characters\.$"):
        check_server_name("a" * 9, policy)


def test_long_names_are_cut_in_the_message() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_server_name("a" * 5000, POLICY)
    assert "a" * 60 not in info.value.message


@pytest.mark.parametrize("name", VALID + INVALID + ["a" * 30, "a" * 31])
def test_rule_agrees_with_jupyterhub(name: str) -> None:
    """Whatever we accept, JupyterHub 6 accepts too (and vice versa, up to 30 chars)."""
    ours = bool(NAME_RE.match(name)) and len(name) <= 30
    assert ours == is_valid_safe_slug(name)


def test_existing_server_is_always_allowed() -> None:
    """Even with an old invalid name, over the count, or with named servers now disabled."""
    existing = {"", "a", "b", "c", "Old_Name"}
    check_new_server("a", existing, POLICY)
    check_new_server("Old_Name", existing, POLICY)
    check_new_server("a", existing, NamedServers(max=0))


def test_new_server_below_the_limit_is_allowed() -> None:
    check_new_server("c", {"a", "b"}, POLICY)


def test_new_server_at_the_limit_is_refused() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_new_server("d", {"a", "b", "c"}, POLICY)
    assert info.value.message == (
        "You already have 3 named servers (the maximum); delete one to create another."
    )


def test_default_server_does_not_count() -> None:
    check_new_server("c", {"", "a", "b"}, POLICY)
    with pytest.raises(PolicyViolation, match="You already have 3 named servers"):
        check_new_server("d", ["", "a", "b", "c"], POLICY)


def test_limit_of_one_uses_the_singular() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_new_server("b", {"a"}, NamedServers(max=1))
    assert info.value.message == (
        "You already have 1 named server (the maximum); delete one to create another."
    )


def test_limit_lowered_below_what_a_user_has() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_new_server("e", {"a", "b", "c", "d"}, NamedServers(max=2))
    assert info.value.message == (
        "You already have 4 named servers (the maximum is 2); delete 3 to create another."
    )


def test_max_zero_disables_named_servers() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_new_server("dev", {""}, NamedServers(max=0))
    assert info.value.message == "Named servers are disabled on this hub."


def test_new_server_name_is_checked() -> None:
    with pytest.raises(PolicyViolation, match=r"^Server name 'Dev' is not allowed"):
        check_new_server("Dev", set(), POLICY)


def test_name_is_checked_before_the_count() -> None:
    with pytest.raises(PolicyViolation, match=r"^Server name 'Dev' is not allowed"):
        check_new_server("Dev", {"a", "b", "c"}, POLICY)


def test_default_is_reserved_for_the_default_server() -> None:
    with pytest.raises(PolicyViolation, match="reserved for your default server"):
        check_server_name("default", NamedServers())


@pytest.mark.parametrize(
    ("settings", "seconds"),
    [
        ({}, 2 * 900 + 120),
        ({"binder": {"limits": {"time": "10m"}}}, 2 * 600 + 120),
        ({"backend": {"type": "slurm", "slurm": {"start_timeout": "1h"}}}, 2 * 900 + 3600 + 120),
    ],
)
def test_a_repository_launch_may_take_fetch_build_queue_and_start(
    settings: dict[str, Any], seconds: int
) -> None:
    assert repository_launch_timeout(Config.model_validate(settings)) == seconds
