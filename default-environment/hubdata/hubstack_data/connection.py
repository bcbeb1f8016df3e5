"""A connection's filesystem, with credentials asked from the hub at each use.

The server's own token (``JUPYTERHUB_API_TOKEN``, in the server's environment only) asks
``/hub/api/storage/users/<user>/credentials/<name>``; the answer lives in this process's
memory only: never written to the home, put on a command line or logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import fsspec
import requests
from fsspec.implementations.dirfs import DirFileSystem

UNREACHABLE = "the hub cannot be reached"
# How long s3fs waits for a store's answer to go on (its default is 15 s). A store may take
# longer to assemble a large multipart upload (moto's server took more than 15 s for 2 GiB)
# and botocore then sends the CompleteMultipartUpload again, which fails: the upload is gone
# or, still being assembled by the first request, broken ("seek of closed file"). AWS keeps
# such a connection alive with whitespace; other S3-compatible stores need not. 5 minutes is
# rclone's idle timeout. A store that is down is still found at once (connect_timeout).
S3_READ_TIMEOUT = 300


class ConnectionError_(Exception):
    """The hub refused or could not give the connection; the message says why."""


@dataclass
class Connection:
    name: str
    mode: str
    group: str | None
    fs: DirFileSystem  # rooted at the connection's container/prefix

    def check_writable(self) -> None:
        if self.mode != "rw":
            raise PermissionError(
                f"the storage connection {self.name!r} of group {self.group!r} is read-only"
            )


def hub_request(path: str, method: str = "GET", body: object = None) -> dict[str, Any]:
    """Ask the hub's storage API about this user (``path`` below it); the hub's message
    as :class:`ConnectionError_` if it refuses."""
    try:
        api = os.environ["JUPYTERHUB_API_URL"].rstrip("/")
        token = os.environ["JUPYTERHUB_API_TOKEN"]
        user = os.environ["JUPYTERHUB_USER"]
    except KeyError as missing:
        raise ConnectionError_(
            f"{missing} is not set: storage connections work in hub servers only"
        ) from None
    url = f"{api}/storage/users/{quote(user, safe='')}/{path}"
    try:
        resp = requests.request(
            method, url, json=body, headers={"Authorization": f"token {token}"}, timeout=30
        )
    except requests.RequestException as exc:
        raise ConnectionError_(f"{UNREACHABLE}: {type(exc).__name__}") from None
    if resp.status_code == 204:
        return {}
    if resp.status_code not in (200, 201):
        try:
            message = resp.json().get("message", "")
        except ValueError:
            message = resp.text[:200]
        raise ConnectionError_(message or f"the hub answered {resp.status_code}")
    answer: dict[str, Any] = resp.json()
    return answer


def connections() -> list[dict[str, Any]]:
    """The connections this server's user may use (no credentials)."""
    return list(hub_request("connections")["connections"])


def open_connection(name: str, asynchronous: bool = False) -> Connection:
    """The connection ``name`` of this server's user (their own, else a group's);
    ``asynchronous`` for callers on an event loop (JupyterLab's file browser)."""
    answer = hub_request(f"credentials/{quote(name, safe='')}")
    fs = filesystem(answer["protocol"], answer["storage_options"], asynchronous)
    root = "/".join(p for p in (answer["container"], answer["prefix"]) if p)
    return Connection(
        name,
        answer["mode"],
        answer["group"],
        DirFileSystem(path=root, fs=fs, asynchronous=asynchronous),
    )


def filesystem(protocol: str, options: dict[str, Any], asynchronous: bool = False) -> Any:
    """The library's filesystem for a store, as hubdata uses it: a fresh client each time,
    so that a revoked or changed connection takes effect at once."""
    if protocol == "s3":
        config = {"read_timeout": S3_READ_TIMEOUT} | options.get("config_kwargs", {})
        options = options | {"config_kwargs": config}
    return fsspec.filesystem(
        protocol, skip_instance_cache=True, asynchronous=asynchronous, **options
    )


def clean_path(path: str) -> str:
    """A path inside a connection: relative, without ``..`` (never outside its prefix)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path!r}: paths in a storage connection may not contain '..'")
    return "/".join(parts)
