"""Groups of people (a course, a lab, a project) and what the hub gives each: champions
who look after it, its members, its shared folder."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from hubstack.config.base import Strict

GROUP_NAME = r"^[a-z][a-z0-9-]{0,29}$"
# A group's name: it appears in paths (shared/<group>), Unix group names and role names.
GroupName = Annotated[str, Field(pattern=GROUP_NAME)]


class GroupSettings(Strict):
    """One group; members may also come from the login provider (see ``auth``)."""

    display: str = ""
    champions: list[str] = Field(
        default_factory=list, description="users who look after this group's members"
    )
    members: list[str] = Field(
        default_factory=list, description="users in the group from the start"
    )
