"""Logins against an LDAP directory, with ldapauthenticator."""

from __future__ import annotations

from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config


def configure_ldap(c: TraitletsConfig, config: Config) -> None:
    raise NotImplementedError(config.auth.type)
