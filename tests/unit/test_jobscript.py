"""The job script: the #SBATCH lines are exactly the request's, and nothing a user or a
name can contain adds a line, an option or shell code."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hubstack.config.load import validate
from hubstack.config.script import SCRIPT_VARIABLES
from hubstack.launch import resolve
from hubstack.launch.slurm_fields import SlurmRequest
from hubstack.slurm.jobscript import (
    DEFAULT_TEMPLATE,
    JobScript,
    JobScriptError,
    render_copy_script,
    render_job_script,
)

CONFIG = validate(
    {
        "backend": {
            "type": "slurm",
            "slurm": {
                "fields": {
                    "partition": {"choices": ["debug", "long"]},
                    "account": {"choices": ["research"]},
                    "qos": {"choices": ["normal"]},
                    "reservation": {"choices": ["course"]},
                    "gpus": {"max": 2},
                    "extras": [
                        {
                            "id": "feature",
                            "display": "Node feature",
                            "sbatch": "--constraint",
                            "choices": ["avx2"],
                        }
                    ],
                }
            },
        },
        "environments": [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/py"}],
    }
)
REQUEST = resolve(CONFIG, {"partition": "long", "walltime": "2h", "gpus": 1}).slurm
assert REQUEST is not None
EXPECTED_SBATCH = [
    "#SBATCH --job-name=hs-alice-analysis",
    "#SBATCH --output=/home/hs-alice/.hubstack/jobs/analysis-%j.log",
    "#SBATCH --export=ALL",
    "#SBATCH --partition=long",
    "#SBATCH --account=research",
    "#SBATCH --qos=normal",
    "#SBATCH --reservation=course",
    "#SBATCH --time=2:00:00",
    "#SBATCH --cpus-per-task=1",
    "#SBATCH --mem=2048M",
    "#SBATCH --gres=gpu:1",
    "#SBATCH --constraint=avx2",
]
PAYLOADS = [
    "debug\n#SBATCH --uid=0",
    "$(touch /tmp/x)",
    "; rm -rf ~",
    "`id`",
    "a b",
    "'quoted'",
    "x\u2028#SBATCH --uid=0",
    "x\x85#SBATCH --uid=0",
    "x\x00",
    "x\r\n#SBATCH --uid=0",
    "x#y",
    "",
]


def job(**changes: Any) -> JobScript:
    base = JobScript(
        job_name="hs-alice-analysis",
        output="/home/hs-alice/.hubstack/jobs/analysis-%j.log",
        workdir="/home/hs-alice",
        request=REQUEST,
        prologue="module load apptainer",
        reporter='port=$(python3 -c "print(40000)")',
        command=["apptainer", "exec", "/images/py.sif", "/opt/envs/py/bin/jupyterhub-singleuser"],
    )
    return dataclasses.replace(base, **changes)


def directives(script: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first command."""
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    header = []
    for line in lines[1:]:
        if line and not line.startswith("#"):
            break
        header.append(line)
    assert all(line.startswith("#SBATCH ") for line in header), header
    assert not [line for line in lines[len(header) + 1 :] if "#SBATCH" in line]
    return header


