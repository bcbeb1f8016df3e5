"""Where a secret (a client secret, a bind password) comes from: a file or an environment
variable named in the config, never the config itself, so it stays out of
``hubstack check``, logs and the copies of the config handed to services."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, model_validator

from hubstack.config.base import Strict, problem


class SecretSource(Strict):
    """Exactly one of ``file`` (an absolute path, read by root when the hub starts) and
    ``env`` (an environment variable of the hub's process)."""

    file: Path | None = None
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: object) -> object:
        # A secret written into the config itself would be shown back by the error
        # message and copied wherever the config goes: refuse it without repeating it.
        if isinstance(data, str | int | float):
            raise problem(
                (),
                "a secret is not written in the config: put it in a file readable by root "
                "and give {file: /path/to/it}, or give {env: VARIABLE}",
                "not shown",
            )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise problem((), "give exactly one of file (a path) or env (a variable name)", None)
        if self.file is not None and not self.file.is_absolute():
            raise problem(("file",), "is not an absolute path", str(self.file))
        return self

    def read(self) -> str:
        """The secret, without a trailing newline; ``SecretMissing`` names where it was
        looked for (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SecretMissing(f"environment variable {self.env} is not set or empty")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecretMissing(f"cannot read {self.file}: {exc.strerror}") from None
        if not value:
            raise SecretMissing(f"{self.file} is empty")
        return value


class SecretMissing(Exception):
    """A secret named in the config cannot be read."""


def unreadable_secrets(model: BaseModel, at: str = "") -> list[str]:
    """A line for each secret in ``model`` (a config or a section) that cannot be read,
    naming its key and where it was looked for, never a value: `hubstack check` reports
    them and `hubstack up` refuses to start with them."""
    problems: list[str] = []
    for name in type(model).model_fields:
        key = f"{at}.{name}" if at else name
        problems += _unreadable(getattr(model, name), key)
    return problems


def _unreadable(value: object, key: str) -> list[str]:
    """The unreadable secrets in one value: a secret, a section, or a list or mapping of
    them (e.g. the node groups' cloud credentials)."""
    if isinstance(value, SecretSource):
        try:
            value.read()
        except SecretMissing as exc:
            return [f"{key}: {exc}"]
    elif isinstance(value, BaseModel):
        return unreadable_secrets(value, key)
    elif isinstance(value, list):
        return [line for i, item in enumerate(value) for line in _unreadable(item, f"{key}[{i}]")]
    elif isinstance(value, dict):
        return [line for k, item in value.items() for line in _unreadable(item, f"{key}.{k}")]
    return []
