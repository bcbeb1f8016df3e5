"""Logins against an LDAP directory: where it is, how the hub talks to it securely, how a
login name becomes a person's entry, and which of their directory groups count."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn
from pydantic import Field, field_validator, model_validator

from hubstack.config.base import Strict, problem
from hubstack.config.groups import GroupName
from hubstack.config.secrets import SecretSource

TlsMode = Literal["starttls", "ssl", "none"]
DEFAULT_PORTS = {"ssl": 636, "starttls": 389, "none": 389}
# A host name, an IPv4 address or a bracketed IPv6 address.
HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]"
ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]*$"
SERVER_MEANING = "use ldap://host[:port], ldaps://host[:port] or a host name"


def dn_problem(value: str) -> str | None:
    """Why ``value`` is not a distinguished name (``uid=ada,ou=people,dc=example``)."""
    try:
        parse_dn(value)
    except LDAPInvalidDnError:
        return "is not a distinguished name like ou=groups,dc=example,dc=org"
    return None


def normal_dn(value: str) -> str:
    """One spelling of a DN for comparing: attribute names and values compare without case
    in the directories this is for, and spaces around separators do not count."""
    return ",".join(f"{attr.lower()}={val.lower()}" for attr, val, _ in parse_dn(value))


class LdapGroups(Strict):
    """Where a person's groups are found, and how each becomes a hub group."""

    search_base: str = Field(description="the subtree the hub searches for a user's groups")
    name_attribute: str = Field(
        "cn", pattern=ATTRIBUTE, description="the attribute of a group entry that names it"
    )
    mapping: dict[str, GroupName] = Field(
        default_factory=dict,
        description="directory group name -> hub group name; other names are made safe",
    )

    @field_validator("search_base")
    @classmethod
    def _search_base_is_dn(cls, value: str) -> str:
        if (why := dn_problem(value)) is not None:
            raise ValueError(why)
        return value


