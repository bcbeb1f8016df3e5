"""Render the spawn options form: the choices the operator configured, as radio cards,
and on Slurm the job fields the config offers.

The result is a fragment JupyterHub places inside its own ``<form>`` (which has the
submit button); autoescaping is on because every text in it comes from the config or,
for notices, may quote what a user sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hubstack.config.interfaces import INTERFACES
from hubstack.config.models import (
    REPOSITORY_ENVIRONMENT,
    Choice,
    Config,
    Environment,
    Machine,
    PartitionLimits,
    Range,
)
from hubstack.launch.access import (
    NO_GROUPS,
    Access,
    for_groups,
    not_open,
    nothing_open,
    offered_choices,
    offered_items,
)
from hubstack.launch.profiles import LABELS, offered_environments
from hubstack.launch.repo import RepoSource, repo_source
from hubstack.launch.slurm_fields import (
    CHOICE_FIELDS,
    NUMBER_FIELDS,
    capitalized,
    number_text,
    slurm_fields,
    slurm_label,
)
from hubstack.pages import html_templates
from hubstack.units import human_size
from hubstack.untrusted import InvalidLaunch

# What a user may type in a Slurm text field, and what a field without default follows.
_EXAMPLES = {"walltime": "e.g. 2h, 90m or 1:30:00; ", "memory": "e.g. 4G or 512M; "}
_FROM_MACHINE = {"cores": "CPUs", "memory": "memory"}

_jinja = html_templates("hubstack.launch")
# JupyterHub's own arguments of the spawn page, which are not options.
_NOT_OPTIONS = frozenset({"next", "display_name", "_xsrf"})
# Shown wherever a repository is about to be launched, before the click that launches it.
REPOSITORY_WARNING = (
    "This runs code from this repository in your account: its build and start scripts, "
    "and what you open in it, can read and change your files. Launch only repositories "
    "you trust."
)


class LinkOpensForm(Exception):
    """A link to the spawn page with options (``/hub/spawn?environment=...``) fills in the
    form: JupyterHub would start a server as soon as a logged-in user opens the link, so
    the spawner's ``options_from_query`` raises this instead, and the user presses Start.

    JupyterHub then shows the form with ``jupyterhub_message`` as an error: none here; the
    form itself says what the link asks for (see :func:`link_options`).
    """

    jupyterhub_message = ""
    jupyterhub_html_message = ""
    log_quietly = True  # JupyterHub logs it as a failure; hubstack's log filter does not

    def __init__(self) -> None:
        super().__init__("a link with options fills in the spawn form; it starts nothing")


def link_options(handler: Any) -> dict[str, str]:
    """The options in the query of the spawn page's GET request (``?machine=small`` or
    JupyterHub's ``?opt-machine=small``), to fill in the form; ``{}`` for anything else."""
    request = getattr(handler, "request", None)
    if request is None or request.method != "GET":
        return {}
    options = {}
    for key, values in request.query_arguments.items():
        name = key.removeprefix("opt-")
        if name not in _NOT_OPTIONS and values:
            options[name] = values[0].decode("utf-8", "replace")
    return options


def source_facts(source: RepoSource) -> dict[str, str]:
    """What a person checks before launching a repository: where it is, whose it is, which
    version."""
    host, _, path = source.url.split("://", 1)[1].partition("/")
    owner = path.rpartition("/")[0] or "(none: the repository is at the top of the host)"
    return {"url": source.url, "host": host, "owner": owner, "ref": source.ref}


def _human_cpu(cpu: float) -> str:
    """``1 CPU``, ``2 CPUs``, ``0.5 CPU``: whole numbers without a trailing ``.0``."""
    return f"{cpu:g} {'CPU' if cpu <= 1 else 'CPUs'}"


def machine_summary(machine: Machine) -> str:
    """What a machine type gives, in the words a user compares: ``2 CPUs · 4 GB RAM``."""
    return f"{_human_cpu(machine.cpu)} · {human_size(machine.memory)} RAM"


