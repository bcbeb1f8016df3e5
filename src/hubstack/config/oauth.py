"""Logins through an OAuth 2 / OpenID Connect provider: GitHub, a generic OpenID Connect
provider, and Azure AD (Entra ID) as a named preset of it."""

from __future__ import annotations

from hubstack.config.base import Strict
from hubstack.config.secrets import SecretSource


class GithubAuth(Strict):
    client_id: str
    client_secret: SecretSource


class OidcAuth(Strict):
    client_id: str
    client_secret: SecretSource


class AzureAdAuth(Strict):
    tenant_id: str
    client_id: str
    client_secret: SecretSource
