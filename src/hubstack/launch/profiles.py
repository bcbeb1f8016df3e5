"""Turn what a user sends (spawn form or REST ``user_options``) into a launch request.

Everything a user sends is untrusted: a request may only *choose* among the machine
types and environments the operator configured, never set resources directly, so any
key or value that is not exactly one of those choices is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hubstack.config.models import Config, Environment, Machine

FIELDS = ("machine", "environment")
XSRF_FIELD = "_xsrf"
ECHO_MAX = 60

_LABELS = {"machine": "machine type", "environment": "environment"}
_JSON_KINDS: dict[type, str] = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    list: "a list",
    tuple: "a list",
    dict: "an object",
    type(None): "null",
}


class InvalidLaunch(ValueError):
    """A launch request was refused; ``message`` is a sentence to show the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class LaunchRequest:
    """A validated choice of configured machine type and environment."""

    machine: Machine
    environment: Environment

    def as_user_options(self) -> dict[str, str]:
        """The ids only: what JupyterHub stores and shows back, resolvable again later."""
        return {"machine": self.machine.id, "environment": self.environment.id}


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


def _kind(value: object) -> str:
    """Name a value's type the way a REST API user (who sends JSON) would."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _unknown_option(key: object) -> InvalidLaunch:
    return InvalidLaunch(
        f"Unknown option {quote_untrusted(str(key))}. Allowed options: {', '.join(FIELDS)}."
    )


def _choose(field: str, value: object, choices: Mapping[str, Machine | Environment]) -> str:
    """Return ``value`` if it is the id of one of ``choices``, else refuse listing them."""
    allowed = ", ".join(choices)
    label = _LABELS[field]
    if not isinstance(value, str):
        raise InvalidLaunch(
            f"The {label} must be given as a string id, not {_kind(value)}. "
            f"Choose one of: {allowed}."
        )
    if value not in choices:
        raise InvalidLaunch(f"Unknown {label} {quote_untrusted(value)}. Choose one of: {allowed}.")
    return value


def resolve(config: Config, user_options: Mapping[str, object] | None) -> LaunchRequest:
    """Validate ``user_options`` against the config; omitted fields take the first choice.

    Raises :class:`InvalidLaunch` for anything else: unknown keys (e.g. ``cpu``), values
    that are not strings, and ids the config does not define.
    """
    if not user_options:
        user_options = {}
    if not isinstance(user_options, Mapping):
        raise InvalidLaunch(
            f"Launch options must be an object with the keys: {', '.join(FIELDS)}; "
            f"got {_kind(user_options)}."
        )
    for key in user_options:
        if key not in FIELDS:
            raise _unknown_option(key)
    machines = {m.id: m for m in config.machines}
    environments = {e.id: e for e in config.environments}
    machine_id = _choose("machine", user_options.get("machine", config.machines[0].id), machines)
    env_id = _choose(
        "environment", user_options.get("environment", config.environments[0].id), environments
    )
    return LaunchRequest(machine=machines[machine_id], environment=environments[env_id])


def _form_text(field: str, value: object) -> str:
    """Decode one posted value; JupyterHub 6 passes str, older code paths bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidLaunch(f"The {_LABELS[field]} sent is not valid UTF-8 text.") from None
    if isinstance(value, str):
        return value
    raise InvalidLaunch(f"The {_LABELS[field]} must be sent as text, not {_kind(value)}.")


def options_from_form(formdata: Mapping[str, Sequence[bytes | str]]) -> dict[str, str]:
    """Reduce JupyterHub's ``{name: [values...]}`` form data to ``{field: value}``.

    Strict, because our form only ever posts our own fields (plus JupyterHub's
    ``_xsrf``): an unknown field or a field sent twice means a hand-crafted request.
    The values are not checked against the config here; :func:`resolve` does that.
    """
    options: dict[str, str] = {}
    for key, raw in formdata.items():
        if key == XSRF_FIELD:
            continue
        if key not in FIELDS:
            raise _unknown_option(key)
        values = [raw] if isinstance(raw, str | bytes) else list(raw)
        if len(values) != 1:
            raise InvalidLaunch(
                f"Choose exactly one {_LABELS[key]}; the form sent {len(values)} values."
            )
        options[key] = _form_text(key, values[0])
    return options
