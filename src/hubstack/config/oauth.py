"""Logins through an OAuth 2 / OpenID Connect provider: GitHub, a generic OpenID Connect
provider, and Azure AD (Entra ID) as a named preset of it."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from hubstack.config.base import Strict
from hubstack.config.groups import GroupName
from hubstack.config.secrets import SecretSource


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError("use an http or https URL, e.g. https://login.example.org/authorize")
    return value.rstrip("/")


# A provider's URL (no query or fragment); a trailing slash is dropped.
ProviderUrl = Annotated[str, AfterValidator(_http_url)]
# An organisation, or an organisation's team, as GitHub spells them in URLs.
ORG_OR_TEAM = r"^[A-Za-z0-9][A-Za-z0-9-]*(:[A-Za-z0-9._-]+)?$"
GROUP_MAPPING_HELP = "provider group name -> hub group name (others: lowercased, hyphenated)"


class OAuthClient(Strict):
    """What the provider issued when the hub was registered with it."""

    client_id: str = Field(min_length=1)
    client_secret: SecretSource
    callback_url: ProviderUrl | None = Field(
        None,
        description="the URL the provider sends people back to; default: the address the "
        "login came to, with /hub/oauth_callback",
    )


class GithubAuth(OAuthClient):
    """GitHub or GitHub Enterprise: members of the allowed organisations or teams may log
    in; their teams become hub groups."""

    url: ProviderUrl = Field("https://github.com", description="GitHub Enterprise: its URL")
    allowed_organizations: list[Annotated[str, Field(pattern=ORG_OR_TEAM)]] = Field(
        min_length=1, description="`org` or `org:team` (a team's slug)"
    )
    mapping: dict[str, GroupName] = Field(
        default_factory=dict, description="`org:team` -> hub group name"
    )


class OidcClaims(Strict):
    """Claims and group rules shared by every OpenID Connect provider."""

    username_claim: str = Field("preferred_username", min_length=1)
    groups_claim: str = Field("groups", min_length=1)
    allowed_groups: list[str] = Field(
        default_factory=list, description="provider or hub group names; empty: anyone"
    )
    admin_groups: list[str] = Field(default_factory=list)
    mapping: dict[str, GroupName] = Field(default_factory=dict, description=GROUP_MAPPING_HELP)
    display: str | None = Field(
        None, min_length=1, description="the login button says `Sign in with <display>`"
    )


class OidcAuth(OAuthClient, OidcClaims):
    """A generic OpenID Connect provider, by its endpoints (no discovery: the hub starts and
    runs whether or not the provider answers)."""

    authorize_url: ProviderUrl
    token_url: ProviderUrl
    userinfo_url: ProviderUrl
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])


class AzureAdAuth(OAuthClient, OidcClaims):
    """Azure AD (Entra ID): one tenant's v2.0 endpoints under ``authority``; claims come
    from the ID token."""

    tenant_id: str = Field(pattern=r"^[A-Za-z0-9.-]+$")
    authority: ProviderUrl = "https://login.microsoftonline.com"
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])


# The provider's addresses the hub sends the client secret or people's tokens to.
ENDPOINT_KEYS = ("url", "authorize_url", "token_url", "userinfo_url", "authority")


def clear_text_endpoints(section: OAuthClient) -> list[str]:
    """The keys of ``section`` whose URL is plain http to another machine: the client
    secret, codes and tokens would cross the network in clear."""
    keys = []
    for key in ENDPOINT_KEYS:
        url = urlsplit(getattr(section, key, None) or "")
        host = url.hostname or ""
        if (
            url.scheme == "http"
            and host not in ("localhost", "::1")
            and not host.startswith("127.")
        ):
            keys.append(key)
    return keys
