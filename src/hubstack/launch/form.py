"""Render the spawn options form: the choices the operator configured, as radio cards.

The result is a fragment JupyterHub places inside its own ``<form>`` (which has the
submit button); autoescaping is on because every text in it comes from the config or,
for notices, may quote what a user sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from hubstack.config.models import Config, Environment, Machine

_UNITS = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))

_jinja = jinja2.Environment(
    loader=jinja2.PackageLoader("hubstack.launch", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _human_size(size: int) -> str:
    """Bytes in the largest unit that is at least 1, one decimal at most (``1.5 GB``)."""
    for unit, factor in _UNITS:
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"


def _human_cpu(cpu: float) -> str:
    """``1 CPU``, ``2 CPUs``, ``0.5 CPU``: whole numbers without a trailing ``.0``."""
    return f"{cpu:g} {'CPU' if cpu <= 1 else 'CPUs'}"


def machine_summary(machine: Machine) -> str:
    """What a machine type gives, in the words a user compares: ``2 CPUs · 4 GB RAM``."""
    return f"{_human_cpu(machine.cpu)} · {_human_size(machine.memory)} RAM"


def _choices(
    field: str, items: Sequence[Machine | Environment], selected: object
) -> list[dict[str, Any]]:
    """Template rows for one radio group; the previous choice if still offered, else the first."""
    chosen = selected if any(item.id == selected for item in items) else items[0].id
    return [
        {
            "field": field,
            "id": item.id,
            "input_id": f"hs-{field}-{item.id}",
            "display": item.display,
            "summary": machine_summary(item) if isinstance(item, Machine) else "",
            "description": item.description,
            "checked": item.id == chosen,
        }
        for item in items
    ]


def render_options_form(
    config: Config, current: Mapping[str, str] | None = None, notices: Sequence[str] = ()
) -> str:
    """The options form fragment, pre-selecting ``current`` (the user's last options).

    ``notices`` are shown above the choices, e.g. to say why a previous choice that
    the operator has since removed is no longer selected.
    """
    current = current or {}
    return _jinja.get_template("options_form.html").render(
        machines=_choices("machine", config.machines, current.get("machine")),
        environments=_choices("environment", config.environments, current.get("environment")),
        notices=list(notices),
    )
