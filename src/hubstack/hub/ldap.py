"""Logins against an LDAP directory, with ldapauthenticator."""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ldap3
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPMaximumRetriesError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from tornado import web
from traitlets import Dict, Float, List, Unicode
from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config
from hubstack.config.ldap import normal_dn
from hubstack.config.secrets import SecretMissing
from hubstack.hub.login_limits import LimitedLogins
from hubstack.hub.provider_groups import hub_groups

DIRECTORY_DOWN = "The directory cannot be reached. Try again later."
NOT_ALLOWED = "You are not in a group that may use this hub. Ask the people who run it."
# Logins waiting on the directory at once; more wait for a free one.
DIRECTORY_THREADS = 4
# Where the user's groups travel from ldapauthenticator's attribute hook to the auth model.
GROUPS_KEY = "hubstack_groups"
TLS_STRATEGIES = {"starttls": "before_bind", "ssl": "on_connect", "none": "insecure"}


class DirectoryUnavailable(Exception):
    """The directory answered, but not in a way a login can go on with (the hub's own
    search account is refused, a group search fails)."""


# Failures of the directory or of the way to it, never of the person logging in.
DIRECTORY_ERRORS = (
    LDAPCommunicationError,
    LDAPStartTLSError,
    LDAPResponseTimeoutError,
    LDAPMaximumRetriesError,
    DirectoryUnavailable,
    TimeoutError,
)


