"""Which conda server layer an environment gets, and when its servers fork from it
(``envs/conda_layer.py``): read from ``conda-meta`` records written as a build writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hubstack.config.models import CondaSettings
from hubstack.envs.conda import CondaPlan
from hubstack.envs.conda_layer import forks_from, layer_key, layer_plan

MIRROR = "http://127.0.0.1:9/channels"
SETTINGS = CondaSettings(channels=["conda-forge", "bioconda"], mirror=MIRROR)
PYTHON = "python-3.10.13-0_hubstack"


def prefix_with(path: Path, records: dict[str, str]) -> Path:
    """A prefix whose conda-meta holds a record per file stem, from the given channel."""
    (path / "conda-meta").mkdir(parents=True)
    for stem, channel in records.items():
        record = {"channel": channel, "subdir": "linux-64", "fn": f"{stem}.conda"}
        (path / "conda-meta" / f"{stem}.json").write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ({PYTHON: f"{MIRROR}/conda-forge"}, (("conda-forge",), ("python ==3.10.13 0_hubstack",))),
        (
            {
                "libzlib-1.3-h0": f"{MIRROR}/conda-forge",
                "python-3.12.1-h1_cpython": f"{MIRROR}/bioconda/",
            },
            (("bioconda",), ("python ==3.12.1 h1_cpython",)),
        ),
        # A channel the hub does not allow (or not through its mirror): no layer.
        ({PYTHON: "https://conda.anaconda.org/conda-forge"}, None),
        ({PYTHON: f"{MIRROR}/other"}, None),
        # Not the python package itself, or not a file name a channel has.
        ({"python-dateutil-2.9-py_0": f"{MIRROR}/conda-forge"}, None),
        ({"python-3.10 ;x-0": f"{MIRROR}/conda-forge"}, None),
        ({}, None),
    ],
)
def test_the_layer_of_an_environment_is_its_python_from_an_allowed_channel(
    tmp_path: Path, records: dict[str, str], expected: tuple[tuple[str, ...], ...] | None
) -> None:
    found = layer_plan(prefix_with(tmp_path / "env", records), SETTINGS)
    assert found == (None if expected is None else CondaPlan(*expected))


def test_conda_meta_is_read_without_following_a_link(tmp_path: Path) -> None:
    elsewhere = prefix_with(tmp_path / "elsewhere", {PYTHON: f"{MIRROR}/conda-forge"})
    (tmp_path / "env").mkdir()
    os.symlink(elsewhere / "conda-meta", tmp_path / "env/conda-meta")
    assert layer_plan(tmp_path / "env", SETTINGS) is None
    assert layer_plan(elsewhere, SETTINGS) is not None


def test_the_layer_key_changes_with_the_python_the_channel_and_the_server() -> None:
    plan = CondaPlan(("conda-forge",), ("python ==3.10.13 0_hubstack",))
    other = CondaPlan(("conda-forge",), ("python ==3.10.13 1_hubstack",))
    keys = {
        layer_key(plan, SETTINGS, "salt"),
        layer_key(other, SETTINGS, "salt"),
        layer_key(plan, SETTINGS, "other salt"),
        layer_key(plan, CondaSettings(mirror="http://127.0.0.1:10/channels"), "salt"),
    }
    assert len(keys) == 4
    assert layer_key(plan, SETTINGS, "salt") == layer_key(plan, SETTINGS, "salt")


CHANNEL = f"{MIRROR}/conda-forge"
LAYER = {PYTHON: CHANNEL, "openssl-3.4.0-h0": CHANNEL}


@pytest.mark.parametrize(
    ("env", "complete", "forks"),
    [
        ({**LAYER, "numpy-2.1-py310": CHANNEL}, True, True),
        (LAYER, True, True),
        ({**LAYER, "numpy-2.1-py310": CHANNEL}, False, False),  # the layer's build unfinished
        ({PYTHON: CHANNEL, "openssl-3.3.2-h0": CHANNEL}, True, False),  # another openssl
        ({PYTHON: CHANNEL}, True, False),
        (None, True, False),  # no conda-meta
    ],
)
def test_servers_fork_from_the_layer_when_it_holds_only_what_the_environment_holds(
    tmp_path: Path, env: dict[str, str] | None, complete: bool, forks: bool
) -> None:
    layer = prefix_with(tmp_path / "layer/env", LAYER)
    if complete:
        (layer.parent / "meta.json").write_text("{}")
    prefix = tmp_path / "entry/env"
    if env is None:
        prefix.mkdir(parents=True)
    else:
        prefix_with(prefix, env)
    assert forks_from(prefix, layer) is forks


def test_an_empty_layer_forks_nothing(tmp_path: Path) -> None:
    layer = prefix_with(tmp_path / "layer/env", {})
    (layer.parent / "meta.json").write_text("{}")
    assert not forks_from(prefix_with(tmp_path / "env", LAYER), layer)
