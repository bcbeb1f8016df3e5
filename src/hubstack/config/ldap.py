"""Logins against an LDAP directory."""

from __future__ import annotations

from hubstack.config.base import Strict


class LdapAuth(Strict):
    server: str
