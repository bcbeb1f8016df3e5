"""What a reconciler round found and did about it, one node each: for the log and admins."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    node: str
    found: str
    done: str
