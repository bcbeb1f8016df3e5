"""JupyterHub hooks that apply the launch policy before a named server is created."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jupyterhub.apihandlers import APIHandler
from tornado import web

from hubstack.config import Config
from hubstack.hub.spawner import checked_request, form_options
from hubstack.launch import PolicyViolation, check_new_server


def requested_options(handler: Any, config: Config) -> dict[str, Any] | None:
    """The ``user_options`` a request that creates a server asks for; None if it asks none.

    The same reading JupyterHub gives the request after this hook: the JSON body's
    ``user_options`` of the REST API (a bare ``PUT`` only creates), the posted options form.
    A plain visit of the spawn page shows the form and asks nothing yet.
    """
    method = handler.request.method
    if isinstance(handler, APIHandler):
        options = handler.get_server_json_body().get("user_options")
        if method == "PUT" and not options:
            return None
        return options or {}
    if method != "POST":
        return None
    # Bytes as posted: options_from_form explains text that is not UTF-8.
    formdata: dict[str, list[Any]] = dict(handler.request.body_arguments)
    formdata.update({f"{key}_file": files for key, files in handler.request.files.items()})
    return form_options(config, formdata)


def named_server_policy(config: Config) -> Callable[[Any], Awaitable[int]]:
    """A ``named_server_limit_per_user`` callable that also checks the name and the options.

    JupyterHub awaits it with the request handler before it creates a named server, from
    the REST API and the spawn page: the one place where a refusal leaves nothing behind
    (later, a refused start would leave a stopped server that counts against the limit).
    It answers HTTP 400 with the policy's own message, then returns the limit so
    JupyterHub's count check agrees.
    """
    policy = config.policy.named_servers
    config_json = config.model_dump_json()

    async def limit(handler: Any) -> int:
        args = getattr(handler, "path_args", None) or ()
        if len(args) >= 2 and args[1]:
            user = handler.find_user(args[0])
            if user is not None and args[1] not in user.orm_spawners:
                try:
                    check_new_server(args[1], list(user.orm_spawners), policy)
                except PolicyViolation as exc:
                    raise web.HTTPError(400, exc.message) from None
                options = requested_options(handler, config)
                if options is not None:
                    await checked_request(config_json, user, options)
        return policy.max

    return limit
