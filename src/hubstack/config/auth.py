"""How people log in (``auth``): the hub's own accounts, the machine's (PAM), or an
identity they already have (GitHub, OpenID Connect, Azure AD, LDAP)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from hubstack.config.base import Strict, problem
from hubstack.config.ldap import LdapAuth
from hubstack.config.oauth import AzureAdAuth, GithubAuth, OidcAuth
from hubstack.units import Duration

AuthType = Literal["native", "pam", "github", "oidc", "azuread", "ldap"]
# Login types whose settings live in a section of their own name.
PROVIDERS = ("github", "oidc", "azuread", "ldap")


class FailedLogins(Strict):
    """Guessing passwords through the hub (built-in accounts, PAM, LDAP): after this many
    failed logins for one account, or from one address, further logins are refused for
    ``lockout``."""

    per_account: int = Field(5, ge=0, description="0: no limit")
    per_address: int = Field(20, ge=0, description="0: no limit")
    lockout: Duration = Field(
        "10m", description="how long; also how long a failure from an address counts"
    )  # type: ignore[assignment]

    @property
    def limited(self) -> bool:
        return self.per_account > 0 and self.per_address > 0 and self.lockout > 0


class AuthSettings(Strict):
    type: AuthType = "native"
    open_signup: bool = False
    failed_logins: FailedLogins = Field(default_factory=FailedLogins)
    github: GithubAuth | None = None
    oidc: OidcAuth | None = None
    azuread: AzureAdAuth | None = None
    ldap: LdapAuth | None = None

    @model_validator(mode="after")
    def _provider_configured(self) -> Self:
        """The chosen provider needs its section; another provider's section is a mistake."""
        for name in PROVIDERS:
            section = getattr(self, name)
            if name == self.type and section is None:
                raise problem((name,), f"is needed when auth.type is {name}", None)
            if name != self.type and section is not None:
                raise problem(
                    (name,), f"is set but auth.type is {self.type}; remove it or set the type", name
                )
        return self

    @property
    def provider_accounts(self) -> bool:
        """Whether users come from an identity provider (not the hub, not the machine)."""
        return self.type in PROVIDERS
