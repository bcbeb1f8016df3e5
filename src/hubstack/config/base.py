"""What every section of the config shares: strict models and errors across keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

HTTP_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"


class Strict(BaseModel):
    """Unknown keys are errors: a typo in the config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def problem(at: tuple[str | int, ...], message: str, value: object) -> PydanticCustomError:
    """An error found by a check across keys, reported at key ``at`` (relative to the model
    that checks) with ``value``, so that load.py names it like any other bad key."""
    return PydanticCustomError("hubstack_key", message, {"hubstack_at": at, "hubstack_got": value})


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError(f"{str(value)!r} is not an absolute path")
    return value


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
