"""``hub://NAME/path`` for fsspec (and so pandas, xarray...): a storage connection by name.

A thin ``DirFileSystem`` over the connection's adlfs or s3fs filesystem, rooted at its
container and prefix; read-only group connections refuse every write here.
"""

from __future__ import annotations

import posixpath
from typing import Any

from fsspec.implementations.dirfs import DirFileSystem

from hubstack_data.connection import clean_path, open_connection

WRITES = (
    "put_file",
    "put",
    "pipe_file",
    "pipe",
    "rm_file",
    "rm",
    "rmdir",
    "mv",
    "cp_file",
    "copy",
    "mkdir",
    "makedirs",
    "touch",
    "write_text",
    "open_async",
    # The coroutine methods too, for asynchronous users of the filesystem.
    "_put_file",
    "_put",
    "_pipe_file",
    "_pipe",
    "_rm_file",
    "_rm",
    "_cp_file",
    "_copy",
    "_mkdir",
    "_makedirs",
)


class HubFileSystem(DirFileSystem):
    protocol = "hub"
    # Credentials are asked at each instantiation: never reuse a cached instance.
    cachable = False

    def __init__(self, connection: str, **kwargs: Any) -> None:
        self.connection = open_connection(connection, kwargs.get("asynchronous", False))
        super().__init__(path=self.connection.fs.path, fs=self.connection.fs.fs, **kwargs)
        if self.connection.mode != "rw":
            for name in WRITES:
                setattr(self, name, self._refuse)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        self.connection.check_writable()

    def _join(self, path: Any) -> Any:
        if isinstance(path, str):
            return super()._join(clean_path(path))
        return super()._join(path)

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            self.connection.check_writable()
        return super().open(path, mode, *args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("hub://"):
            path = path[len("hub://") :].partition("/")[2]
        return path.lstrip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("hub://"):
            return {"connection": path[len("hub://") :].partition("/")[0]}
        return {}


class HubBrowserFileSystem(HubFileSystem):
    """A connection as jupyter-fsspec's file browser addresses it (``hubbrowse://NAME``):
    every path starts with the connection's name, which the browser keeps as the source's
    prefix and cuts from the names it is given back."""

    protocol = "hubbrowse"

    def _join(self, path: Any) -> Any:
        if isinstance(path, str):
            name, _, rest = path.lstrip("/").partition("/")
            if name != self.connection.name:
                raise FileNotFoundError(f"{path!r} is not in {self.connection.name!r}")
            path = rest
        return super()._join(path)

    def _relpath(self, path: Any) -> Any:
        if isinstance(path, str):
            return posixpath.join(self.connection.name, super()._relpath(path)).rstrip("/")
        return [self._relpath(p) for p in path]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("hubbrowse://"):
            path = path[len("hubbrowse://") :]
        return path.lstrip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("hubbrowse://"):
            return {"connection": path[len("hubbrowse://") :].partition("/")[0]}
        return {}
