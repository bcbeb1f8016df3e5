"""Who may pick what: machine types, environments and Slurm choices open to some groups only.

Pure: the person's hub groups come in as data (the spawner reads them from the hub's
database at every start), so removing someone from a group counts from their next start,
and every decision here is a table test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from hubstack.config.models import Choice
from hubstack.untrusted import InvalidLaunch, choose

# An id and the groups that may pick it (empty: everyone), in the config's order.
Offered = Mapping[str, Sequence[str]]


class ForGroups(Protocol):
    """A machine type or an environment: an id, and who may pick it (empty: everyone)."""

    @property
    def id(self) -> str: ...

    @property
    def groups(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Access:
    """The person a server is for, as far as choosing goes.

    The default, someone in no group who is not an admin, gets only what is open to
    everyone: a caller that forgets to say who it asks for gets less, never more.
    """

    groups: frozenset[str] = frozenset()
    admin: bool = False  # admins look after the hub and may pick everything

    def may_pick(self, groups: Sequence[str]) -> bool:
        return self.admin or not groups or not self.groups.isdisjoint(groups)

    def open_ids(self, offered: Offered) -> list[str]:
        """The ids of ``offered`` this person may pick, in order."""
        return [item for item, groups in offered.items() if self.may_pick(groups)]

    def initial(self, offered: Offered, default: str | None = None) -> str | None:
        """What this person gets without choosing: ``default`` if they may pick it, else the
        first they may pick; None if they may pick none."""
        ids = self.open_ids(offered)
        if default in ids:
            return default
        return ids[0] if ids else None


# Someone in no group, not an admin: picks only what is open to everyone.
NO_GROUPS = Access()


def offered_items(items: Iterable[ForGroups]) -> dict[str, list[str]]:
    """Machine types or environments as :data:`Offered`."""
    return {item.id: list(item.groups) for item in items}


def offered_choices(choice: Choice) -> dict[str, list[str]]:
    """A Slurm choice's values as :data:`Offered`."""
    return {value: choice.groups.get(value, []) for value in choice.choices}


def for_groups(groups: Sequence[str]) -> str:
    return f"for groups: {', '.join(groups)}"


def not_open(label: str, value: str, groups: Sequence[str]) -> str:
    """Why a configured ``value`` is not for this person."""
    return f"The {label} {value!r} is {for_groups(groups)}, and you are in none of them."


def nothing_open(label: str, offered: Offered) -> str:
    """Why someone may pick no ``label`` at all, and who can change that."""
    which = "; ".join(f"{item} is {for_groups(groups)}" for item, groups in offered.items())
    return (
        f"No {label} on this hub is open to you ({which}), and you are in none of these "
        "groups. Ask a champion of one of them, or an admin, to add you."
    )


def pick(
    label: str,
    options: Mapping[str, object],
    key: str,
    offered: Offered,
    access: Access,
    default: str | None = None,
) -> str:
    """The ``key`` of ``options`` if it is an id of ``offered`` that ``access`` may pick;
    without it, :meth:`Access.initial`. Anything else is refused, naming what is allowed."""
    ids = access.open_ids(offered)
    if not ids:
        raise InvalidLaunch(nothing_open(label, offered))
    if key not in options:
        return access.initial(offered, default) or ids[0]
    value = options[key]
    if isinstance(value, str) and value in offered and value not in ids:
        raise InvalidLaunch(
            f"{not_open(label, value, offered[value])} Choose one of: {', '.join(ids)}."
        )
    return choose(label, value, ids)
