"""Logins and admin changes in the audit log, from JupyterHub's request log.

Hooked as tornado's ``log_function`` (JupyterHub's ``tornado_settings``), wrapping
JupyterHub's own: it runs once for every finished request with its handler, so it sees
failed logins as well as successful ones (``post_auth_hook`` sees only the latter), and
every change through JupyterHub's REST API (which its admin page uses too) with who asked,
from where and whether it succeeded, without replacing any of JupyterHub's handlers. It
reads what the request asked (its path arguments and JSON body), never a password, and
adds the entry off the event loop after the answer has gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from jupyterhub.apihandlers.groups import (
    GroupAPIHandler,
    GroupListAPIHandler,
    GroupUsersAPIHandler,
)
from jupyterhub.apihandlers.users import UserAPIHandler, UserListAPIHandler, UserServerAPIHandler
from jupyterhub.handlers.login import LoginHandler
from jupyterhub.log import log_request
from oauthenticator.oauth2 import OAuthCallbackHandler
from tornado.log import app_log

from hubstack.config import Config
from hubstack.hub.usage import audit

NAME_SHOWN = 64  # a failed login's user name is untrusted input: kept short
_PENDING: set[asyncio.Task[None]] = set()


def _body(handler: Any) -> dict[str, Any]:
    try:
        body = json.loads(handler.request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def actor_of(handler: Any) -> str:
    """Who made the request: a user's or service's name, or ``anonymous``."""
    try:
        who = handler.current_user
    except RuntimeError:  # JupyterHub had not looked (a request refused early)
        who = None
    return getattr(who, "name", None) or "anonymous"


def events_of(handler: Any) -> list[tuple[str, str, str, dict[str, Any]]]:
    """What a finished request did that the audit log keeps: (action, user, server,
    detail) for each; nothing for the rest."""
    method, status = handler.request.method, handler.get_status()
    args = [a or "" for a in getattr(handler, "path_args", [])]
    if isinstance(handler, LoginHandler) and method == "POST":
        # Who logged in (as the authenticator named them), or the name that failed.
        name = actor_of(handler) if status < 400 else ""
        name = name or handler.get_body_argument("username", "")[:NAME_SHOWN]
        return [("login" if status < 400 else "login-failed", name, "", {"status": status})]
    if isinstance(handler, OAuthCallbackHandler):  # a login at an OAuth or OIDC provider
        who = actor_of(handler)
        name = "" if who == "anonymous" else who
        return [("login" if status < 400 else "login-failed", name, "", {"status": status})]
    if status >= 400:
        return []
    body = _body(handler)
    if isinstance(handler, UserListAPIHandler) and method == "POST":
        admin = bool(body.get("admin"))
        return [
            ("user-create", name, "", {"admin": admin}) for name in _names(body.get("usernames"))
        ]
    if isinstance(handler, UserAPIHandler) and args:
        if method == "POST":
            return [("user-create", args[0], "", {"admin": bool(body.get("admin"))})]
        if method == "DELETE":
            return [("user-delete", args[0], "", {})]
        if method == "PATCH":
            changed = {key: body[key] for key in ("admin", "name") if key in body}
            return [("user-change", args[0], "", changed)] if changed else []
    if isinstance(handler, GroupListAPIHandler) and method == "POST":
        return [("group-create", "", "", {"group": g}) for g in _names(body.get("groups"))]
    if isinstance(handler, GroupAPIHandler) and args and method in ("POST", "DELETE"):
        action = "group-create" if method == "POST" else "group-delete"
        return [(action, "", "", {"group": args[0], "users": _names(body.get("users"))})]
    if isinstance(handler, GroupUsersAPIHandler) and args and method in ("POST", "DELETE"):
        action = "group-add" if method == "POST" else "group-remove"
        return [(action, user, "", {"group": args[0]}) for user in _names(body.get("users"))]
    if isinstance(handler, UserServerAPIHandler) and method == "DELETE" and args:
        actor = getattr(handler.current_user, "name", None)
        if actor != args[0]:  # a user stopping their own server is the spawner's entry
            server = args[1] if len(args) > 1 else ""
            return [("stop-request", args[0], server, {"remove": bool(body.get("remove"))})]
    return []


def _written(task: asyncio.Task[None]) -> None:
    """A lost entry is an error in the hub's log (the request itself was answered)."""
    _PENDING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        app_log.error("Could not write to the audit log", exc_info=task.exception())


def log_function(config: Config) -> Callable[[Any], None]:
    """JupyterHub's request log, then the audit entries of the request."""

    def log(handler: Any) -> None:
        log_request(handler)
        try:
            events = events_of(handler)
        except Exception:  # the request is answered; its log line must not fail it
            app_log.exception("Could not read the audit entries of %s", handler.request.uri)
            return
        for action, user, server, detail in events:
            actor = actor_of(handler)
            entry = audit(config, handler, action, user, server, actor, **detail)
            task = asyncio.ensure_future(entry)
            _PENDING.add(task)
            task.add_done_callback(_written)

    return log
