"""Conda builds' pure parts: reading environment.yml for conda, channels and the allow-list,
the Python sources beyond the host's, the server packages for an older Python, and the
build script lines. The builds themselves: tests/system/test_conda_builds.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubstack.config.models import CondaSettings, Config, RSettings
from hubstack.envs.builder import build_script
from hubstack.envs.conda import CondaPlan, channel_url, installer_input
from hubstack.envs.python_sources import conda_python_spec
from hubstack.envs.rees_files import PythonAsk, SpecError
from hubstack.envs.server_packages import same_major
from hubstack.envs.spec import EnvSpec, detect

PYTHONS = ("3.11",)
CONDA = CondaSettings()


def spec_of(tmp_path: Path, files: dict[str, str], **kw: object) -> EnvSpec:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return detect(tmp_path, PYTHONS, kw.pop("conda", CONDA), **kw)  # type: ignore[arg-type]


def refusal(tmp_path: Path, files: dict[str, str], **kw: object) -> str:
    with pytest.raises(SpecError) as info:
        spec_of(tmp_path, files, **kw)
    return info.value.message


ENV = """
channels: [conda-forge, defaults]
dependencies:
  - python=3.10
  - numpy=1.26
  - conda-forge::scipy >=1.11
  - matplotlib-base 3.8.* py310*
  - pip:
    - tabulate==0.9.0
    - -r binder-extra.txt
