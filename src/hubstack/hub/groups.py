"""Groups, their members and their champions, as JupyterHub groups, roles and scopes.

Each group G of the config is a JupyterHub group G, and its champions are the members of a
JupyterHub group ``G-champions`` to which a role ``G-champion`` is given. The role's scopes
are JupyterHub's own, filtered to G (``!group=G``): JupyterHub checks every request, the
admin page shows a champion only G's members, and admins change champions on the admin
page or with ``hubstack group`` (both edit the ``G-champions`` group) with no extra code.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.groups import GroupUsersAPIHandler
from tornado import web
from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config
from hubstack.config.groups import CHAMPIONS_SUFFIX, GroupSettings

# A service with no process: the ``hubstack group`` command acts as it, with a token it
# issues itself in the hub's database for a few minutes (see ``cli_token``).
CLI_SERVICE = "hubstack-cli"
# read:servers: `hubstack status` lists the servers.
CLI_SCOPES = ["admin:groups", "list:users", "read:users", "read:servers"]
CLI_TOKEN_SECONDS = 300


def champions_group(group: str) -> str:
    return group + CHAMPIONS_SUFFIX


def champion_role(group: str) -> str:
    # Role names must end in a letter or digit; group names may end in "-".
    return f"{group}-champion"


def champion_scopes(group: str, settings: GroupSettings) -> list[str]:
    """What a champion of ``group`` may do, to the group's members only: see them and
    their servers on the admin page, stop and start those servers (``servers``, not
    ``access:servers``: not get into them), and change the members of a hub-managed group."""
    only = f"!group={group}"
    scopes = [
        "admin-ui",
        f"list:users{only}",
        f"read:users{only}",
        f"servers{only}",
        f"list:groups{only}",
        f"read:groups{only}",
    ]
    if settings.hub_managed:
        scopes.append(f"groups{only}")
    return scopes


class GroupMembersHandler(GroupUsersAPIHandler):
    """JupyterHub's handler for adding members, refusing a champion who adds a hub admin.

    A champion's ``servers!group=G`` reaches whoever is in G, so adding someone hands the
    champion their servers (stop, start, delete a named server with its volume). JupyterHub
    lets anyone with ``groups!group=G`` add any user; for an admin that would be a way to
    act on the hub's admins, so only those who may change every group (admins, the
    ``hubstack group`` command) may add one."""

    def post(self, group_name: str) -> None:
        if "admin:groups" not in self.expanded_scopes:
            names = (self.get_json_body() or {}).get("users") or []
            admins = sorted(
                str(name)
                for name in names
                if isinstance(name, str) and (user := self.find_user(name)) and user.admin
            )
            if admins:
                raise web.HTTPError(
                    403,
                    f"{', '.join(admins)} is a hub admin; only an admin can add an admin to "
                    f"the group {group_name}.",
                )
        super().post(group_name)


def replace_group_members_handler(handlers: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """JupyterHub's handlers with its group-members handler swapped for ours (JupyterHub
    registers its own before any extra handler, so adding one would not take its place)."""
    return [
        (route, GroupMembersHandler if handler is GroupUsersAPIHandler else handler, *rest)
        for route, handler, *rest in handlers
    ]


def champion_roles(config: Config) -> list[dict[str, Any]]:
    return [
        {
            "name": champion_role(name),
            "description": f"Champions of the group {name}",
            "scopes": champion_scopes(name, settings),
            "groups": [champions_group(name)],
        }
        for name, settings in config.groups.items()
    ]


def config_memberships(config: Config) -> dict[str, list[str]]:
    """The members each JupyterHub group gets from the config file."""
    memberships: dict[str, list[str]] = {}
    for name, settings in config.groups.items():
        memberships[name] = list(settings.members)
        memberships[champions_group(name)] = list(settings.champions)
    return memberships


def hub_managed_groups(config: Config) -> frozenset[str]:
    """Groups whose members only the hub decides: champions' groups, and groups with
    ``source: hub``. Any other group's members come from the login provider (when it
    reports groups), groups made on the admin page and not in the config included."""
    names = {champions_group(name) for name in config.groups}
    names.update(name for name, settings in config.groups.items() if settings.hub_managed)
    return frozenset(names)


# A group property: the members the file gave at the last start, so that someone taken
# out of the file (a champion above all) leaves the group at the next start.
FROM_CONFIG = "hubstack_from_config"


def sync_groups(db_url: str, config: Config) -> None:
    """Create the config's groups and add their members, in the hub's database, before
    JupyterHub starts.

    Not JupyterHub's ``load_groups``: JupyterHub refuses it when the authenticator manages
    groups (a login provider), and it never takes anyone out. Here members the file gave
    at the last start and no longer lists are taken out; members added at run time (admin
    page, ``hubstack group``, invitations) stay. Users made here get JupyterHub's default
    role at start.
    """
    db = orm.new_session_factory(db_url)()
    try:
        for group_name, user_names in config_memberships(config).items():
            group = orm.Group.find(db, group_name)
            if group is None:
                group = orm.Group(name=group_name, properties={})
                db.add(group)
            properties = dict(group.properties or {})
            dropped = set(properties.get(FROM_CONFIG, [])) - set(user_names)
            group.users = [user for user in group.users if user.name not in dropped]
            for user_name in user_names:
                user = orm.User.find(db, user_name)
                if user is None:
                    user = orm.User(name=user_name)
                    db.add(user)
                if user not in group.users:
                    group.users.append(user)
            properties[FROM_CONFIG] = sorted(user_names)
            group.properties = properties
        db.commit()
    finally:
        db.close()


def login_groups(
    provider: Iterable[str], current: Iterable[str], hub_managed: frozenset[str]
) -> list[str]:
    """The groups a user logging in through a provider ends up in: the provider's, less
    any group the hub manages (a provider cannot make anyone a champion or a member of a
    hub-managed group), plus the hub-managed groups the user is already in."""
    groups = [name for name in provider if name not in hub_managed]
    groups += [name for name in current if name in hub_managed and name not in groups]
    return groups


def keep_hub_groups(
    hub_managed: frozenset[str], authenticator: Any, handler: Any, authentication: Any
) -> Any:
    """JupyterHub's ``post_auth_hook``: with ``manage_groups`` JupyterHub makes a user's
    groups exactly the login's ``groups``, which would drop the hub-managed ones."""
    if not isinstance(authentication, dict) or authentication.get("groups") is None:
        return authentication
    name = authenticator.normalize_username(authentication["name"])
    user = orm.User.find(handler.db, name)
    current = [group.name for group in user.groups] if user is not None else []
    authentication["groups"] = login_groups(authentication["groups"], current, hub_managed)
    return authentication


def configure_groups(c: TraitletsConfig, config: Config) -> None:
    """Champion roles, the CLI's service, and the login hook that keeps hub-managed groups."""
    c.JupyterHub.services.append({"name": CLI_SERVICE})
    c.JupyterHub.load_roles += [
        {"name": CLI_SERVICE, "scopes": CLI_SCOPES, "services": [CLI_SERVICE]},
        *champion_roles(config),
    ]
    if config.auth.provider_accounts:
        c.Authenticator.post_auth_hook = functools.partial(
            keep_hub_groups, hub_managed_groups(config)
        )


def cli_token(db_url: str) -> str:
    """A token of the CLI's service, valid for a few minutes, made in the hub's database.

    Whoever can write the database (root, or the hub's account) is the hub's operator; a
    short-lived token made per command leaves no lasting secret in a file.
    """
    db = orm.new_session_factory(db_url)()
    try:
        service = orm.Service.find(db, CLI_SERVICE)
        if service is None:
            raise ValueError("the hub has not run yet; start it with `hubstack up`")
        token: str = service.new_api_token(
            expires_in=CLI_TOKEN_SECONDS, note="hubstack group command"
        )
        db.commit()
        return token
    finally:
        db.close()
