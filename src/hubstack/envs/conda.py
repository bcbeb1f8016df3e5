"""Conda environments from an ``environment.yml``, without conda.

rattler (py-rattler, the library behind pixi) solves and installs conda packages from a
Python process; hubstack uses it rather than a conda or micromamba binary so that nothing
has to be installed beside the hub. The hub only reads and checks the file here
(:func:`read_conda_file`); the solve and the install run in the build's sandbox, as the build
account, within the build's limits (:func:`create_steps` runs
:mod:`hubstack.envs.conda_install` there), since solving downloads channel data and
installing unpacks archives, both sized by others.

Channels: the file's, each of which must be in ``binder.conda.channels``; none named: the
first of them. A site that proxies the channels sets ``binder.conda.mirror``, and a channel
``name`` is then read from ``<mirror>/<name>``. ``defaults`` (Anaconda's own channel, under its
terms of service) is left out with a notice when it is not allowed, as files often list it
after conda-forge out of habit.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from hubstack.config.models import CondaSettings
from hubstack.envs.rees_files import (
    PlannedInstall,
    RepoTree,
    SpecError,
    listing,
    read_environment_file,
)
from hubstack.untrusted import quote_untrusted

ANACONDA = "https://conda.anaconda.org"
# The Python an environment.yml that names none gets: repo2docker's default.
DEFAULT_PYTHON = "3.10"
INSTALLER = Path(__file__).with_name("conda_install.py")
_CHANNEL_PREFIX = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)::(.+)")
_DEPENDENCY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9_.*=<>!,| \t-]*")


@dataclass(frozen=True)
class CondaPlan:
    """What a build solves: channels by name, highest priority first, and match specs."""

    channels: tuple[str, ...]
    specs: tuple[str, ...]


@dataclass(frozen=True)
class CondaFile:
    """An environment.yml read for a conda build."""

    conda: CondaPlan
    pip: PlannedInstall  # the pip: section, installed with uv afterwards
    notices: tuple[str, ...]


def read_conda_file(tree: RepoTree, rel: str, settings: CondaSettings) -> CondaFile:
    """The conda build of ``rel``; refuses channels outside the allow-list and dependencies
    that are not plain conda package specifications (URLs, paths, ``[channel=...]``)."""
    found = read_environment_file(tree, rel)
    notices: list[str] = []
    channels = [channel.strip() for channel in found.channels]
    if "defaults" in channels and "defaults" not in settings.channels:
        channels.remove("defaults")
        notices.append(
            f"{rel} lists the channel defaults, which this hub does not use; the packages "
            f"come from {', '.join(channels or settings.channels[:1])}."
        )
    specs = []
    for dep in found.dependencies:
        channel, spec = _dependency(dep, rel)
        if channel is not None and channel not in channels:
            channels.append(channel)
        specs.append(spec)
    channels = channels or settings.channels[:1]
    refused = [channel for channel in channels if channel not in settings.channels]
    if refused:
        raise SpecError(
            f"{rel} asks for packages from the channel {listing(refused)}, which this hub "
            f"does not allow; it allows {', '.join(settings.channels)}."
        )
    if not any(package_name(spec) == "python" for spec in specs):
        specs.append(f"python {DEFAULT_PYTHON}.*")
    conda = CondaPlan(tuple(dict.fromkeys(channels)), tuple(specs))
    return CondaFile(conda, found.pip, tuple(notices))


def package_name(spec: str) -> str:
    """The package a match spec names (``numpy`` of ``numpy >=1.26``), lower case."""
    return re.split(r"[ \t=<>!~]", spec, maxsplit=1)[0].lower()


def _dependency(dep: str, rel: str) -> tuple[str | None, str]:
    """One dependency as (its ``channel::`` prefix, the spec without it). Only names and
    version and build constraints pass: a URL or a bracket could name another source."""
    text = dep.strip()
    channel = None
    prefixed = _CHANNEL_PREFIX.fullmatch(text)
    if prefixed is not None:
        channel, text = prefixed[1], prefixed[2].strip()
    if not _DEPENDENCY.fullmatch(text) or len(text) > 200:
        raise SpecError(
            f"{rel} has the dependency {quote_untrusted(dep)}, which is not a conda package "
            "specification such as numpy=1.26 or 'scipy >=1.11'."
        )
    return channel, text


def channel_url(name: str, settings: CondaSettings) -> str:
    """Where a build reads the channel ``name``: the site's mirror, else anaconda.org."""
    base = (settings.mirror or ANACONDA).rstrip("/")
    return f"{base}/{name}"


def installer_input(
    conda: CondaPlan, settings: CondaSettings, prefix: Path, cache: Path, shared: Path | None = None
) -> str:
    """The installer's instructions (JSON): channel URLs, specs, the prefix, where the
    downloads go (the build's scratch space) and the hub's read-only package cache layer
    ``shared`` (see :mod:`hubstack.envs.conda_packages`), if there is one."""
    channels = [channel_url(name, settings) for name in conda.channels]
    return json.dumps(
        {
            "channels": channels,
            "specs": conda.specs,
            "prefix": str(prefix),
            "cache": str(cache),
            "shared": str(shared) if shared is not None else None,
        }
    )


def installer_python() -> str:
    """The Python that runs the installer as the build account: the world-readable tools
    environment scripts/setup.sh gives rattler (the hub's own may be in a checkout no other
    account can read), else the hub's own (a development setup)."""
    tools = Path("/opt/hubstack/tools/bin/python")
    return str(tools) if tools.exists() else sys.executable


def create_steps(conda: CondaPlan, instructions: Path) -> list[str]:
    """Build script lines that create the environment from conda packages; the installer
    is copied beside ``instructions`` (see :data:`INSTALLER`) and runs isolated (-I)."""
    q = shlex.quote
    shown = f"Solving {len(conda.specs)} conda packages from {', '.join(conda.channels)}"
    installer = instructions.parent / INSTALLER.name
    return [
        f"echo {q(shown)}",
        f"{q(installer_python())} -I {q(str(installer))} {q(str(instructions))}",
    ]