"""


def test_environment_yml_is_a_conda_plan_with_its_pip_section(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": ENV, "binder-extra.txt": "termcolor\n"})
    assert spec.kind == "environment.yml"
    assert spec.conda == CondaPlan(
        ("conda-forge",),
        ("python=3.10", "numpy=1.26", "scipy >=1.11", "matplotlib-base 3.8.* py310*"),
    )
    assert spec.python is None  # the channel's Python, not one of the hub's
    assert spec.requirements == ("tabulate==0.9.0",)
    assert spec.requirement_files == ("binder-extra.txt",)
    assert spec.notices[-1] == (
        "environment.yml lists the channel defaults, which this hub does not use; the "
        "packages come from conda-forge."
    )


def test_without_python_or_channels_the_defaults(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": "dependencies:\n  - hello-conda\n"})
    assert spec.conda == CondaPlan(("conda-forge",), ("hello-conda", "python 3.10.*"))


def test_runtime_txt_is_ignored_beside_environment_yml(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": "", "runtime.txt": "python-3.12\n"})
    assert spec.defining_files == ("environment.yml",)
    assert "runtime.txt" in spec.notices[-1]


def test_conda_builds_off_translate_for_pypi_as_before(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": "dependencies:\n  - numpy=1.26\n"}, conda=None)
    assert (spec.conda, spec.requirements) == (None, ("numpy==1.26.*",))


@pytest.mark.parametrize(
    ("dependencies", "shown"),
    [
        ("https://example.org/linux-64/evil-1-0.tar.bz2", "'https://example.org/linux-64/evil"),
        ("numpy[channel=evil]", "'numpy[channel=evil]'"),
        ("./local/package", "'./local/package'"),
        ("numpy; rm -rf /", "'numpy; rm -rf /'"),
        ("numpy\nscipy", "'numpy\\nscipy'"),
    ],
)
def test_dependencies_that_name_another_source_are_refused(
    tmp_path: Path, dependencies: str, shown: str
) -> None:
    message = refusal(
        tmp_path, {"environment.yml": f"dependencies:\n  - {json.dumps(dependencies)}\n"}
    )
    assert message.startswith(f"environment.yml has the dependency {shown}")
    assert message.endswith(
        "which is not a conda package specification such as numpy=1.26 or 'scipy >=1.11'."
    )


@pytest.mark.parametrize(
    "content",
    [
        "channels: [bioconda]\ndependencies: [samtools]\n",
        "dependencies:\n  - bioconda::samtools\n",
    ],
)
def test_channels_outside_the_allow_list_are_refused(tmp_path: Path, content: str) -> None:
    assert refusal(tmp_path, {"environment.yml": content}) == (
        "environment.yml asks for packages from the channel bioconda, which this hub does "
        "not allow; it allows conda-forge."
    )


def test_an_allowed_second_channel_and_the_mirror(tmp_path: Path) -> None:
    conda = CondaSettings(channels=["conda-forge", "bioconda"], mirror="https://m.example/c/")
    env = "channels: [bioconda, conda-forge]\ndependencies: [samtools]\n"
    spec = spec_of(tmp_path, {"environment.yml": env}, conda=conda)
    assert spec.conda is not None and spec.conda.channels == ("bioconda", "conda-forge")
    data = json.loads(installer_input(spec.conda, conda, Path("/e/env"), Path("/e/cache")))
    assert data["channels"] == ["https://m.example/c/bioconda", "https://m.example/c/conda-forge"]
    assert channel_url("conda-forge", CONDA) == "https://conda.anaconda.org/conda-forge"


def test_channel_names_in_the_config_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"binder\.conda\.channels\.0"):
        Config.model_validate({"binder": {"conda": {"channels": ["https://evil.example"]}}})
    with pytest.raises(ValidationError, match=r"binder\.python_sources\.0"):
        Config.model_validate({"binder": {"python_sources": ["pyenv"]}})


# A Python the host lacks --------------------------------------------------------------------


def test_a_python_the_host_lacks_comes_from_the_conda_channel(tmp_path: Path) -> None:
    files = {"runtime.txt": "python-3.10\n", "requirements.txt": "tabulate\n"}
    spec = spec_of(tmp_path, files, python_sources=["conda", "uv"])
    assert (spec.kind, spec.python, spec.uv_python) == ("requirements", None, None)
    assert spec.conda == CondaPlan(("conda-forge",), ("python 3.10.*",))


def test_or_from_uv_when_conda_comes_later_or_is_off(tmp_path: Path) -> None:
    project = '[project]\nrequires-python = ">=3.12"\n'
    off = CondaSettings(enabled=False)
    spec = spec_of(tmp_path, {"pyproject.toml": project}, conda=off, python_sources=["conda", "uv"])
    assert (spec.conda, spec.uv_python) == (None, ">=3.12")


@pytest.mark.parametrize(
    ("sources", "conda", "why"),
    [
        ([], CONDA, "downloads of Python versions are off"),
        (["conda"], CondaSettings(enabled=False), "conda builds are off"),
    ],
)
def test_without_a_source_the_refusal_says_why(
    tmp_path: Path, sources: list[str], conda: CondaSettings, why: str
) -> None:
    message = refusal(
        tmp_path, {"runtime.txt": "python-3.10\n"}, conda=conda, python_sources=sources
    )
    assert message == (
        "runtime.txt asks for Python 3.10, but this hub has Python 3.11; no other Python "
        f"version can be had here: {why} (binder.python_sources)."
    )


def test_python_asks_as_a_conda_spec() -> None:
    from packaging.specifiers import SpecifierSet

    asks = [
        PythonAsk("runtime.txt", "Python 3.10", SpecifierSet("==3.10.*")),
        PythonAsk("pyproject.toml", ">=3.10.4", SpecifierSet(">=3.10.4,!=3.10.7")),
    ]
    assert conda_python_spec(asks) == "python !=3.10.7,3.10.*,>=3.10.4"


# The server's packages and the build script ------------------------------------------------


def test_server_packages_for_an_older_python_keep_their_major_versions() -> None:
    text = "# comment\njupyterhub==6.1.1\nipykernel==7.4.0\nrfc3987-syntax; sys_platform == 'x'\n"
    assert same_major(text) == (
        "# comment\njupyterhub<7,>=6\nipykernel<8,>=7\nrfc3987-syntax; sys_platform == 'x'\n"
    )


def test_build_script_of_a_conda_environment(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": ENV, "binder-extra.txt": "termcolor\n"})
    script = build_script(spec, Path("/cache/k"), Path("/usr/bin/python3.11"), "/opt/uv")
    assert "/opt/uv venv" not in script
    assert "/conda_install.py /cache/k/.hubstack-build/conda.json" in script
    assert "-c 'import pip' 2>/dev/null || /opt/uv pip install --quiet" in script
    assert "base-requirements-same-major.txt" in script


def test_build_script_of_a_uv_python(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"runtime.txt": "python-3.13\n"}, python_sources=["uv"])
    script = build_script(spec, Path("/cache/k"), Path("/usr/bin/python3.11"), "/opt/uv")
    install_dir = "UV_PYTHON_INSTALL_DIR=/cache/k/python"
    assert f"{install_dir} UV_PYTHON_DOWNLOADS=automatic /opt/uv python install --no-bin" in script
    assert f"{install_dir} /opt/uv venv --quiet --seed --python '==3.13.*' /cache/k/env" in script


def test_build_script_of_an_r_environment(tmp_path: Path) -> None:
    files = {"runtime.txt": "r-4.3-2024-01-10\n", "install.R": "", "DESCRIPTION": "Package: x\n"}
    spec = spec_of(tmp_path, files, r_settings=RSettings(repos="https://cran.example/it's"))
    script = build_script(spec, Path("/cache/k"), Path("/usr/bin/python3.11"), "/opt/uv")
    site = "/cache/k/env/lib/R/etc/Rprofile.site"
    # The site's repository as an R string, shell-quoted; written as a new file.
    repos = """printf '%s\\n' 'options(repos = c(CRAN = "https://cran.example/it'"'"'s"))\n"""
    assert repos in script
    assert "file.access(.Library, 2) != 0" in script  # users install into their own library
    assert f"rm -f {site} && mv {site}.new {site}" in script
    steps = [
        "R installs packages from",
        "/cache/k/env/bin/Rscript --no-save --no-restore --no-init-file --no-environ install.R",
        'remotes::install_local(upgrade = "never")',
        "Installing the Jupyter server and kernel",
        "IRkernel::installspec(user = FALSE",
        "Build finished",
    ]
    at = [script.index(step) for step in steps]
    assert at == sorted(at)
    assert 'PATH=/cache/k/env/bin:"$PATH" R_KERNEL_PREFIX=/cache/k/env ' in script
