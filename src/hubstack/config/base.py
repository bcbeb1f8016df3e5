"""What every section of the config shares: strict models and errors across keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """Unknown keys are errors: a typo in the config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def problem(at: tuple[str | int, ...], message: str, value: object) -> PydanticCustomError:
    """An error found by a check across keys, reported at key ``at`` (relative to the model
    that checks) with ``value``, so that load.py names it like any other bad key."""
    return PydanticCustomError("hubstack_key", message, {"hubstack_at": at, "hubstack_got": value})