def bash_accepts(script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_default_script_has_exactly_the_request_options() -> None:
    script = render_job_script(None, job())
    assert directives(script) == EXPECTED_SBATCH
    bash_accepts(script)
    body = script.splitlines()[len(EXPECTED_SBATCH) + 1 :]
    assert body == [
        "set -e",
        "module load apptainer",
        "set -u",
        "cd /home/hs-alice",
        'port=$(python3 -c "print(40000)")',
        'exec apptainer exec /images/py.sif /opt/envs/py/bin/jupyterhub-singleuser --port="$port"',
    ]


@pytest.mark.parametrize("field", ["job_name", "output"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_unsafe_values_on_sbatch_lines_are_refused(field: str, payload: str) -> None:
    with pytest.raises(JobScriptError) as info:
        render_job_script(None, job(**{field: payload}))
    what = {"job_name": "job name", "output": "output path"}[field]
    assert info.value.message.startswith(f"The {what} ")
    assert "cannot go on an #SBATCH line" in info.value.message
    assert info.value.message.isprintable()


@pytest.mark.parametrize("name", ["partition", "account", "qos", "reservation"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_unsafe_request_values_are_refused_at_render_too(name: str, payload: str) -> None:
    """A request resolve() made cannot carry these; one built another way is still checked."""
    request = dataclasses.replace(REQUEST, **{name: payload})
    with pytest.raises(JobScriptError, match=f"value of --{name}"):
        render_job_script(None, job(request=request))


@pytest.mark.parametrize(
    "extras",
    [
        (("--constraint", "avx2 --uid=0"),),
        (("--constraint", "avx2\n#SBATCH --uid=0"),),
        (("--constraint --uid", "0"),),
        (("-C", "avx2"),),
        (("--constraint\n#SBATCH --uid", "0"),),
    ],
)
def test_unsafe_extras_are_refused_at_render(extras: tuple[tuple[str, str], ...]) -> None:
    request = dataclasses.replace(REQUEST, extras=extras)
    with pytest.raises(JobScriptError):
        render_job_script(None, job(request=request))


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", ["partition", "account", "walltime", "cores", "gpus", "feature"])
def test_user_payloads_never_reach_the_script(field: str, payload: str) -> None:
    """Refused at resolve(), or (being a number) rendered from the parsed value only."""
    try:
        request = resolve(CONFIG, {field: payload}).slurm
    except ValueError:
        return
    assert request is not None
    script = render_job_script(None, job(request=request))
    assert payload not in script or payload == ""
    assert len(directives(script)) == len(EXPECTED_SBATCH) - 1  # no --gres without GPUs


@pytest.mark.parametrize(
    "payload",
    ["$(touch {marker})", "; touch {marker}", "`touch {marker}`", "a b", "it's", '"', "\\", "é"],
)
def test_body_values_are_quoted_inert(tmp_path: Path, payload: str) -> None:
    """The working directory and command arguments reach the shell as plain words."""
    marker = tmp_path / "pwned"
    value = payload.format(marker=marker)
    template = "printf '%s\\n' {{ workdir | sh }} {{ command }}\n"
    script = render_job_script(template, job(workdir=value, command=["echo", value]))
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [value, "echo", value]
    assert not marker.exists()
    bash_accepts(render_job_script(None, job(workdir=value, command=["echo", value])))


@pytest.mark.parametrize("payload", ["a\nb", "a\x00b", "a\u2028b", "a\x85b", "a\rb", ""])
@pytest.mark.parametrize("field", ["workdir", "command"])
def test_body_values_with_line_breaks_or_control_characters_are_refused(
    field: str, payload: str
) -> None:
    value: Any = payload if field == "workdir" else ["echo", payload]
    with pytest.raises(JobScriptError, match="empty or has control characters or line breaks"):
        render_job_script(None, job(**{field: value}))


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(JobScriptError, match="The server command is empty"):
        render_job_script(None, job(command=[]))


def test_a_custom_template_gets_every_variable() -> None:
    template = "\n".join(f"{name}={{{{ {name} }}}}" for name in SCRIPT_VARIABLES)
    script = render_job_script(template, job())
    values = dict(line.split("=", 1) for line in script.splitlines() if "=" in line)
    assert values["job_name"] == "hs-alice-analysis"
    assert values["sbatch"].startswith("['--partition=long', '--account=research'")
    assert values["command"] == shlex.join(job().command)
    assert values["request"].startswith("SlurmRequest(")


def test_a_custom_template_may_use_the_request() -> None:
    template = (
        "#!/bin/bash\n"
        "{% for option, value in request.sbatch_options() %}\n"
        "#SBATCH {{ option }} {{ value }}\n"
        "{% endfor %}\n"
        "echo {{ (request.walltime / 60) | int }} minutes\n"
    )
    script = render_job_script(template, job())
    assert "#SBATCH --time 2:00:00\n" in script
    assert script.endswith("echo 120 minutes\n")


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{ jobname }}", "'jobname' is undefined"),
        ("{{ request.nodes }}", "has no attribute 'nodes'"),
        ("{{ command | nosuch }}", "No filter named 'nosuch'"),
        ("{% if %}", "Expected an expression"),
    ],
)
def test_a_broken_template_fails_clearly(template: str, fragment: str) -> None:
    with pytest.raises(JobScriptError) as info:
        render_job_script(template, job())
    assert info.value.message.startswith("The job script template (backend.slurm.script) failed: ")
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "template",
    [
        "{{ request.__class__.__mro__ }}",
        "{{ request.sbatch_options.__globals__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ job_name.__class__ }}",
        "{{ range(10**9) | list }}",
    ],
)
def test_a_template_cannot_reach_python_internals(template: str) -> None:
    with pytest.raises(JobScriptError, match="failed"):
        render_job_script(template, job())


def test_the_readme_shows_the_built_in_template() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"```bash\n{DEFAULT_TEMPLATE}```" in readme


def test_a_request_with_no_optional_values_renders() -> None:
    request = SlurmRequest(
        partition=None,
        account=None,
        qos=None,
        reservation=None,
        walltime=60,
        cores=1,
        memory=300 * 2**20 + 1,
        gpus=0,
    )
    assert directives(render_job_script(None, job(request=request)))[3:] == [
        "#SBATCH --time=0:01:00",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=301M",
    ]


def test_a_copy_job_script_runs_hubdata_with_its_token_off_the_environment(tmp_path: Path) -> None:
    """The token goes from the environment to hubdata's standard input; the script holds
    no path a user typed and no secret."""
    script = render_copy_script(
        "hubdata-hs-alice-7",
        "/home/hs-alice/.hubstack/jobs/hubdata-7-%j.log",
        REQUEST,
        "",
        "/opt/envs/py/bin/python3",
    )
    assert directives(script)[:3] == [
        "#SBATCH --job-name=hubdata-hs-alice-7",
        "#SBATCH --output=/home/hs-alice/.hubstack/jobs/hubdata-7-%j.log",
        "#SBATCH --export=ALL",
    ]
    fake_python = tmp_path / "python3"
    fake_python.write_text("#!/bin/sh\ncat; env | grep -c HUBSTACK_COPY_TOKEN || true\n")
    fake_python.chmod(0o755)
    body = script.replace("/opt/envs/py/bin/python3", str(fake_python))
    run = subprocess.run(
        ["bash", "-c", body],
        env={"PATH": "/usr/bin:/bin", "HUBSTACK_COPY_TOKEN": "tok-123"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == ["tok-123", "0"], "on stdin, not in the environment"
    with pytest.raises(JobScriptError):
        render_copy_script("x\n#SBATCH --uid=0", "/tmp/o", REQUEST, "", "/opt/py")