class DirectoryLogin(LDAPAuthenticator):
    """ldapauthenticator's bind and user lookup, with what its 2.0.2 release lacks.

    - Group sync: it only tests membership of each allowed group, one search per group
      DN, and lists none of a user's groups. Here one search under ``group_search_base``
      (with its ``group_search_filter``) lists them: they become the user's hub groups on
      every login (JupyterHub's ``manage_groups``) and decide ``allowed_directory_groups``,
      by DN or by name.
    - Its ldap3 calls block inside an ``async`` method: they run in threads of their own
      here, so a slow or unreachable directory holds up no other request, and a login
      waits at most ``directory_timeout``.
    - A directory that is down, or refuses the hub's own search account, raised an error
      page (or looked like a wrong password): here the login form says the directory
      cannot be reached, with the cause in the log.
    """

    group_search_base = Unicode(
        None, allow_none=True, config=True, help="Where a user's groups are searched; None: not."
    )
    group_name_attribute = Unicode("cn", config=True, help="The attribute naming a group.")
    group_mapping = Dict(
        config=True, help="Directory group name -> hub group name; others are made safe."
    )
    allowed_directory_groups = List(
        Unicode(), config=True, help="Group DNs or names; a member of one may log in."
    )
    directory_timeout = Float(10.0, config=True, help="Seconds a login waits on the directory.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.directory = ThreadPoolExecutor(DIRECTORY_THREADS, thread_name_prefix="ldap")

    async def authenticate(
        self, handler: web.RequestHandler, data: dict[str, str]
    ) -> dict[str, Any] | None:
        waiting = asyncio.get_running_loop().run_in_executor(
            self.directory, self.authenticate_blocking, data
        )
        try:
            return await asyncio.wait_for(waiting, self.directory_timeout)
        except DIRECTORY_ERRORS as exc:
            self.log.error(
                "LDAP login refused: the directory at %s:%s cannot be used: %s",
                self.server_address,
                self.server_port,
                exc or type(exc).__name__,
            )
            raise web.HTTPError(503, DIRECTORY_DOWN) from None

    def authenticate_blocking(self, data: dict[str, str]) -> dict[str, Any] | None:
        """ldapauthenticator's login, in a worker thread (its coroutine never awaits
        anything, so it runs to its end on a loop of this thread). It is given no
        request handler: it uses none, and tornado's objects belong to the hub's thread."""
        model: dict[str, Any] | None = asyncio.run(LDAPAuthenticator.authenticate(self, None, data))
        if model is None:
            return None
        found = model["auth_state"]["user_attributes"].pop(GROUPS_KEY, None)
        if found is not None:
            model["auth_state"]["ldap_groups"] = found
            model["groups"] = hub_groups([g["name"] for g in found], self.group_mapping)
        return model

    def get_connection(self, userdn: str, password: str) -> ldap3.Connection | None:
        conn = super().get_connection(userdn, password)
        search_account = (self.lookup_dn_search_user, self.lookup_dn_search_password)
        if conn is None and self.lookup_dn_search_user and (userdn, password) == search_account:
            raise DirectoryUnavailable(f"the search account {userdn} cannot bind")
        return conn

    def get_user_attributes(self, conn: ldap3.Connection, userdn: str) -> dict[str, Any]:
        """ldapauthenticator's hook that is given the user's bound connection: the user's
        groups are read there, as the user, in the same connection."""
        attributes: dict[str, Any] = super().get_user_attributes(conn, userdn)
        if self.group_search_base:
            attributes[GROUPS_KEY] = self.directory_groups(conn, userdn)
        return attributes

    def directory_groups(self, conn: ldap3.Connection, userdn: str) -> list[dict[str, str]]:
        """The DN and name of each group under ``group_search_base`` that has the user as
        a member (``{userdn}``) or member uid (``{uid}``, the entry's user_attribute)."""
        search = self.group_search_filter.format(
            userdn=escape_filter_chars(userdn),
            uid=escape_filter_chars(self.login_name(conn, userdn)),
        )
        conn.search(
            self.group_search_base,
            search,
            ldap3.SUBTREE,
            attributes=[self.group_name_attribute],
        )
        if conn.result["result"] != 0:
            # Going on without groups would take the user out of all of them.
            raise DirectoryUnavailable(
                f"searching groups under {self.group_search_base}: {conn.result['description']}"
            )
        groups = []
        for entry in conn.entries:
            names = entry.entry_attributes_as_dict.get(self.group_name_attribute)
            if names:
                groups.append({"dn": entry.entry_dn, "name": str(names[0])})
            else:
                self.log.warning(
                    "LDAP group %s has no %s", entry.entry_dn, self.group_name_attribute
                )
        return groups

    def login_name(self, conn: ldap3.Connection, userdn: str) -> str:
        """The user's ``user_attribute`` as the directory has it (posixGroup's memberUid
        holds this, not the login as typed)."""
        conn.search(userdn, "(objectClass=*)", ldap3.BASE, attributes=[self.user_attribute])
        values = (
            conn.entries[0].entry_attributes_as_dict.get(self.user_attribute)
            if conn.entries
            else None
        )
        return str(values[0]) if values else ""

    async def check_allowed(self, username: str, auth_model: dict[str, Any]) -> bool:
        if await super().check_allowed(username, auth_model):
            return True
        allowed = {
            normal_dn(g) if "=" in g else g.casefold() for g in self.allowed_directory_groups
        }
        for group in (auth_model.get("auth_state") or {}).get("ldap_groups") or []:
            if normal_dn(group["dn"]) in allowed or group["name"].casefold() in allowed:
                return True
        self.log.warning("LDAP user %s is in none of the allowed groups", username)
        # The password was right: saying why is no help to someone guessing.
        raise web.HTTPError(403, NOT_ALLOWED)


class HubstackLDAPAuthenticator(LimitedLogins, DirectoryLogin):
    """Directory logins, with limits on guessing passwords through the hub (a directory's
    own lockout, where it has one, counts failed binds per account only)."""


def configure_ldap(c: TraitletsConfig, config: Config) -> None:
    """ldapauthenticator set up from ``auth.ldap``; the search account's password is read
    here, so a missing one stops ``hubstack up`` naming the key."""
    ldap = config.auth.ldap
    assert ldap is not None
    c.JupyterHub.authenticator_class = "hubstack.hub.ldap.HubstackLDAPAuthenticator"
    a = c.HubstackLDAPAuthenticator
    a.server_address = ldap.host
    a.server_port = ldap.port_number
    a.tls_strategy = TLS_STRATEGIES[ldap.tls_mode]
    # ldap3 checks no certificate unless told to.
    tls: dict[str, Any] = {"validate": ssl.CERT_REQUIRED}
    if ldap.ca_file is not None:
        tls["ca_certs_file"] = str(ldap.ca_file)
    a.tls_kwargs = tls
    a.user_attribute = ldap.user_attribute
    if ldap.bind_dn_template:
        a.bind_dn_template = ldap.bind_dn_template
    else:
        a.lookup_dn = True
        a.user_search_base = ldap.user_search_base
        a.lookup_dn_user_dn_attribute = ldap.user_attribute
        if ldap.search_bind_dn is not None and ldap.search_bind_password is not None:
            a.lookup_dn_search_user = ldap.search_bind_dn
            try:
                a.lookup_dn_search_password = ldap.search_bind_password.read()
            except SecretMissing as exc:
                raise SecretMissing(f"auth.ldap.search_bind_password: {exc}") from None
    if ldap.groups is not None:
        a.group_search_base = ldap.groups.search_base
        a.group_name_attribute = ldap.groups.name_attribute
        a.group_mapping = dict(ldap.groups.mapping)
        c.Authenticator.manage_groups = True
    a.allowed_directory_groups = ldap.allowed_groups
    # Without allowed groups, every account of the directory may log in.
    c.Authenticator.allow_all = not ldap.allowed_groups
