"""Which JupyterHub authenticator runs, and how it is set up, for each ``auth.type``."""

from __future__ import annotations

from traitlets.config import Config as TraitletsConfig

from hubstack.config import Config
from hubstack.hub.ldap import configure_ldap
from hubstack.hub.oauth import configure_oauth


def configure_login(c: TraitletsConfig, config: Config) -> None:
    auth = config.auth
    limits = auth.failed_logins
    # Read by every authenticator that checks a password here (native, PAM, LDAP).
    c.LimitedLogins.failed_logins_per_account = limits.per_account
    c.LimitedLogins.failed_logins_per_address = limits.per_address
    c.LimitedLogins.failed_logins_lockout = float(limits.lockout)
    if auth.type == "native":
        c.JupyterHub.authenticator_class = "hubstack.hub.auth.HubstackNativeAuthenticator"
        c.NativeAuthenticator.open_signup = auth.open_signup
        c.NativeAuthenticator.enable_signup = auth.open_signup
        # Native accounts are authorized in their own table.
        c.Authenticator.allow_all = True
    elif auth.type == "pam":
        c.JupyterHub.authenticator_class = "hubstack.hub.auth.HubstackPAMAuthenticator"
        c.Authenticator.blocked_users = {"root"}
        # PAM admits the machine's accounts.
        c.Authenticator.allow_all = True
    elif auth.type == "ldap":
        configure_ldap(c, config)
    else:
        configure_oauth(c, config)
    c.Authenticator.admin_users = set(config.hub.admin_users)
