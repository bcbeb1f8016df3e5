"""Settings that validate but are unsafe, as ``hubstack check`` warns about them.

The hub runs as root and keeps its database, cookie secret, volumes, built environments
and users' homes under directories of the config: if an account other than root can
write one of them or a directory above it, that account can replace or plant what root
reads, mounts or runs there. Other warnings are about settings that weaken logins or let
code be changed on its way to users.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hubstack.config.models import Config
from hubstack.config.oauth import clear_text_endpoints
from hubstack.system.accounts import account_name

# Schemes without encryption or authentication of the server: anyone on the network path
# can change the code a launch builds and runs.
UNENCRYPTED_SCHEMES = ("http", "git")


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _chain(path: Path) -> Iterator[Path]:
    """``path`` (its real location, symbolic links followed) and every directory above
    it, those that exist: what root walks through to reach it."""
    real = Path(os.path.realpath(path))
    for part in (real, *real.parents):
        if part.exists():
            yield part


def writable_by_others(path: Path) -> str | None:
    """Why accounts other than root (or the account running hubstack) could change what
    is at ``path``, naming the first directory that lets them; None if none can."""
    trusted = {0, os.geteuid()}
    for part in _chain(path):
        info = part.stat()
        if info.st_uid not in trusted:
            return f"{part} is owned by {account_name(info.st_uid)}"
        if info.st_mode & stat.S_IWOTH:
            return f"{part} is writable by every account"
        if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
            return f"{part} is writable by group {_group(info.st_gid)}"
    return None


def _directories(config: Config) -> Iterator[tuple[str, Path]]:
    """The directories of the config that the hub, as root, keeps things in."""
    yield "hub.data_dir", config.hub.data_dir
    if config.binder.enabled:
        yield "binder.root", config.binder.root
    if config.backend.type == "local":
        yield "backend.local.home_base", config.backend.local.home_base
        if config.policy.shared.path is not None:
            yield "policy.shared.path", config.policy.shared.path
    else:
        shared = config.backend.slurm.shared
        yield "backend.slurm.shared.home_base", shared.home_base
        if shared.volumes is not None:
            yield "backend.slurm.shared.volumes", shared.volumes
        if shared.groups is not None:
            yield "backend.slurm.shared.groups", shared.groups


def unsafe_settings(config: Config) -> list[str]:
    """One sentence per unsafe setting: what it is, why it matters and what to do."""
    warnings = []
    for key, path in _directories(config):
        reason = writable_by_others(path)
        if reason:
            warnings.append(
                f"{key} {path}: {reason}, so that account can replace or plant files the "
                "hub (root) reads, mounts or runs there; make every directory on the way "
                "owned by root and writable by root only."
            )
    auth = config.auth
    if auth.type == "native" and auth.open_signup and not auth.failed_logins.limited:
        warnings.append(
            "auth.open_signup is on while auth.failed_logins sets no limit: anyone can try "
            "passwords of every account without end; set per_account, per_address and "
            "lockout above 0."
        )
    if auth.ldap is not None and auth.ldap.tls_mode == "none":
        warnings.append(
            "auth.ldap.tls is none: every password people log in with crosses the network "
            "to the directory in clear; use starttls or ssl (ca_file names the directory's CA)."
        )
    if auth.provider_accounts and "admin" in config.hub.admin_users:
        warnings.append(
            f"hub.admin_users names 'admin' (the default) while people log in through "
            f"{auth.type}: whoever {auth.type} calls 'admin' is a hub admin; list the admins "
            "by the names they log in with, or set it to [] and use admin groups."
        )
    if auth.provider_accounts and auth.type != "ldap":
        section = getattr(auth, auth.type)
        for key in clear_text_endpoints(section):
            warnings.append(
                f"auth.{auth.type}.{key} is plain http: the client secret and people's login "
                "codes and tokens cross the network in clear; use https."
            )
    unencrypted = [s for s in config.binder.allowed_schemes if s in UNENCRYPTED_SCHEMES]
    if config.binder.enabled and unencrypted:
        listed = " and ".join(f"{scheme}://" for scheme in unencrypted)
        warnings.append(
            f"binder.allowed_schemes allows {listed}: repositories fetched that way can be "
            "changed by anyone on the network path, and their code runs in users' "
            "accounts; allow only https unless the network is yours."
        )
    if config.binder.enabled and any(
        pattern.partition(":")[0] == "*" for pattern in config.binder.allowed_hosts
    ):
        warnings.append(
            "binder.allowed_hosts has a '*' host: users can make the hub fetch from any "
            "address it reaches, this machine and the internal network included; list the "
            "forges you use."
        )
    return warnings + alert_warnings(config)


def alert_warnings(config: Config) -> list[str]:
    """Alerts' secrets sent where the network can read them."""
    warnings = []
    webhook, email = config.alerts.webhook, config.alerts.email
    if webhook is not None and webhook.token is not None and webhook.url.startswith("http:"):
        warnings.append(
            "alerts.webhook.url is plain http: its token crosses the network in clear with "
            "every alert; use https."
        )
    if email is not None and email.password is not None and email.tls == "none":
        warnings.append(
            "alerts.email.tls is none: the SMTP password crosses the network in clear; use "
            "starttls or ssl."
        )
    return warnings
