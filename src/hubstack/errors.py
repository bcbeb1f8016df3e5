"""The one shape of a failure that is explained to a person."""

from __future__ import annotations


class Explained(Exception):
    """A failure whose ``message`` is a sentence for the person who meets it: shown as it is
    on a page, in a progress event, or on the command line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