class LdapAuth(Strict):
    """An LDAP directory (OpenLDAP, Active Directory, FreeIPA...).

    A person's entry is found either from ``bind_dn_template`` (their DN is a pattern of the
    login name) or by a search under ``user_search_base`` (as ``search_bind_dn``, or
    anonymously when it is not given); the login is a bind as that entry with the password.
    """

    server: str = Field(description=SERVER_MEANING)
    port: int | None = Field(None, ge=1, le=65535, description="default: from server, or by tls")
    tls: TlsMode | None = Field(
        None, description="default: ssl for ldaps://, else starttls; none sends passwords in clear"
    )
    ca_file: Path | None = Field(
        None, description="CA certificates the directory's certificate is checked against"
    )
    bind_dn_template: list[str] = Field(
        default_factory=list, description="DNs with {username}, tried in order"
    )
    search_bind_dn: str | None = None
    search_bind_password: SecretSource | None = None
    user_search_base: str | None = None
    user_attribute: str = Field(
        "uid", pattern=ATTRIBUTE, description="the attribute holding a person's login name"
    )
    allowed_groups: list[str] = Field(
        default_factory=list,
        description="group DNs or names (name_attribute); empty: every directory account",
    )
    groups: LdapGroups | None = None

    @field_validator("server")
    @classmethod
    def _server_address(cls, value: str) -> str:
        if "://" in value:
            parts = urlsplit(value)
            try:
                parts.port  # noqa: B018 (raises on a port that is not a number)
            except ValueError:
                raise ValueError(f"has a bad port; {SERVER_MEANING}") from None
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise ValueError(SERVER_MEANING)
            if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
                raise ValueError(f"has more than a host and port; {SERVER_MEANING}")
        elif not re.fullmatch(HOST, value):
            raise ValueError(SERVER_MEANING)
        return value

    @field_validator("search_bind_dn", "user_search_base")
    @classmethod
    def _is_dn(cls, value: str | None) -> str | None:
        if value is not None and (why := dn_problem(value)) is not None:
            raise ValueError(why)
        return value

    @field_validator("bind_dn_template")
    @classmethod
    def _templates(cls, templates: list[str]) -> list[str]:
        for template in templates:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
            if fields != {"username"}:
                raise ValueError(
                    f"{template!r} must contain {{username}} and no other {{...}} field"
                )
            if (why := dn_problem(template.format(username="someone"))) is not None:
                raise ValueError(f"{template!r} {why}")
        return templates

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self._check_tls()
        self._check_user_lookup()
        self._check_allowed_groups()
        return self

    def _check_tls(self) -> None:
        scheme = self.scheme
        if scheme == "ldaps" and self.tls not in (None, "ssl"):
            raise problem(("tls",), "must be ssl (or left out) for an ldaps:// server", self.tls)
        if scheme == "ldap" and self.tls == "ssl":
            raise problem(("tls",), "ssl needs an ldaps:// server (or a host name)", self.tls)
        uri_port = urlsplit(self.server).port if scheme else None
        if uri_port is not None and self.port is not None and uri_port != self.port:
            raise problem(("port",), f"differs from the port in server ({uri_port})", self.port)
        if self.ca_file is not None:
            if not self.ca_file.is_absolute():
                raise problem(("ca_file",), "is not an absolute path", str(self.ca_file))
            if self.tls_mode == "none":
                raise problem(("ca_file",), "is set but tls is none", str(self.ca_file))

    def _check_user_lookup(self) -> None:
        search = {
            "search_bind_dn": self.search_bind_dn,
            "search_bind_password": self.search_bind_password,
            "user_search_base": self.user_search_base,
        }
        given = [key for key, value in search.items() if value is not None]
        if self.bind_dn_template and given:
            raise problem(
                (given[0],),
                "is set with bind_dn_template; give either bind_dn_template or a search "
                "(user_search_base, optionally search_bind_dn and search_bind_password)",
                None,
            )
        if not self.bind_dn_template and self.user_search_base is None:
            raise problem(
                (),
                "give either bind_dn_template (a list of DNs with {username}) or a search "
                "(user_search_base, optionally search_bind_dn and search_bind_password)",
                None,
            )
        if (self.search_bind_dn is None) != (self.search_bind_password is None):
            raise problem(
                ("search_bind_password" if self.search_bind_dn else "search_bind_dn",),
                "is needed with the other: give both of search_bind_dn and "
                "search_bind_password, or neither for an anonymous search",
                None,
            )

    def _check_allowed_groups(self) -> None:
        if not self.allowed_groups:
            return
        if self.groups is None:
            raise problem(
                ("allowed_groups",),
                "needs groups.search_base: the subtree where the hub finds a user's groups",
                None,
            )
        base = normal_dn(self.groups.search_base)
        for index, group in enumerate(self.allowed_groups):
            if "=" not in group:
                continue  # a group's name
            if (why := dn_problem(group)) is not None:
                raise problem(("allowed_groups", index), why, group)
            if not (normal_dn(group) == base or normal_dn(group).endswith("," + base)):
                # [cn=a,dc=b] in YAML is a list of two items: the usual way to get here.
                hint = "; quote DNs in a [...] list" if len(parse_dn(group)) == 1 else ""
                raise problem(
                    ("allowed_groups", index),
                    f"is not under groups.search_base ({self.groups.search_base}), so no "
                    f"user's groups would ever include it{hint}",
                    group,
                )

    @property
    def tls_mode(self) -> TlsMode:
        if self.tls is not None:
            return self.tls
        return "ssl" if self.scheme == "ldaps" else "starttls"

    @property
    def scheme(self) -> str:
        """``ldap``, ``ldaps``, or empty for a bare host name."""
        return urlsplit(self.server).scheme if "://" in self.server else ""

    @property
    def host(self) -> str:
        if "://" not in self.server:
            return self.server.strip("[]")
        hostname = urlsplit(self.server).hostname
        assert hostname is not None
        return hostname

    @property
    def port_number(self) -> int:
        uri_port = urlsplit(self.server).port if "://" in self.server else None
        return self.port or uri_port or DEFAULT_PORTS[self.tls_mode]