def _choices(
    field: str,
    items: Sequence[Machine | Environment],
    selected: object,
    access: Access,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One radio group: the items ``access`` may pick, the previous choice checked if it is
    one of them, else the first; with none, the sentence that says why. ``notes`` say of
    some items why they cannot start now (a declared environment being built)."""
    notes = notes or {}
    offered = offered_items(items)
    ids = access.open_ids(offered)
    chosen = selected if selected in ids else access.initial(offered)
    rows = [
        {
            "field": field,
            "id": item.id,
            "input_id": f"hs-{field}-{item.id}",
            "display": item.display,
            "summary": machine_summary(item) if isinstance(item, Machine) else "",
            "note": notes.get(item.id, ""),
            "description": item.description,
            "groups": capitalized(for_groups(item.groups)) if item.groups else "",
            "checked": item.id == chosen,
        }
        for item in items
        if item.id in ids
    ]
    return {"rows": rows, "none": "" if rows else nothing_open(LABELS[field], offered)}


def _interface_rows(
    environments: Sequence[Environment], chosen_env: object, previous: object
) -> list[dict[str, Any]]:
    """The interface radio group: every interface of the environments on the form, each
    naming the environments that offer it; those of the checked environment are shown
    (the form's script shows another's when the person picks it). None beyond JupyterLab
    anywhere: no rows, and servers open in JupyterLab."""
    if all(env.interfaces == ["lab"] for env in environments):
        return []
    chosen = next((env for env in environments if env.id == chosen_env), environments[0])
    checked = previous if previous in chosen.interfaces else chosen.interfaces[0]
    return [
        {
            "id": interface.id,
            "input_id": f"hs-interface-{interface.id}",
            "display": interface.display,
            "environments": " ".join(e.id for e in environments if interface.id in e.interfaces),
            "shown": interface.id in chosen.interfaces,
            "checked": interface.id == checked,
        }
        for interface in INTERFACES.values()
        if any(interface.id in env.interfaces for env in environments)
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


def _select(
    label: str, choice: Choice, previous: object, access: Access, hint: str = ""
) -> dict[str, Any]:
    """A choice field of the values ``access`` may pick; the previous choice if it is one of
    them, else the default (or the first they may pick); with none, why not."""
    offered = offered_choices(choice)
    ids = access.open_ids(offered)
    if not ids:
        return {"kind": "none", "hint": nothing_open(label, offered)}
    chosen = previous if previous in ids else access.initial(offered, choice.default)
    return {
        "kind": "select",
        "options": [{"value": c, "selected": c == chosen} for c in ids],
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


def _slurm_rows(
    config: Config, current: Mapping[str, object], access: Access
) -> list[dict[str, Any]]:
    """Template rows for the Slurm fields the config offers, in the order of the form."""
    slurm = config.backend.slurm
    fields = slurm.fields
    extras = {extra.id: extra for extra in fields.extras}
    rows = []
    for name in slurm_fields(config):
        previous = current.get(name)
        label = slurm_label(config, name)
        if name in extras:
            row = _select(label, extras[name], previous, access)
        elif name == "partition":
            limits = _partition_limits(slurm.partitions)
            row = _select(label, fields.partition, previous, access, limits)
        elif name in NUMBER_FIELDS:
            row = _number(name, getattr(fields, name), previous)
        else:
            row = _select(label, getattr(fields, name), previous, access)
        row |= {"name": name, "input_id": f"hs-slurm-{name}", "label": capitalized(label)}
        rows.append(row)
    return rows


def _not_selected(config: Config, current: Mapping[str, object], access: Access) -> list[str]:
    """Why a previous or linked choice is not selected: it is for groups the person is not
    in (any more), which the form would otherwise leave unsaid."""
    offered = {
        "machine": offered_items(config.machines),
        "environment": offered_items(offered_environments(config)),
    }
    if config.backend.type == "slurm":
        fields = config.backend.slurm.fields
        offered |= {name: offered_choices(getattr(fields, name)) for name in CHOICE_FIELDS}
        offered |= {extra.id: offered_choices(extra) for extra in fields.extras}
    notices = []
    for field, choices in offered.items():
        value = current.get(field)
        if isinstance(value, str) and value in choices and not access.may_pick(choices[value]):
            label = LABELS.get(field) or slurm_label(config, field)
            notices.append(f"{not_open(label, value, choices[value])} It is not selected.")
    return notices


def render_options_form(
    config: Config,
    current: Mapping[str, object] | None = None,
    notices: Sequence[str] = (),
    link: Mapping[str, str] | None = None,
    access: Access = NO_GROUPS,
    building: Mapping[str, str] | None = None,
) -> str:
    """The options form fragment for the person ``access`` describes: only what they may
    pick, pre-selecting ``current`` (the user's last options) where it is.

    ``notices`` are shown above the choices, e.g. to say why a previous choice that
    the operator has since removed is no longer selected. On Slurm, the job fields the
    config offers follow, pre-filled with the user's previous values or the defaults.

    ``link`` are the options of a link to the spawn page (:func:`link_options`): they fill
    in the form, and a repository they name is shown with what launching it means.

    ``building`` says, by id, which declared environments are not ready yet, and why.
    """
    current = {**(current or {}), **(link or {})}
    asked = None
    if link and link.get("environment") == REPOSITORY_ENVIRONMENT and config.binder.enabled:
        try:
            asked = source_facts(repo_source(link.get("repo"), link.get("ref"), config.binder))
        except InvalidLaunch as exc:
            notices = [*notices, f"The link's repository cannot be launched: {exc.message}"]
    repo = {
        key: current.get(key) if isinstance(current.get(key), str) else ""
        for key in ("repo", "ref")
    }
    offered = offered_environments(config)
    open_ids = access.open_ids(offered_items(offered))
    shown = [env for env in offered if env.id in open_ids]
    environments = _choices("environment", offered, current.get("environment"), access, building)
    chosen_env = next((row["id"] for row in environments["rows"] if row["checked"]), None)
    return _jinja.get_template("options_form.html").render(
        machines=_choices("machine", config.machines, current.get("machine"), access),
        environments=environments,
        interfaces=_interface_rows(shown, chosen_env, current.get("interface")) if shown else [],
        repository=repo if config.binder.enabled else None,
        slurm=_slurm_rows(config, current, access),
        notices=[*notices, *_not_selected(config, current, access)],
        asked=asked,
        warning=REPOSITORY_WARNING,
    )
