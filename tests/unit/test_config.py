"""The config file: defaults, units, and errors that name the key, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from hubstack.config import ConfigError, load
from hubstack.config.load import validate
from hubstack.config.units import format_duration, format_size, parse_duration, parse_size


def test_embedded_defaults_match_the_spec() -> None:
    config = validate({})
    assert config.hub.bind == "127.0.0.1:8000"
    assert config.auth.type == "native"
    assert config.backend.type == "local"
    assert config.policy.named_servers.max == 5
    assert config.policy.named_servers.name_max_length == 20
    assert config.policy.idle_timeout == 7200
    assert config.policy.storage.server_volume == 2 * 2**30


def test_starter_file_is_the_defaults() -> None:
    starter = yaml.safe_load(files("hubstack.config").joinpath("starter.yaml").read_text())
    assert validate(starter) == validate({})


def test_missing_default_file_means_embedded_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, source = load()
    assert source is None
    assert config == validate({})
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5G", int(1.5 * 2**30)),
        ("64Mi", 64 * 2**20),
        ("2GiB", 2 * 2**30),
        (1024, 1024),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("2h", 7200), ("30m", 1800), ("1h30m", 5400), ("90", 90), (45, 45)]
)
def test_durations(text: object, expected: int) -> None:
    assert parse_duration(text) == expected


def test_units_round_trip() -> None:
    assert format_size(2 * 2**30) == "2G"
    assert format_size(1000) == "1000"
    assert format_duration(5400) == "1h30m"
    for bad in ("2Q", "-1G", "", True, 0):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("soon", "2h later", "0s", False):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"auth": {"type": "ldap"}}, "auth.type", "'native' or 'pam'"),
        ({"policy": {"idle_timeout": "soon"}}, "policy.idle_timeout", "is not a duration"),
        ({"policy": {"storage": {"home": "lots"}}}, "policy.storage.home", "is not a size"),
        (
            {"policy": {"named_servers": {"max": -1}}},
            "policy.named_servers.max",
            "greater than or equal to 0",
        ),
        ({"hub": {"bind": "localhost:70000"}}, "hub.bind", "outside 1-65535"),
        ({"hub": {"bnid": "x"}}, "hub.bnid", "unknown key"),
        ({"machines": []}, "machines", "at least 1"),
        (
            {"machines": [{"id": "Big One", "display": "B", "cpu": 1, "memory": "1G"}]},
            "machines[0].id",
            "lowercase letters, digits and hyphens",
        ),
        (
            {"machines": [{"id": "a", "display": "A", "cpu": 1}]},
            "machines[0].memory",
            "required",
        ),
        (
            {"environments": [{"id": "e", "display": "E", "prefix": "relative/env"}]},
            "environments[0].prefix",
            "not an absolute path",
        ),
        (
            {
                "machines": [
                    {"id": "a", "display": "A", "cpu": 1, "memory": "1G"},
                    {"id": "a", "display": "B", "cpu": 2, "memory": "2G"},
                ]
            },
            "machines",
            "used twice",
        ),
        ({"extra_jupyterhub_config": {"not a class": {}}}, "extra_jupyterhub_config", "class"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(data, "test.yaml")
    text = str(info.value)
    assert f"  - {key}" in text
    assert fragment in text


def hubstack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubstack.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_init_then_check(tmp_path: Path) -> None:
    assert hubstack("init", cwd=tmp_path).returncode == 0
    assert (tmp_path / "hubstack.yaml").exists()
    assert hubstack("init", cwd=tmp_path).returncode == 1, "init never overwrites silently"
    result = hubstack("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["policy"]["idle_timeout"] == "2h"


@pytest.mark.parametrize("command", ["check", "up"])
def test_cli_refuses_an_invalid_file_naming_the_key(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  named_servers:\n    max: many\n")
    result = hubstack(command, "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "policy.named_servers.max" in result.stderr
    assert "'many'" in result.stderr


def test_cli_refuses_broken_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hub: [unclosed\n")
    result = hubstack("check", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr
