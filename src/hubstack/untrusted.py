"""Refusing what a user sent: the error, and how a user's value is shown in it.

Everything a user sends is untrusted, so a refusal names what is allowed and echoes the
user's value only quoted, escaped and cut (it ends up in a web page and in logs).
"""

from __future__ import annotations

from collections.abc import Collection

from hubstack.errors import Explained

ECHO_MAX = 60

_JSON_KINDS: dict[type, str] = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    list: "a list",
    tuple: "a list",
    dict: "an object",
    type(None): "null",
}


class InvalidLaunch(Explained, ValueError):
    """A launch request was refused; ``message`` is a sentence to show the user."""


def quote_untrusted(text: str) -> str:
    """Quote a user-supplied string for a message: control characters escaped, 60 chars max.

    ``repr`` escapes control and invisible characters; cutting the text (not its repr)
    keeps every escape sequence intact. A cut is marked with ``...`` inside the quotes.
    """
    if len(text) <= ECHO_MAX and len(repr(text)) <= ECHO_MAX:
        return repr(text)
    cut = text[: ECHO_MAX - 5]
    while len(repr(cut)) > ECHO_MAX - 3:
        cut = cut[:-1]
    shown = repr(cut)
    return f"{shown[:-1]}...{shown[-1]}"


def json_kind(value: object) -> str:
    """Name a value's type the way a REST API user (who sends JSON) would."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def shown(value: object) -> str:
    """A user's value in a message: text quoted and cut, a number as is, else its kind."""
    if isinstance(value, str):
        return quote_untrusted(value)
    if type(value) in (int, float):
        text = repr(value)
        return text if len(text) <= ECHO_MAX else f"{text[: ECHO_MAX - 3]}..."
    return json_kind(value)


def choose(label: str, value: object, choices: Collection[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else refuse, listing them."""
    allowed = ", ".join(choices)
    if not isinstance(value, str):
        raise InvalidLaunch(
            f"The {label} must be given as a string id, not {json_kind(value)}. "
            f"Choose one of: {allowed}."
        )
    if value not in choices:
        raise InvalidLaunch(f"Unknown {label} {quote_untrusted(value)}. Choose one of: {allowed}.")
    return value
