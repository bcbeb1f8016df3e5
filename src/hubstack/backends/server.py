"""What every backend gives a single-user server alike: its variables and, for an
environment built from a repository, the repository's files and ``start`` script."""

from __future__ import annotations

import json
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hubstack.backends.base import ServerSpec, StartFailed
from hubstack.envs.checkout import check_out, start_command
from hubstack.system import SystemOpError
from hubstack.system.accounts import Account

# Jupyter's answer to GET {prefix}api is a line of JSON; anything much longer is not it.
_MAX_ANSWER = 64 * 1024
_ANSWER_TIMEOUT_S = 2.0


async def place_content(
    spec: ServerSpec, volume: Path, account: Account | None, command: list[str]
) -> tuple[Path | None, list[str]]:
    """Check the repository out into the server's volume (as ``account``; None: as the hub's
    own user) and wrap ``command`` in its ``start`` script.

    Returns the repository's directory (None without a repository), which the server opens
    as its root, as Binder does, so that paths in launch links are relative to it.
    """
    content = spec.content
    if content is None:
        return None, command
    try:
        workdir = await check_out(content, volume, account)
    except (OSError, SystemOpError) as exc:
        raise StartFailed(
            f"The repository's files could not be put in your server's storage: {exc}",
            reason="storage",
        ) from None
    return workdir, start_command(workdir, content, command)


def server_environment(
    spec: ServerSpec, account: Account, volume: Path, workdir: Path | None
) -> dict[str, str]:
    """The variables hubstack sets for every server, besides JupyterHub's own."""
    request, environment = spec.request, spec.request.environment
    env = {
        "HOME": str(account.home),
        "USER": account.name,
        "PATH": f"{environment.prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HUBSTACK_MACHINE": request.machine.id,
        "HUBSTACK_ENVIRONMENT": environment.id,
        "HUBSTACK_VOLUME": str(volume),
    }
    if spec.content is not None and workdir is not None:
        env |= {
            "REPO_DIR": str(workdir),
            "BINDER_REPO_URL": spec.content.url,
            "HUBSTACK_REPO_COMMIT": spec.content.commit,
        }
    return env


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
