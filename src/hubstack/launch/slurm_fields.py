"""The Slurm job fields of a launch (partition, wall time, cores, ...), validated.

As with machine types, a user only chooses within what the operator configured: values
come as form text or JSON, are parsed, rounded up to what Slurm is given, and checked
against the field's range and the chosen partition's limits, so that a job Slurm would
refuse, or one the site does not allow, is refused here before anything is submitted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hubstack.config.models import Choice, Config, Machine, PartitionLimits, Range, SlurmFields
from hubstack.launch.access import Access, offered_choices, pick
from hubstack.units import format_size, parse_duration, parse_size, slurm_time
from hubstack.untrusted import InvalidLaunch, json_kind, shown

CHOICE_FIELDS = ("partition", "account", "qos", "reservation")
NUMBER_FIELDS = ("walltime", "cores", "memory", "gpus")
MIB = 1024**2

# Slurm's own forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_SLURM_TIME = re.compile(
    r"(?:(?P<days>[0-9]{1,4})-)?(?P<first>[0-9]{1,9})(?::(?P<mid>[0-5]?[0-9]))?"
    r"(?::(?P<last>[0-5]?[0-9]))?"
)
_COUNT = re.compile(r"[0-9]{1,9}")
_LABELS = {"qos": "QOS", "walltime": "wall time", "gpus": "GPUs"}


def parse_walltime(text: str) -> int:
    """Seconds from Slurm's forms (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) or ``90m``, ``2h``.

    Slurm's ``MM:SS`` is refused: ``1:30`` is 90 seconds to Slurm but an hour and a half
    to most people, and guessing either way would give someone the wrong job.
    """
    match = _SLURM_TIME.fullmatch(text.strip())
    if match is None:
        return parse_duration(text)
    days, first, mid, last = match.group("days", "first", "mid", "last")
    if days is None and last is None:
        if mid is not None:
            raise ValueError(f"{text!r} is ambiguous")
        return int(first) * 60
    return ((int(days or 0) * 24 + int(first)) * 60 + int(mid or 0)) * 60 + int(last or 0)


def _count(label: str, value: object) -> int:
    """A whole number of at most 9 digits, from JSON or text (no sign, no spaces)."""
    if type(value) is int and 0 <= value < 10**9:
        return value
    if isinstance(value, str) and _COUNT.fullmatch(value):
        return int(value)
    raise InvalidLaunch(f"{label} must be a whole number; got {shown(value)}.")


def _parse_memory(text: str) -> int:
    """A size with a unit: sbatch reads a bare number as megabytes, parse_size as bytes."""
    if text.strip()[-1:].isdigit():
        raise ValueError(f"{text!r} has no unit")
    return parse_size(text)


def _from_text(label: str, value: object, parse: Callable[[str], int], expected: str) -> int:
    """Parse a value that must be printable text, refusing it with ``expected`` if not."""
    try:
        if not isinstance(value, str) or not value.isprintable():
            raise ValueError(f"{value!r} is not printable text")
        return parse(value)
    except ValueError:
        got = shown(value) if isinstance(value, str) else json_kind(value)
        raise InvalidLaunch(f"{label} must be {expected}; got {got}.") from None


def _walltime(label: str, value: object) -> int:
    expected = (
        "a duration like 90m, 2h or 1:30:00 (or Slurm's MM, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)"
    )
    return _from_text(label, value, parse_walltime, expected)


def _memory(label: str, value: object) -> int:
    return _from_text(label, value, _parse_memory, "a size with a unit, e.g. 4G or 512M")


@dataclass(frozen=True)
class _Number:
    """How one number field is read from a user, rounded for Slurm, and shown."""

    parse: Callable[[str, object], int]
    show: Callable[[int], str]
    step: int = 1
    more: str = "more"


_NUMBERS = {
    "walltime": _Number(_walltime, slurm_time, step=60, more="longer"),
    "cores": _Number(_count, str),
    "memory": _Number(_memory, format_size, step=MIB),
    "gpus": _Number(_count, str),
}


@dataclass(frozen=True)
class SlurmRequest:
    """A validated Slurm job shape: what sbatch is given for one server."""

    partition: str | None
    account: str | None
    qos: str | None
    reservation: str | None
    walltime: int  # seconds
    cores: int
    memory: int  # bytes
    gpus: int
    extras: tuple[tuple[str, str], ...] = ()  # the site's own options: (sbatch option, value)
    chosen: tuple[tuple[str, str], ...] = ()  # each offered field's value, keyed as sent

    def sbatch_options(self) -> list[tuple[str, str]]:
        """The options for sbatch, as (option, value); each value is a config choice or
        a number, so never anything a user typed."""
        named = (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--qos", self.qos),
            ("--reservation", self.reservation),
        )
        options = [(option, value) for option, value in named if value is not None]
        options += [
            ("--time", slurm_time(self.walltime)),
            ("--cpus-per-task", str(self.cores)),
            ("--mem", f"{-(-self.memory // MIB)}M"),
        ]
        if self.gpus:
            options.append(("--gres", f"gpu:{self.gpus}"))
        return options + list(self.extras)

    def as_user_options(self) -> dict[str, str]:
        """The offered fields as the user would send them; resolving them gives this again."""
        return dict(self.chosen)


def slurm_fields(config: Config) -> tuple[str, ...]:
    """The user_options keys of the Slurm fields the config offers, in form order."""
    if config.backend.type != "slurm":
        return ()
    fields = config.backend.slurm.fields
    offered = [name for name in CHOICE_FIELDS if getattr(fields, name).choices]
    offered += [name for name in NUMBER_FIELDS if getattr(fields, name) is not None]
    return (*offered, *(extra.id for extra in fields.extras))


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def number_text(name: str, value: int) -> str:
    """A number field's value as users read and write it (``1:00:00``, ``4G``, ``2``)."""
    return _NUMBERS[name].show(value)


