"""Read ``hubstack.yaml`` into a validated :class:`Config`, or explain what is wrong."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hubstack.config.models import (
    BASE_URL,
    BIND,
    HTTP_URL,
    SAFE_TOKEN,
    SBATCH_OPTION,
    SLUG,
    URL_PATH,
    Config,
)

# pydantic names a pattern by its regex; say what it means instead.
PATTERN_MEANING = {
    SLUG: "use 1-30 lowercase letters, digits and hyphens, starting with a letter",
    BIND: "use address:port, e.g. 127.0.0.1:8000 or 0.0.0.0:80",
    BASE_URL: "use a URL path that starts and ends with /, e.g. /hub-prefix/",
    URL_PATH: "use a URL path starting with /, e.g. /lab",
    HTTP_URL: "use an http or https URL, e.g. http://hub.example:8081/hub/api",
    SAFE_TOKEN: "use only letters, digits and . _ : , = @ + / % - (no spaces or quotes)",
    SBATCH_OPTION: "use a long sbatch option, e.g. --constraint",
}
# A value longer than this is cut in a message (a job script template can be long).
SHOWN_MAX = 60

DEFAULT_PATH = Path("hubstack.yaml")

# Keys that moved: old path -> new path. A file with an old key still works; loading it
# says where the key lives now.
MOVED_KEYS = {
    ("backend", "local", "user_prefix"): ("accounts", "prefix"),
    ("backend", "local", "limits"): ("hub", "limits"),
}


class ConfigError(Exception):
    """The config cannot be used; ``problems`` name each key, its value and what is allowed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid config {self.source}:"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _warn(message: str) -> None:
    print(f"hubstack: warning: {message}", file=sys.stderr)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"{text[: SHOWN_MAX - 4]}...{text[-1]}"


def describe_problem(error: dict[str, Any]) -> str:
    """One line naming the key, what is wrong and the value given (config files and the
    hub's forms and APIs alike)."""
    # A check across keys (models.problem) says which key and value it is about.
    context = error.get("ctx", {})
    key = _key_path((*error["loc"], *context.get("hubstack_at", ())))
    value = context.get("hubstack_got", error.get("input"))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; check the spelling against `hubstack init`"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        message = PATTERN_MEANING.get(pattern, f"must match the pattern {pattern}")
    if isinstance(value, dict | list):
        return f"{key}: {message}"
    return f"{key}: {message} (got {_shown(value)})"


def _move_keys(data: dict[str, Any], source: str, notice: Callable[[str], None]) -> None:
    """Put each moved key of ``data`` where it lives now, and say so through ``notice``."""
    for old, new in MOVED_KEYS.items():
        *parents, leaf = old
        section: Any = data
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            continue
        value = section.pop(leaf)
        old_key, new_key = ".".join(old), ".".join(new)
        target = data.setdefault(new[0], {})
        if not isinstance(target, dict):
            continue  # the new section's own error names it
        if new[1] in target and target[new[1]] != value:
            raise ConfigError(
                source, [f"{old_key}: has moved to {new_key}, which is also set; keep one"]
            )
        target[new[1]] = value
        notice(f"{source}: {old_key} has moved to {new_key}; the old key still works")


def validate(
    data: Any, source: str = "<config>", notice: Callable[[str], None] | None = None
) -> Config:
    """Validate already-parsed data; raise :class:`ConfigError` with readable problems.

    Moved keys are taken from where they were and told to ``notice`` (default: stderr).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of keys to values"])
    _move_keys(data, source, notice or _warn)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [describe_problem(e) for e in exc.errors()]) from None


def load(path: Path | None = None) -> tuple[Config, Path | None]:
    """Load the config file, or the embedded defaults when the default file is absent.

    An explicitly named file that does not exist is an error; the default path is optional.
    Returns the config and the path it came from (``None`` for embedded defaults).
    """
    explicit = path is not None
    path = path or DEFAULT_PATH
    if not path.exists():
        if explicit:
            raise ConfigError(str(path), ["file not found"])
        return validate({}, "<embedded defaults>"), None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return validate(data, str(path)), path


def dump(config: Config) -> str:
    """The effective config as YAML, with units rendered the way an operator writes them."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
