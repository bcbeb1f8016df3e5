"""Render the spawn options form: the choices the operator configured, as radio cards,
and on Slurm the job fields the config offers.

The result is a fragment JupyterHub places inside its own ``<form>`` (which has the
submit button); autoescaping is on because every text in it comes from the config or,
for notices, may quote what a user sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hubstack.config.models import Choice, Config, Environment, Machine, PartitionLimits, Range
from hubstack.launch.pages import html_templates
from hubstack.launch.profiles import repository_environment
from hubstack.launch.slurm import (
    NUMBER_FIELDS,
    capitalized,
    number_text,
    slurm_fields,
    slurm_label,
)

_UNITS = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))
# What a user may type in a Slurm text field, and what a field without default follows.
_EXAMPLES = {"walltime": "e.g. 2h, 90m or 1:30:00; ", "memory": "e.g. 4G or 512M; "}
_FROM_MACHINE = {"cores": "CPUs", "memory": "memory"}

_jinja = html_templates("hubstack.launch")


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


def _partition_limits(partitions: Mapping[str, PartitionLimits]) -> str:
    """``Partition limits: debug at most 1:00:00 wall time, 2 cores; long ...`` or ``""``."""
    described = []
    for name, limits in partitions.items():
        maxima = [
            f"{number_text(field, value)}{unit}"
            for field, value, unit in (
                ("walltime", limits.max_walltime, " wall time"),
                ("cores", limits.max_cores, " cores"),
                ("memory", limits.max_memory, " memory"),
                ("gpus", limits.max_gpus, " GPUs"),
            )
            if value is not None
        ]
        if maxima:
            described.append(f"{name} at most {', '.join(maxima)}")
    return f"Partition limits: {'; '.join(described)}." if described else ""


def _select(choice: Choice, previous: object, hint: str = "") -> dict[str, Any]:
    """A choice field; the previous choice if still offered, else the default."""
    chosen = previous if previous in choice.choices else choice.initial
    return {
        "kind": "select",
        "options": [{"value": c, "selected": c == chosen} for c in choice.choices],
        "hint": hint,
    }


def _number(name: str, limits: Range, previous: object) -> dict[str, Any]:
    """A number field with its range as hint text, pre-filled with the previous value, else
    the default; one without a default, left empty, follows the machine type."""
    counted = name in ("cores", "gpus")
    low, high = number_text(name, limits.min), number_text(name, limits.max)
    hint = f"{_EXAMPLES.get(name, '')}{low} to {high}"
    if limits.default is None:
        hint += f"; empty: the machine type's {_FROM_MACHINE[name]}"
        value = ""
    else:
        value = number_text(name, limits.default)
    return {
        "kind": "number" if counted else "text",
        "value": previous if isinstance(previous, str) else value,
        "min": limits.min if counted else None,
        "max": limits.max if counted else None,
        "placeholder": "from the machine type" if limits.default is None else "",
        "hint": hint,
    }


def _slurm_rows(config: Config, current: Mapping[str, object]) -> list[dict[str, Any]]:
    """Template rows for the Slurm fields the config offers, in the order of the form."""
    slurm = config.backend.slurm
    fields = slurm.fields
    extras = {extra.id: extra for extra in fields.extras}
    rows = []
    for name in slurm_fields(config):
        previous = current.get(name)
        if name in extras:
            row = _select(extras[name], previous)
        elif name == "partition":
            row = _select(fields.partition, previous, _partition_limits(slurm.partitions))
        elif name in NUMBER_FIELDS:
            row = _number(name, getattr(fields, name), previous)
        else:
            row = _select(getattr(fields, name), previous)
        row |= {
            "name": name,
            "input_id": f"hs-slurm-{name}",
            "label": capitalized(slurm_label(config, name)),
        }
        rows.append(row)
    return rows


def render_options_form(
    config: Config, current: Mapping[str, object] | None = None, notices: Sequence[str] = ()
) -> str:
    """The options form fragment, pre-selecting ``current`` (the user's last options).

    ``notices`` are shown above the choices, e.g. to say why a previous choice that
    the operator has since removed is no longer selected. On Slurm, the job fields the
    config offers follow, pre-filled with the user's previous values or the defaults.
    """
    current = current or {}
    environments = list(config.environments)
    if config.binder.enabled:
        environments.append(repository_environment(config))
    repo = {
        key: current.get(key) if isinstance(current.get(key), str) else ""
        for key in ("repo", "ref")
    }
    return _jinja.get_template("options_form.html").render(
        machines=_choices("machine", config.machines, current.get("machine")),
        environments=_choices("environment", environments, current.get("environment")),
        repository=repo if config.binder.enabled else None,
        slurm=_slurm_rows(config, current),
        notices=list(notices),
    )