def capitalized(label: str) -> str:
    return label[:1].upper() + label[1:]


def slurm_label(config: Config, name: str) -> str:
    """How a Slurm field is called in a sentence (an extra by its display name)."""
    extra = next((e for e in config.backend.slurm.fields.extras if e.id == name), None)
    return extra.display if extra else _label(name)


def _pick(name: str, choice: Choice, options: Mapping[str, object], access: Access) -> str | None:
    """The user's choice, else the default (or the first choice open to them); None when
    the field is not offered."""
    if not choice.choices:
        return None
    return pick(_label(name), options, name, offered_choices(choice), access, choice.default)


def _number(name: str, limits: Range | None, options: Mapping[str, object], fallback: int) -> int:
    """The user's value (empty: the default), rounded up for Slurm and within the range."""
    if limits is None:
        return fallback
    number = _NUMBERS[name]
    label = capitalized(_label(name))
    value = options.get(name, "")
    if value == "":
        raw = fallback if limits.default is None else limits.default
    else:
        raw = number.parse(label, value)
    rounded = -(-raw // number.step) * number.step
    if not limits.min <= rounded <= limits.max:
        raise InvalidLaunch(
            f"{label} must be between {number.show(limits.min)} and "
            f"{number.show(limits.max)}; got {number.show(rounded)}."
        )
    return rounded


def _left_to_machine(fields: SlurmFields, name: str, options: Mapping[str, object]) -> bool:
    """Whether ``name`` is a number without default that the user left empty."""
    if name not in NUMBER_FIELDS:
        return False
    limits = getattr(fields, name)
    return limits is not None and limits.default is None and options.get(name, "") == ""


def _check_partition(partition: str, limits: PartitionLimits, numbers: Mapping[str, int]) -> None:
    for name, value in numbers.items():
        maximum = getattr(limits, f"max_{name}")
        if maximum is not None and value > maximum:
            number = _NUMBERS[name]
            raise InvalidLaunch(
                f"{capitalized(_label(name))} {number.show(value)} is {number.more} than the "
                f"{number.show(maximum)} limit of partition {partition}."
            )


def resolve_slurm(
    config: Config, machine: Machine, options: Mapping[str, object], access: Access
) -> SlurmRequest:
    """Validate the Slurm fields of ``options`` (whose keys the caller has checked) for the
    person ``access`` describes: a choice for some groups only is theirs if they are in one.

    A field not offered takes its fixed value: no option for a choice, the machine type's
    cores and memory, no GPUs.
    """
    slurm = config.backend.slurm
    fields = slurm.fields
    picked = {name: _pick(name, getattr(fields, name), options, access) for name in CHOICE_FIELDS}
    fallbacks = {
        "walltime": fields.walltime.default,
        "cores": math.ceil(machine.cpu),
        "memory": machine.memory,
        "gpus": 0,
    }
    numbers = {
        name: _number(name, getattr(fields, name), options, fallbacks[name])
        for name in NUMBER_FIELDS
    }
    extras = {
        extra.id: pick(
            extra.display, options, extra.id, offered_choices(extra), access, extra.default
        )
        for extra in fields.extras
    }
    partition = picked["partition"]
    if partition is not None and partition in slurm.partitions:
        _check_partition(partition, slurm.partitions[partition], numbers)
    canonical = {
        **{name: value for name, value in picked.items() if value is not None},
        **{name: number_text(name, value) for name, value in numbers.items()},
        **extras,
    }
    # A field left to the machine type stays so: it follows the machine on the next start.
    chosen = [name for name in slurm_fields(config) if not _left_to_machine(fields, name, options)]
    return SlurmRequest(
        **picked,
        **numbers,
        extras=tuple((extra.sbatch, extras[extra.id]) for extra in fields.extras),
        chosen=tuple((name, canonical[name]) for name in chosen),
    )
