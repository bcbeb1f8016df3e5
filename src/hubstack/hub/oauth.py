"""Logins through GitHub, OpenID Connect and Azure AD, with OAuthenticator.

OAuthenticator does the OAuth dance, the organisation checks and JupyterHub's managed
groups; the subclasses here only turn what the provider sends into hub groups
(``provider_groups.hub_groups``) and turn a provider that is down or a claim that is
missing into an error page with a message, where OAuthenticator would answer 500.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oauthenticator.azuread import AzureAdOAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from oauthenticator.oauth2 import OAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Dict, Unicode
from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config
from hubstack.config.oauth import AzureAdAuth, GithubAuth, OidcAuth
from hubstack.hub.provider_groups import hub_groups

# tornado's code for "no HTTP response at all" (refused, timed out, name not found).
NO_RESPONSE = 599


class ProviderLogin(OAuthenticator):
    """What every hubstack OAuth login adds to OAuthenticator's class for its provider
    (which comes after this one in a subclass's bases)."""

    group_mapping = Dict(
        {}, config=True, help="provider group name -> hub group name (hubstack's mapping)"
    )

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any) -> Any:
        try:
            return await super().authenticate(handler, data, **kwargs)
        except (OSError, HTTPClientError) as exc:
            raise self._provider_failed(exc) from None

    def _provider_failed(self, exc: Exception) -> web.HTTPError:
        service = self.login_service
        self.log.warning("Login through %s failed: %s", service, exc)
        if isinstance(exc, HTTPClientError) and exc.code != NO_RESPONSE:
            return web.HTTPError(
                502, f"{service} refused to complete the login (HTTP {exc.code}); try again."
            )
        return web.HTTPError(
            503, f"{service} cannot be reached at the moment, so you cannot log in; try later."
        )

    def user_info_to_username(self, user_info: dict[str, Any]) -> str:
        claim = self.username_claim
        username = user_info.get(claim)
        if not isinstance(username, str) or not username.strip():
            raise self.missing_claim(claim, "your user name")
        return username.strip()

    def missing_claim(self, claim: str, meaning: str) -> web.HTTPError:
        """A refusal naming the claim, for a provider not set up to send it."""
        service = self.login_service
        self.log.warning("%s sent no %r claim; login refused", service, claim)
        return web.HTTPError(
            403,
            f"{service} did not send {meaning} (the {claim!r} claim), which this hub needs. "
            "Ask the hub's administrators to check the provider's setup.",
        )

    def provider_groups(self, auth_state: dict[str, Any]) -> Iterable[str]:
        raise NotImplementedError

    def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        return set(hub_groups(self.provider_groups(auth_state), self.group_mapping))


class ClaimGroups(ProviderLogin):
    """Groups from a claim of the user's OpenID Connect info."""

    groups_claim = Unicode("groups", config=True, help="the claim listing the user's groups")

    def provider_groups(self, auth_state: dict[str, Any]) -> Iterable[str]:
        claims = auth_state.get(self.user_auth_state_key) or {}
        value = claims.get(self.groups_claim)
        if value is None:
            if self.allowed_groups:
                raise self.missing_claim(self.groups_claim, "your groups")
            self.log.warning("No %r claim: no groups", self.groups_claim)
            return []
        values = [value] if isinstance(value, str) else value
        return [name for name in values if isinstance(name, str)]


class HubstackGitHubOAuthenticator(ProviderLogin, GitHubOAuthenticator):
    """GitHub; teams (``org:team``) become groups."""

    def provider_groups(self, auth_state: dict[str, Any]) -> Iterable[str]:
        return [
            f"{team['organization']['login']}:{team['slug']}"
            for team in auth_state.get("teams", [])
        ]


class HubstackOidcAuthenticator(ClaimGroups, GenericOAuthenticator):
    """A generic OpenID Connect provider; claims from its userinfo endpoint."""


class HubstackAzureAdAuthenticator(ClaimGroups, AzureAdOAuthenticator):
    """Azure AD; claims from the ID token (as AzureAdOAuthenticator reads them)."""


def configure_oauth(c: TraitletsConfig, config: Config) -> None:
    """Point JupyterHub at the provider ``auth.type`` names; its secret is read now."""
    auth = config.auth
    section = getattr(auth, auth.type)
    c.OAuthenticator.client_id = section.client_id
    c.OAuthenticator.client_secret = section.client_secret.read()
    if section.callback_url:
        c.OAuthenticator.oauth_callback_url = section.callback_url
    # Groups come from the provider at every login, so a removed group is gone then.
    c.Authenticator.manage_groups = True
    if isinstance(section, GithubAuth):
        _github(c, section)
    elif isinstance(section, OidcAuth):
        c.JupyterHub.authenticator_class = f"{__name__}.HubstackOidcAuthenticator"
        c.GenericOAuthenticator.authorize_url = section.authorize_url
        c.GenericOAuthenticator.token_url = section.token_url
        c.GenericOAuthenticator.userdata_url = section.userinfo_url
        c.GenericOAuthenticator.login_service = section.display or "your organisation's login"
        _claims(c, section)
    else:
        _azuread(c, section)


def _github(c: TraitletsConfig, section: GithubAuth) -> None:
    c.JupyterHub.authenticator_class = f"{__name__}.HubstackGitHubOAuthenticator"
    c.GitHubOAuthenticator.github_url = section.url
    c.GitHubOAuthenticator.allowed_organizations = set(section.allowed_organizations)
    # read:org shows private memberships and the user's teams.
    c.GitHubOAuthenticator.scope = ["read:org"]
    c.GitHubOAuthenticator.populate_teams_in_auth_state = True
    c.ProviderLogin.group_mapping = dict(section.mapping)
    c.OAuthenticator.custom_403_message = (
        "Your GitHub account is not a member of an organisation or team this hub admits. "
        "Ask the hub's administrators to add you."
    )


def _azuread(c: TraitletsConfig, section: AzureAdAuth) -> None:
    c.JupyterHub.authenticator_class = f"{__name__}.HubstackAzureAdAuthenticator"
    c.AzureAdOAuthenticator.tenant_id = section.tenant_id
    if section.display:
        c.AzureAdOAuthenticator.login_service = section.display
    # The v2.0 endpoints (AzureAdOAuthenticator's defaults are v1's), which take scopes.
    tenant = f"{section.authority}/{section.tenant_id}/oauth2/v2.0"
    c.AzureAdOAuthenticator.authorize_url = f"{tenant}/authorize"
    c.AzureAdOAuthenticator.token_url = f"{tenant}/token"
    _claims(c, section)


def _claims(c: TraitletsConfig, section: OidcAuth | AzureAdAuth) -> None:
    c.OAuthenticator.scope = list(section.scopes)
    c.OAuthenticator.username_claim = section.username_claim
    c.ClaimGroups.groups_claim = section.groups_claim
    c.ProviderLogin.group_mapping = dict(section.mapping)
    # Allowed and admin groups may be written as the provider or the hub names them.
    c.OAuthenticator.allowed_groups = set(hub_groups(section.allowed_groups, section.mapping))
    c.OAuthenticator.admin_groups = set(hub_groups(section.admin_groups, section.mapping))
    # A provider of the institution: without allowed groups, everyone it knows may log in.
    c.OAuthenticator.allow_all = not section.allowed_groups
    c.OAuthenticator.custom_403_message = (
        "You are not in a group this hub admits. Ask the hub's administrators to add you."
    )
