"""JupyterHub hooks that apply the launch policy before a named server is created."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tornado import web

from hubstack.config import Config
from hubstack.launch import PolicyViolation, check_new_server


def named_server_policy(config: Config) -> Callable[[Any], int]:
    """A ``named_server_limit_per_user`` callable that also checks the name.

    JupyterHub calls it with the request handler before it creates a named server, from
    both the REST API and the spawn page: the one place where a refusal leaves nothing
    behind. It answers HTTP 400 with the policy's own message, then returns the limit so
    JupyterHub's count check agrees.
    """
    policy = config.policy.named_servers

    def limit(handler: Any) -> int:
        args = getattr(handler, "path_args", None) or ()
        if len(args) >= 2 and args[1]:
            user = handler.find_user(args[0])
            if user is not None:
                try:
                    check_new_server(args[1], list(user.orm_spawners), policy)
                except PolicyViolation as exc:
                    raise web.HTTPError(400, exc.message) from None
        return policy.max

    return limit
