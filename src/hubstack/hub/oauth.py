"""Logins through GitHub, OpenID Connect and Azure AD, with OAuthenticator."""

from __future__ import annotations

from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config


def configure_oauth(c: TraitletsConfig, config: Config) -> None:
    raise NotImplementedError(config.auth.type)
