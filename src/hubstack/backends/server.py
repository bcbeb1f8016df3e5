"""What every backend does alike around a server's plan: a repository's files put in its
storage before it starts, and the check that the server answering is the one started."""

from __future__ import annotations

import json
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hubstack.backends.base import StartFailed
from hubstack.envs.checkout import check_out, copy_home
from hubstack.launch.plan import BuiltRepository
from hubstack.system import SystemOpError
from hubstack.system.accounts import Account

# Jupyter's answer to GET {prefix}api is a line of JSON; anything much longer is not it.
_MAX_ANSWER = 64 * 1024
_ANSWER_TIMEOUT_S = 2.0


async def place_files(built: BuiltRepository, volume: Path, account: Account | None) -> None:
    """Check the repository out into the server's volume (as ``account``; None: as the hub's
    own user), where its plan opens it, and give the home what the build left in its own; a
    failure is the user's to read. A declared environment has no files to place."""
    if built.content is None:
        return
    try:
        await check_out(built.content, volume, account)
        await copy_home(built.content, account)
    except (OSError, SystemOpError) as exc:
        raise StartFailed(
            f"The repository's files could not be put in your server's storage: {exc}",
            reason="storage",
        ) from None


async def answers_as_itself(host: str, port: int, prefix: str) -> bool:
    """Whether the server started for ``prefix`` (``JUPYTERHUB_SERVICE_PREFIX``, unique per
    user and server) answers at ``host:port``: its ``{prefix}api`` must return 200 with
    Jupyter's JSON.

    A listener alone proves nothing: another user's server, or any other program, may hold
    that port, and routing this user there would hand them someone else's server. Whatever
    else answers, or nothing, means "not (yet) this server".
    """
    client = AsyncHTTPClient(force_instance=True, max_body_size=_MAX_ANSWER)
    try:
        answer = await client.fetch(
            f"http://{host}:{port}{prefix}api",
            raise_error=False,
            follow_redirects=False,
            connect_timeout=_ANSWER_TIMEOUT_S,
            request_timeout=_ANSWER_TIMEOUT_S,
        )
    except (OSError, HTTPClientError):
        return False
    finally:
        client.close()
    if answer.code != 200:
        return False
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("version"), str)
