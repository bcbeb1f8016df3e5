"""Groups of people (a course, a lab, a project) and what the hub gives each: champions
who look after it, its members, its shared folder."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from hubstack.config.base import Strict, problem
from hubstack.units import Size

GROUP_NAME = r"^[a-z][a-z0-9-]{0,29}$"
# Each group G has a hub group "G-champions" holding its champions (the champion role is
# given to that group), so no group of people may be named so.
CHAMPIONS_SUFFIX = "-champions"


def usable_group_name(name: str) -> bool:
    """Whether ``name`` may name a group of people: a safe name (it appears in paths, Unix
    group names and role names) that is not reserved for a group's champions."""
    return re.fullmatch(GROUP_NAME, name) is not None and not name.endswith(CHAMPIONS_SUFFIX)


def _not_reserved(name: str) -> str:
    if name.endswith(CHAMPIONS_SUFFIX):
        raise ValueError(
            f"group names ending in {CHAMPIONS_SUFFIX!r} are reserved for each group's "
            "champions; choose another name"
        )
    return name


GroupName = Annotated[str, Field(pattern=GROUP_NAME), AfterValidator(_not_reserved)]


class SharedFolder(Strict):
    """A shared folder: its own file system, so a full folder stops only its writers."""

    quota: Size = "5G"  # type: ignore[assignment]


class GroupSettings(Strict):
    """One group. Its members are kept by the hub (``source: hub``: this file, champions,
    invitations, admins) or come from the login provider at each login (``source:
    provider``); its champions are always kept by the hub."""

    display: str = ""
    source: Literal["hub", "provider"] = Field(
        "hub", description="who decides the members: the hub, or the login provider"
    )
    champions: list[str] = Field(
        default_factory=list, description="users who look after this group's members"
    )
    members: list[str] = Field(
        default_factory=list, description="users in the group from the start"
    )
    shared: SharedFolder | None = Field(
        None, description="a folder its members read and its champions write; null: none"
    )

    @model_validator(mode="after")
    def _members_of_provider_groups(self) -> Self:
        if self.source == "provider" and self.members:
            raise problem(
                ("members",),
                "must be empty when source is provider: the login provider decides who is "
                "in the group (use source: hub to list members here)",
                self.members,
            )
        return self

    @property
    def hub_managed(self) -> bool:
        return self.source == "hub"
