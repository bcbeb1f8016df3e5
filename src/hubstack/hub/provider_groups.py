"""Groups a login provider reports (GitHub teams, an OpenID Connect claim, LDAP groups) as
the hub's group names, which must be safe names (they appear in paths and role names)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from hubstack.config.groups import usable_group_name

log = logging.getLogger("hubstack")


def hub_groups(provider_groups: Iterable[str], mapping: Mapping[str, str]) -> list[str]:
    """The hub groups for ``provider_groups``: a name in ``mapping`` becomes its value, any
    other name is lowercased with runs of other characters as one hyphen (``My Org:Team
    1`` -> ``my-org-team-1``). A name that still is not a safe group name, or that names a
    group's champions (only the hub makes champions), is left out, with a log line saying
    so: it cannot be a hub group, and the login goes on without it."""
    names: list[str] = []
    for original in provider_groups:
        name = mapping.get(original)
        if name is None:
            name = re.sub(r"[^a-z0-9]+", "-", original.lower()).strip("-")
        if not usable_group_name(name):
            log.warning(
                "Login provider group %r is not usable as a hub group name; ignored", original
            )
            continue
        if name not in names:
            names.append(name)
    return names
