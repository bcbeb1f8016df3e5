"""The config file: defaults, units, and errors that name the key, value and what is allowed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from hubstack.config import Config, ConfigError, dump, load
from hubstack.config.load import validate
from hubstack.config.models import RESERVED_SBATCH, GpusRange
from hubstack.units import (
    format_duration,
    format_size,
    human_size,
    parse_duration,
    parse_size,
)


def test_embedded_defaults_match_the_spec() -> None:
    config = validate({})
    assert config.hub.bind == "127.0.0.1:8000"
    assert config.auth.type == "native"
    assert config.backend.type == "local"
    assert config.policy.named_servers.max == 5
    assert config.policy.named_servers.name_max_length == 20
    assert config.policy.idle_timeout == 7200
    assert config.policy.storage.server_volume == 2 * 2**30
    # The built-in environment has no language server to search for; a declared one searches.
    [default] = config.environments
    assert not default.language_server_search
    declared = validate({"environments": [{"id": "x", "display": "X", "prefix": "/opt/x"}]})
    assert declared.environments[0].language_server_search


def test_starter_file_is_the_defaults_with_a_declared_environment() -> None:
    """The embedded default environment is the hand-built one setup.sh makes; the starter
    file declares its packages instead, for the hub to build."""
    starter = yaml.safe_load(files("hubstack.config").joinpath("starter.yaml").read_text())
    [declared] = validate(starter).environments
    assert declared.declared and declared.spec == {
        "requirements.txt": "numpy\npandas\nmatplotlib\n"
    }
    defaults = validate({}).model_dump(mode="json")
    assert validate({**starter, "environments": defaults["environments"]}) == validate({})


def test_failed_logins_are_limited_by_default() -> None:
    limits = validate({}).auth.failed_logins
    assert (limits.per_account, limits.per_address, limits.lockout) == (5, 20, 600)
    assert limits.limited
    assert not validate({"auth": {"failed_logins": {"per_address": 0}}}).auth.failed_logins.limited


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
    ("size", "shown"),
    [(0, "0 B"), (1000, "1000 B"), (1024, "1 KB"), (1536 * 2**20, "1.5 GB"), (2 * 2**40, "2 TB")],
)
def test_sizes_read_as_a_person_reads_them(size: int, shown: str) -> None:
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"auth": {"type": "kerberos"}}, "auth.type", "'native', 'pam', 'github'"),
        ({"policy": {"idle_timeout": "soon"}}, "policy.idle_timeout", "is not a duration"),
        ({"policy": {"storage": {"home": "lots"}}}, "policy.storage.home", "is not a size"),
        (
            {"policy": {"storage": {"group_token_lifetime": "2d"}}},
            "policy.storage.group_token_lifetime",
            "must be 15m to 36h",
        ),
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
        ({"binder": {"allowed_schemes": ["ssh"]}}, "binder.allowed_schemes[0]", "'https'"),
        ({"binder": {"allowed_schemes": []}}, "binder.allowed_schemes", "at least 1"),
        ({"binder": {"allowed_hosts": ["Git Hub"]}}, "binder.allowed_hosts[0]", "host pattern"),
        ({"binder": {"root": "binder"}}, "binder.root", "not an absolute path"),
        ({"binder": {"limits": {"time": "ever"}}}, "binder.limits.time", "not a duration"),
        ({"binder": {"pythons": {"3": "/usr/bin/python3"}}}, "binder.pythons", "3.12"),
        ({"binder": {"cors_origins": ["*"]}}, "binder.cors_origins[0]", "pattern"),
        ({"binder": {"build_account": "root!"}}, "binder.build_account", "pattern"),
        ({"binder": {"ref_cache": "2h"}}, "binder.ref_cache", "less than or equal to 3600"),
        ({"binder": {"ref_cache": "0"}}, "binder.ref_cache", "not a positive duration"),
        (
            {"auth": {"failed_logins": {"lockout": "soon"}}},
            "auth.failed_logins.lockout",
            "not a duration",
        ),
        (
            {"auth": {"failed_logins": {"per_account": -1}}},
            "auth.failed_logins.per_account",
            "greater than or equal to 0",
        ),
        (
            {"environments": [{"id": "repository", "display": "R", "prefix": "/opt/r"}]},
            "environments",
            "reserved",
        ),
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


# --- backend.slurm -----------------------------------------------------------------------

SLURM = {
    "type": "slurm",
    "slurm": {
        "containers": {"python": "apptainer exec --bind '/data dir' /images/py.sif"},
        "fields": {
            "partition": {"choices": ["debug", "long"], "default": "debug"},
            "account": {"choices": ["research", "teaching"]},
            "walltime": {"default": "30m", "max": "1d"},
            "memory": {"default": "1536M", "min": "256M", "max": "64G"},
            "gpus": {"max": 4},
            "extras": [
                {
                    "id": "feature",
                    "display": "Node feature",
                    "sbatch": "--constraint",
                    "choices": ["avx2", "avx512"],
                }
            ],
        },
        "partitions": {"debug": {"max_walltime": "1h", "max_cores": 2, "max_memory": "4G"}},
    },
}


def slurm_config(**slurm: object) -> dict:
    return {"backend": {"type": "slurm", "slurm": slurm}}


def test_slurm_defaults_offer_wall_time_cores_and_memory() -> None:
    slurm = validate({}).backend.slurm
    assert slurm.submit_as == "runuser"
    assert slurm.port_range == "20000-29999"
    assert (slurm.poll_interval, slurm.pending_poll_interval, slurm.unknown_grace) == (10, 2, 300)
    assert slurm.fields.partition.choices == [] and slurm.fields.partition.initial is None
    assert (slurm.fields.walltime.default, slurm.fields.walltime.max) == (3600, 8 * 3600)
    assert slurm.fields.cores is not None and slurm.fields.cores.default is None
    assert slurm.fields.gpus is None
    assert slurm.containers == {} and slurm.partitions == {}


def test_slurm_values_are_parsed() -> None:
    slurm = validate({"backend": SLURM}).backend.slurm
    assert slurm.containers["python"] == shlex.split(
        "apptainer exec --bind '/data dir' /images/py.sif"
    )
    assert slurm.fields.account.initial == "research", "no default: the first choice"
    assert slurm.fields.partition.initial == "debug"
    assert slurm.fields.walltime.max == 86400
    assert slurm.fields.memory is not None and slurm.fields.memory.default == 1536 * 2**20
    assert slurm.fields.gpus == GpusRange(default=0, min=0, max=4)
    assert slurm.partitions["debug"].max_memory == 4 * 2**30


def test_slurm_config_round_trips_through_json_and_check() -> None:
    """The spawner gets the config as JSON; `hubstack check` prints it as YAML."""
    config = validate({"backend": SLURM})
    assert Config.model_validate_json(config.model_dump_json()) == config
    printed = yaml.safe_load(dump(config))
    assert printed["backend"]["slurm"]["containers"]["python"] == (
        "apptainer exec --bind '/data dir' /images/py.sif"
    )
    assert validate(printed) == config


def test_a_container_may_be_given_as_a_list() -> None:
    config = validate(slurm_config(containers={"python": ["apptainer", "exec", "/i.sif"]}))
    assert config.backend.slurm.containers["python"] == ["apptainer", "exec", "/i.sif"]


def fields(**values: object) -> dict:
    return slurm_config(fields=values)


def extra(**values: object) -> dict:
    return fields(
        extras=[
            {"id": "feature", "display": "F", "sbatch": "--constraint", "choices": ["a"]} | values
        ]
    )


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        (
            fields(partition={"choices": ["debug"], "default": "long"}),
            "backend.slurm.fields.partition.default",
            "must be one of the choices: debug (got 'long')",
        ),
        (
            fields(qos={"default": "high"}),
            "backend.slurm.fields.qos.default",
            "must be one of the choices: (none) (got 'high')",
        ),
        (
            fields(cores={"min": 16, "max": 8}),
            "backend.slurm.fields.cores.min",
            "must not be more than max 8 (got 16)",
        ),
        (
            fields(memory={"default": "128G"}),
            "backend.slurm.fields.memory.default",
            "must be between min 256M and max 64G (got '128G')",
        ),
        (
            fields(walltime={"default": "9h"}),
            "backend.slurm.fields.walltime.default",
            "between min 1m and max 8h (got '9h')",
        ),
        (fields(walltime={"max": "soon"}), "backend.slurm.fields.walltime.max", "not a duration"),
        (fields(gpus={}), "backend.slurm.fields.gpus.max", "required"),
        (
            fields(partition={"choices": ["debug\n#SBATCH --uid=0"]}),
            "backend.slurm.fields.partition.choices[0]",
            "use only letters, digits and",
        ),
        (
            fields(account={"choices": ["$(id)"]}),
            "backend.slurm.fields.account.choices[0]",
            "(no spaces or quotes)",
        ),
        (
            slurm_config(partitions={"debug": {"max_cores": 2}}),
            "backend.slurm.partitions.debug",
            "need the partitions listed in fields.partition.choices",
        ),
        (
            {
                "backend": {
                    "slurm": {
                        "fields": {"partition": {"choices": ["debug"]}},
                        "partitions": {"gpu": {}},
                    }
                }
            },
            "backend.slurm.partitions.gpu",
            "is not among fields.partition.choices: debug (got 'gpu')",
        ),
        (
            slurm_config(partitions={"debug": {"max_memory": "lots"}}),
            "backend.slurm.partitions.debug.max_memory",
            "is not a size",
        ),
        (
            slurm_config(containers={"julia": "apptainer exec /j.sif"}),
            "backend.slurm.containers.julia",
            "is not an environment id; environments: python (got 'julia')",
        ),
        (
            slurm_config(containers={"python": "apptainer 'exec"}),
            "backend.slurm.containers.python",
            "not a command line: No closing quotation",
        ),
        (slurm_config(containers={"python": " "}), "backend.slurm.containers.python", "empty"),
        (slurm_config(port_range="80-90"), "backend.slurm.port_range", "within 1024-65535"),
        (slurm_config(port_range="5000-4000"), "backend.slurm.port_range", "LOW-HIGH"),
        (slurm_config(port_range="40000"), "backend.slurm.port_range", "(got '40000')"),
        (slurm_config(hub_url="hub:8081"), "backend.slurm.hub_url", "an http or https URL"),
        (slurm_config(bin_dir="bin"), "backend.slurm.bin_dir", "not an absolute path"),
        (
            slurm_config(shared={"volumes": "vols"}),
            "backend.slurm.shared.volumes",
            "not an absolute path",
        ),
        (slurm_config(submit_as="doas"), "backend.slurm.submit_as", "'runuser', 'sudo' or 'su'"),
        (slurm_config(sumbit_as="sudo"), "backend.slurm.sumbit_as", "unknown key"),
        ({"backend": {"type": "kubernetes"}}, "backend.type", "'local' or 'slurm'"),
        (extra(id="cores"), "backend.slurm.fields.extras[0].id", "a field hubstack has itself"),
        (extra(id="Feature"), "backend.slurm.fields.extras[0].id", "lowercase letters"),
        (
            extra(sbatch="--uid"),
            "backend.slurm.fields.extras[0].sbatch",
            "--uid is or abbreviates --uid, which hubstack sets itself",
        ),
        (
            extra(sbatch="--part"),
            "backend.slurm.fields.extras[0].sbatch",
            "abbreviates --partition",
        ),
        (extra(sbatch="-C"), "backend.slurm.fields.extras[0].sbatch", "a long sbatch option"),
        (
            extra(sbatch="--constraint=a --uid=0"),
            "backend.slurm.fields.extras[0].sbatch",
            "a long sbatch option",
        ),
        (extra(choices=[]), "backend.slurm.fields.extras[0].choices", "at least 1 item"),
        (
            extra(choices=["a b"]),
            "backend.slurm.fields.extras[0].choices[0]",
            "use only letters, digits",
        ),
        (
            extra(default="b"),
            "backend.slurm.fields.extras[0].default",
            "must be one of the choices: a (got 'b')",
        ),
        (
            fields(
                extras=[
                    {"id": "f", "display": "F", "sbatch": "--constraint", "choices": ["a"]},
                    {"id": "f", "display": "G", "sbatch": "--licenses", "choices": ["b"]},
                ]
            ),
            "backend.slurm.fields.extras[1].id",
            "is used twice",
        ),
        (
            fields(
                extras=[
                    {"id": "f", "display": "F", "sbatch": "--constraint", "choices": ["a"]},
                    {"id": "g", "display": "G", "sbatch": "--constraint", "choices": ["b"]},
                ]
            ),
            "backend.slurm.fields.extras[1].sbatch",
            "is set by another extra already",
        ),
        (
            slurm_config(script="#!/bin/bash\n{{ jobname }}\n"),
            "backend.slurm.script",
            "uses jobname, which a job script does not have; it may use: job_name",
        ),
        (
            slurm_config(script="#!/bin/bash\n{% if %}\n"),
            "backend.slurm.script",
            "not a valid template: Expected an expression",
        ),
        (
            slurm_config(script="{{ command | nosuch }}"),
            "backend.slurm.script",
            "No filter named 'nosuch'",
        ),
    ],
)
def test_slurm_errors_name_the_key_and_what_is_allowed(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(data, "test.yaml")
    problems = [p for p in info.value.problems if p.startswith(f"{key}: ")]
    assert problems, info.value.problems
    assert fragment in problems[0]


def test_a_long_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        validate(slurm_config(script="{% if %}" + "x" * 1000), "test.yaml")
    (problem,) = info.value.problems
    assert len(problem) < 200
    assert problem.endswith("...')")


@pytest.mark.parametrize(
    ("machine", "field", "default", "problem"),
    [
        (
            {"cpu": 15.5, "memory": "2G"},
            "cores",
            2,
            "outside min 1 to max 8; set a default or widen the range (got 16)",
        ),
        (
            {"cpu": 1, "memory": "128M"},
            "memory",
            "1G",
            "outside min 256M to max 64G; set a default or widen the range (got '128M')",
        ),
    ],
)
def test_on_slurm_machine_types_must_fit_a_field_without_default(
    machine: dict, field: str, default: object, problem: str
) -> None:
    machines = [{"id": "big", "display": "B", **machine}]
    with pytest.raises(ConfigError) as info:
        validate({"backend": {"type": "slurm"}, "machines": machines})
    assert info.value.problems == [
        f"backend.slurm.fields.{field}: machine type 'big' needs a value {problem}"
    ]
    assert validate({"machines": machines}), "the Slurm fields do not limit the local backend"
    with_default = {"backend": fields(**{field: {"default": default}})["backend"]}
    assert validate({**with_default, "machines": machines}), "a default replaces the machine's"


def starter_slurm_example() -> dict:
    """The commented ``backend.slurm`` example of the starter file, uncommented."""
    lines = files("hubstack.config").joinpath("starter.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # slurm:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line[4:])
    return yaml.safe_load("\n".join(block))


def test_starter_slurm_example_is_valid() -> None:
    starter = yaml.safe_load(files("hubstack.config").joinpath("starter.yaml").read_text())
    starter["backend"] |= {"type": "slurm", **starter_slurm_example()}
    slurm = validate(starter).backend.slurm
    assert slurm.fields.partition.choices == ["debug", "long", "gpu"]
    assert slurm.fields.partition.groups == {"gpu": ["lab-a"]}
    assert slurm.partitions["debug"].max_walltime == 3600
    assert slurm.containers["python"] == ["apptainer", "exec", "/images/python.sif"]
    assert slurm.prologue == "module load apptainer\n"


def test_readme_names_every_option_an_extra_may_not_set() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    paragraph = readme[readme.index("An extra may not set") :].split("\n\n")[0]
    assert set(re.findall(r"`(--[a-z-]+)`", paragraph)) == RESERVED_SBATCH


def test_units_refuse_numbers_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_size("9" * 400 + "G")
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400 + "h")


@pytest.mark.parametrize(
    ("old", "old_key", "new_key", "value"),
    [
        (
            {"backend": {"local": {"user_prefix": "lab-"}}},
            "backend.local.user_prefix",
            "accounts.prefix",
            "lab-",
        ),
        ({"backend": {"local": {"limits": "off"}}}, "backend.local.limits", "hub.limits", "off"),
    ],
)
def test_moved_keys_still_work_and_say_where_they_live_now(
    old: dict, old_key: str, new_key: str, value: str
) -> None:
    notices: list[str] = []
    config = validate(old, "hub.yaml", notices.append)
    section, key = new_key.split(".")
    assert getattr(getattr(config, section), key) == value
    assert notices == [f"hub.yaml: {old_key} has moved to {new_key}; the old key still works"]


def test_a_moved_key_set_twice_with_two_values_is_refused() -> None:
    data = {"accounts": {"prefix": "a-"}, "backend": {"local": {"user_prefix": "b-"}}}
    with pytest.raises(ConfigError) as caught:
        validate(data, "hub.yaml", lambda _: None)
    assert caught.value.problems == [
        "backend.local.user_prefix: has moved to accounts.prefix, which is also set; keep one"
    ]


def test_check_reports_a_moved_key(tmp_path: Path) -> None:
    path = tmp_path / "hubstack.yaml"
    path.write_text("backend:\n  local:\n    user_prefix: lab-\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hubstack.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend.local.user_prefix has moved to accounts.prefix" in proc.stderr
    assert yaml.safe_load(proc.stdout)["accounts"] == {"prefix": "lab-"}
