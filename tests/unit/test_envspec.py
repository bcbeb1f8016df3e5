"""Spec detection and content keys of environments built from a repository.

Every test builds a small repository tree on disk and reads it the way a launch does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from gitserver import write_tree

from hubstack.config.models import CondaSettings, RSettings
from hubstack.envs.spec import EnvSpec, SpecError, detect, environment_key

PYTHONS = ("3.10", "3.11", "3.12")
Files = dict[str, str | bytes]


def make(root: Path, files: Files, executable: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_tree(root, files, executable)
    return root


def spec_of(tmp_path: Path, files: Files) -> EnvSpec:
    return detect(make(tmp_path / "repo", files), PYTHONS)


def refusal(tmp_path: Path, files: Files) -> str:
    with pytest.raises(SpecError) as info:
        spec_of(tmp_path, files)
    assert str(info.value) == info.value.message
    return info.value.message


# the default environment and requirements.txt ---------------------------------------------


def test_empty_repository_gets_the_default_environment(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"README.md": "# hi\n", "notebooks/a.ipynb": "{}"})
    assert spec == EnvSpec(
        binder_dir="",
        kind="default",
        python=None,
        requirements=(),
        requirement_files=(),
        install_project=False,
        post_build=None,
        start=None,
        defining_files=(),
        whole_tree=False,
        notices=(),
    )


def test_requirements_txt_is_installed_from_its_file(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"requirements.txt": "numpy==2.1\n# a comment\npandas\n"})
    assert spec.kind == "requirements"
    assert spec.requirement_files == ("requirements.txt",)
    assert spec.requirements == ()
    assert spec.defining_files == ("requirements.txt",)
    assert not spec.whole_tree


def test_included_requirement_files_define_the_environment(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "requirements.txt": "-r reqs/base.txt\n--constraint=reqs/pins.txt\nscipy\n",
            "reqs/base.txt": "-r ../requirements.txt\n-rmore.txt\nnumpy\n",
            "reqs/more.txt": "pandas\n",
            "reqs/pins.txt": "numpy<3\n",
        },
    )
    assert spec.defining_files == (
        "requirements.txt",
        "reqs/base.txt",
        "reqs/more.txt",
        "reqs/pins.txt",
    )
    assert spec.requirement_files == ("requirements.txt",)
    assert not spec.whole_tree


@pytest.mark.parametrize(
    "line",
    [
        "-e .",
        "--editable=.",
        ".",
        "./src/mypkg",
        ".[test]",
        "src/mypkg",
        "file:./src/mypkg",
        "mypkg @ file:./src/mypkg",
        "dist/mypkg-1.0-py3-none-any.whl",
        "--find-links ./wheels",
        "-f wheels/",
        "-e .  # the project itself",
        "-e \\\n  ./src/mypkg",
    ],
)
def test_local_paths_make_the_whole_tree_count(tmp_path: Path, line: str) -> None:
    spec = spec_of(tmp_path, {"requirements.txt": f"numpy\n{line}\n"})
    assert spec.whole_tree


@pytest.mark.parametrize(
    "line",
    [
        "numpy>=1.2; python_version >= '3.10'",
        "git+https://github.com/org/pkg@v1#egg=pkg",
        "-e git+https://github.com/org/pkg#egg=pkg",
        "pkg @ https://example.org/pkg-1.0.tar.gz",
        "--index-url https://pypi.org/simple",
        "--extra-index-url=https://download.pytorch.org/whl/cpu",
        "-r https://example.org/requirements.txt",
        "numpy==2.1 --hash=sha256:0123",
        "--pre",
        "# ./not/a/path",
    ],
)
def test_remote_requirements_keep_the_key_to_the_file(tmp_path: Path, line: str) -> None:
    spec = spec_of(tmp_path, {"requirements.txt": f"{line}\n"})
    assert not spec.whole_tree
    assert spec.defining_files == ("requirements.txt",)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("-r ../outside.txt", "'../outside.txt'"),
        ("-c /etc/passwd", "'/etc/passwd'"),
        ("-e ../..", "'../..'"),
        ("/opt/pkg", "'/opt/pkg'"),
        ("~/pkg", "'~/pkg'"),
        ("file:///etc/pkg", "'///etc/pkg'"),
        ("pkg @ file:///srv/pkg", "'///srv/pkg'"),
        ("git+file:///srv/repo", "'///srv/repo'"),
        ("--find-links ../wheels", "'../wheels'"),
    ],
)
def test_paths_that_leave_the_repository_are_refused(tmp_path: Path, line: str, shown: str) -> None:
    message = refusal(tmp_path, {"requirements.txt": f"{line}\n"})
    assert message == (
        f"requirements.txt refers to {shown}, which is outside the repository; only files "
        "inside it can be used."
    )


def test_a_missing_included_file_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, {"requirements.txt": "-r other.txt\n"})
    assert (
        message == "requirements.txt refers to 'other.txt', which is not a file in the repository."
    )


def test_environment_variables_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, {"requirements.txt": "-e ${HOME}/pkg\n"})
    assert message.startswith("requirements.txt uses an environment variable ('-e ${HOME}/pkg')")


def test_symbolic_links_inside_count_and_outside_are_refused(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", {"reqs/base.txt": "numpy\n"})
    (repo / "requirements.txt").symlink_to("reqs/base.txt")
    spec = detect(repo, PYTHONS)
    assert (spec.kind, spec.requirement_files) == ("requirements", ("requirements.txt",))

    (repo / "requirements.txt").unlink()
    (repo / "requirements.txt").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match=r"^requirements.txt is a symbolic link to a place outside"):
        detect(repo, PYTHONS)


# environment.yml ---------------------------------------------------------------------------


def test_environment_yml_translates_conda_specs_for_pypi(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "environment.yml": """
name: analysis
channels: [conda-forge]
dependencies:
  - python=3.11
  - pip
  - numpy=1.26
  - scipy>=1.2,<2
  - pandas
  - xarray 2024.1.*
  - h5py 3.10.0
  - matplotlib-base=3.8=py311_0
  - pytorch
  - librosa
  - pip:
      - requests==2.32.3
      - altair ; python_version >= '3.10'
      - git+https://github.com/org/tool@v1
""",
        },
    )
    assert spec.kind == "environment.yml"
    assert spec.python == "3.11"
    assert spec.requirements == (
        "numpy==1.26.*",
        "scipy>=1.2,<2",
        "pandas",
        "xarray==2024.1.*",
        "h5py==3.10.0",
        "matplotlib==3.8",
        "torch",
        "librosa",
        "requests==2.32.3",
        "altair ; python_version >= '3.10'",
        "git+https://github.com/org/tool@v1",
    )
    assert spec.requirement_files == ()
    assert spec.defining_files == ("environment.yml",)
    assert not spec.whole_tree


def test_environment_yml_pip_section_paths_and_files(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "binder/environment.yaml": "dependencies:\n  - pip:\n    - -e ..\n"
            "    - ../src/extra[plot]\n    - -r more.txt\n",
            "binder/more.txt": "-r ../pins.txt\n",
            "pins.txt": "numpy<3\n",
        },
    )
    assert spec.binder_dir == "binder"
    assert spec.requirements == ("./", "./src/extra[plot]")
    assert spec.requirement_files == ("binder/more.txt",)
    assert spec.defining_files == ("binder/environment.yaml", "binder/more.txt", "pins.txt")
    assert spec.whole_tree
    assert spec.python is None


@pytest.mark.parametrize(
    ("dependency", "shown"),
    [
        ("conda-forge::numpy", "conda-forge::numpy"),
        ("r-base=4.3", "r-base=4.3"),
        ("r-ggplot2", "r-ggplot2"),
        ("gxx_linux-64", "gxx_linux-64"),
        ("cudatoolkit=11.8", "cudatoolkit=11.8"),
        ("nodejs>=18", "nodejs>=18"),
        ("libxml2", "libxml2"),
        ("_libgcc_mutex=0.1=main", "_libgcc_mutex=0.1=main"),
        ("compilers", "compilers"),
    ],
)
def test_packages_that_need_conda_are_refused_by_name(
    tmp_path: Path, dependency: str, shown: str
) -> None:
    message = refusal(
        tmp_path, {"environment.yml": f"dependencies:\n  - numpy\n  - {dependency}\n"}
    )
    assert message == (
        "environment.yml asks for packages that need conda, which hubstack does not use (it "
        f"builds with uv from PyPI): {shown}. Remove them, or list their PyPI equivalents in "
        "the pip: section."
    )


def test_every_conda_only_package_is_named(tmp_path: Path) -> None:
    names = [f"r-pkg{i}" for i in range(12)]
    deps = "".join(f"  - {name}\n" for name in ["gdal", *names])
    message = refusal(tmp_path, {"environment.yml": f"dependencies:\n{deps}"})
    assert "gdal, r-pkg0, r-pkg1" in message
    assert "r-pkg8 and 3 more." in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("dependencies: [numpy\n", r"^environment.yml is not valid YAML: "),
        ("- numpy\n", r"^environment.yml should be a mapping with a dependencies: list\.$"),
        ("dependencies: numpy\n", r"^environment.yml: dependencies should be a list\.$"),
        ("dependencies:\n  - 3.5\n", r"^environment.yml has a dependency given as a number, not"),
        ("dependencies:\n  - numpy[version='>=1']\n", r"has the dependency \"numpy\[version="),
        ("dependencies:\n  - pip: numpy\n", r"^environment.yml: the pip: section should be a"),
        ("dependencies:\n  - pip:\n    - --extra-index-url=https://x.org\n", r"-r <file>\.$"),
        ("dependencies:\n  - pip:\n    - not a requirement!\n", r"'not a requirement!'"),
        ('dependencies:\n  - pip:\n    - "git+https://x.org/a\\n-i y"\n', r"'git\+https://x"),
        ("dependencies:\n  - pip:\n    - \"a ; os_name == 'x\\ny'\"\n", r"dependency \"a ;"),
        ("dependencies:\n  - pip:\n    - -e ../elsewhere\n", r"'\.\./elsewhere', which is"),
        ("dependencies:\n  - python=3.7\n", r"asks for 'python=3\.7', but this hub has Python"),
    ],
)
def test_malformed_environment_yml_is_refused(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(tmp_path, {"environment.yml": content})


def test_environment_yml_python_constraint_chooses_among_the_hubs(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": "dependencies:\n  - python>=3.10,<3.12\n"})
    assert spec.python == "3.11"


def test_empty_environment_yml_is_an_empty_environment(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": ""})
    assert (spec.kind, spec.requirements, spec.python) == ("environment.yml", (), None)


# Pipfile and Pipfile.lock ------------------------------------------------------------------

PIPFILE = """
[[source]]
url = "https://pypi.org/simple"
name = "pypi"

[packages]
numpy = "*"
pandas = "==2.2.2"
scipy = "1.13.0"
requests = {version = ">=2.31", extras = ["socks"]}
pywin32 = {version = "*", sys_platform = "== 'win32'"}
attrs = {version = "*", markers = "python_version >= '3.8'"}
tool = {git = "https://github.com/org/tool.git", ref = "v1.0", subdirectory = "py"}

[dev-packages]
pytest = "*"

[requires]
python_version = "3.10"
"""


def test_pipfile_packages_become_requirements(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"Pipfile": PIPFILE})
    assert spec.kind == "Pipfile"
    assert spec.python == "3.10"
    assert spec.requirements == (
        "numpy",
        "pandas==2.2.2",
        "scipy==1.13.0",
        "requests[socks]>=2.31",
        "pywin32 ; sys_platform == 'win32'",
        "attrs ; (python_version >= '3.8')",
        "tool @ git+https://github.com/org/tool.git@v1.0#subdirectory=py",
        "pytest",
    )
    assert spec.defining_files == ("Pipfile",)
    assert not spec.whole_tree


def test_pipfile_local_paths_install_the_tree(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "binder/Pipfile": '[packages]\nme = {path = "..", editable = true}\n'
            'sub = {path = "../sub", extras = ["x"]}\n',
        },
    )
    assert spec.requirements == ("./", "./sub[x]")
    assert spec.whole_tree


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[packages\n", r"^Pipfile is not valid TOML: "),
        ("packages = 1\n", r"^Pipfile: \[packages\] should be a table of entries\.$"),
        ('[packages]\n"--index-url" = "*"\n', r"the package name '--index-url', which is not"),
        ('[packages]\nx = "==1\\nnumpy"\n', r"^Pipfile: the entry for 'x' is not understood\.$"),
        ("[packages]\nx = {markers = \"os_name == 'a\\nb'\"}\n", r"entry for 'x' is not under"),
        ("[packages]\nx = 1\n", r"^Pipfile: the entry for 'x' is not understood\.$"),
        ('[packages]\nx = {path = "../.."}\n', r"'\.\./\.\.', which is outside the repository"),
        ('[packages]\nx = {git = "/srv/x"}\n', r"git repository '/srv/x'; only remote"),
        ('[requires]\npython_version = "3.7"\n', r"^Pipfile asks for Python 3\.7, but this"),
        ('[requires]\npython_version = "three"\n', r"asks for Python 'three', which is not a"),
    ],
)
def test_malformed_pipfile_is_refused(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(tmp_path, {"Pipfile": content})


LOCK = {
    "_meta": {"requires": {"python_version": "3.11"}, "sources": []},
    "default": {
        "numpy": {"hashes": ["sha256:00"], "version": "==2.1.0", "index": "pypi"},
        "colorama": {"version": "==0.4.6", "markers": "sys_platform == 'win32'"},
        "me": {"editable": True, "path": "."},
    },
    "develop": {"pytest": {"version": "==8.3.2", "extras": ["testing"]}},
}


def test_pipfile_lock_pins_are_installed(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"Pipfile.lock": json.dumps(LOCK)})
    assert spec.kind == "Pipfile.lock"
    assert spec.python == "3.11"
    assert spec.requirements == (
        "numpy==2.1.0",
        "colorama==0.4.6 ; (sys_platform == 'win32')",
        "./",
        "pytest[testing]==8.3.2",
    )
    assert spec.whole_tree


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"^Pipfile.lock is not valid JSON: "),
        ("[]", r"^Pipfile.lock should be a JSON object\.$"),
        ('{"default": {"x": {"version": 1}}}', r"^Pipfile.lock: the entry for 'x' is not "),
        ('{"default": {"x": {"version": "==1", "extras": "a"}}}', r"extras of 'x' should be"),
        ("[" * 100_000, r"^Pipfile.lock is not valid JSON: "),
    ],
)
def test_malformed_pipfile_lock_is_refused(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(tmp_path, {"Pipfile.lock": content})


# precedence ------------------------------------------------------------------------------

ENV_YML = "dependencies:\n  - python=3.10\n  - numpy\n"
PIPFILE_SMALL = '[packages]\nrequests = "*"\n'
LOCK_SMALL = json.dumps({"default": {"six": {"version": "==1.16.0"}}})


def test_environment_yml_beats_every_other_file(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "environment.yml": ENV_YML,
            "Pipfile": PIPFILE_SMALL,
            "Pipfile.lock": LOCK_SMALL,
            "requirements.txt": "pandas\n",
            "runtime.txt": "python-3.12\n",
            "setup.py": "from setuptools import setup\nsetup()\n",
        },
    )
    assert (spec.kind, spec.python, spec.requirements) == ("environment.yml", "3.10", ("numpy",))
    assert spec.requirement_files == ()
    assert not spec.install_project
    assert spec.defining_files == ("environment.yml",)
    assert spec.notices == (
        "These files are ignored because environment.yml defines the environment: "
        "Pipfile.lock, Pipfile, requirements.txt, runtime.txt, setup.py.",
    )


def test_environment_yml_beats_environment_yaml(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": ENV_YML, "environment.yaml": "nonsense: ["})
    assert spec.defining_files == ("environment.yml",)
    assert spec.notices[-1].endswith("defines the environment: environment.yaml.")


def test_pipfile_lock_beats_pipfile_and_requirements(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {"Pipfile": PIPFILE_SMALL, "Pipfile.lock": LOCK_SMALL, "requirements.txt": "pandas\n"},
    )
    assert (spec.kind, spec.requirements, spec.requirement_files) == (
        "Pipfile.lock",
        ("six==1.16.0",),
        (),
    )
    assert spec.notices == (
        "These files are ignored because Pipfile.lock defines the environment: requirements.txt.",
    )


def test_pipfile_beats_requirements_and_setup_py(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "Pipfile": PIPFILE_SMALL,
            "requirements.txt": "pandas\n",
            "setup.py": "",
            "pyproject.toml": '[project]\nname = "x"\n[build-system]\nrequires = []\n',
        },
    )
    assert (spec.kind, spec.requirements) == ("Pipfile", ("requests",))
    assert not spec.install_project
    assert not spec.whole_tree
    assert spec.notices[-1].endswith(": requirements.txt, setup.py, pyproject.toml.")


def test_pipfile_python_version_beats_runtime_txt(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {"Pipfile": PIPFILE_SMALL + '[requires]\npython_version = "3.10"\n', "runtime.txt": "x"},
    )
    assert spec.python == "3.10"
    assert spec.notices[-1].endswith("defines the environment: runtime.txt.")


def test_runtime_txt_sets_the_python_of_a_pipfile_without_one(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"Pipfile": PIPFILE_SMALL, "runtime.txt": "python-3.11\n"})
    assert spec.python == "3.11"
    assert spec.defining_files == ("Pipfile", "runtime.txt")


def test_lock_without_python_takes_the_pipfiles(tmp_path: Path) -> None:
    pipfile = PIPFILE_SMALL + '[requires]\npython_full_version = "3.12.4"\n'
    spec = spec_of(tmp_path, {"Pipfile": pipfile, "Pipfile.lock": LOCK_SMALL})
    assert spec.python == "3.12"
    assert spec.defining_files == ("Pipfile.lock", "Pipfile")


def test_runtime_txt_is_ignored_with_environment_yml(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"environment.yml": "dependencies: [numpy]\n", "runtime.txt": "?"})
    assert spec.python is None
    assert spec.notices == (
        "These files are ignored because environment.yml defines the environment: runtime.txt.",
    )


# runtime.txt and pyproject.toml ------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "python"),
    [
        ("python-3.11", "3.11"),
        ("python-3.11\n", "3.11"),
        ("python-3.11.4", "3.11"),
        ("python-3.10-2024-01-31", "3.10"),
        ("python-3", "3.12"),
    ],
)
def test_runtime_txt_chooses_python(tmp_path: Path, runtime: str, python: str) -> None:
    spec = spec_of(tmp_path, {"runtime.txt": runtime, "requirements.txt": "numpy\n"})
    assert (spec.kind, spec.python) == ("requirements", python)
    assert spec.defining_files == ("runtime.txt", "requirements.txt")


def test_runtime_txt_alone_keeps_the_default_kind(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"runtime.txt": "python-3.10"})
    assert (spec.kind, spec.python, spec.defining_files) == ("default", "3.10", ("runtime.txt",))


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (
            "python-3.7",
            "runtime.txt asks for Python 3.7, but this hub has Python 3.10, 3.11, 3.12; no "
            "other Python version can be had here: downloads of Python versions are off "
            "(binder.python_sources).",
        ),
        ("python-2", "runtime.txt asks for Python 2, but this hub has Python 3.10, 3.11, 3.12;"),
        (
            "r-4.3-2024-01-01",
            "runtime.txt asks for an R environment, which is built from conda packages "
            "(r-base, r-irkernel), and conda builds are off on this hub (binder.conda.enabled).",
        ),
        ("r-2024-02-30", "runtime.txt names the date 2024-02-30, which is not a date."),
        (
            "r-4.3-01-2024",
            "runtime.txt asks for R as 'r-4.3-01-2024'; write r-<version>, "
            "r-<version>-<YYYY-MM-DD> or r-<YYYY-MM-DD>, e.g. r-4.3-2024-01-10.",
        ),
        (
            "ruby-3.3",
            "runtime.txt should name a Python version such as python-3.12; it says 'ruby-3.3'.",
        ),
        ("python-3.11\npython-3.12", "runtime.txt should name a Python version such as"),
    ],
)
def test_runtime_txt_refusals(tmp_path: Path, runtime: str, message: str) -> None:
    assert refusal(tmp_path, {"runtime.txt": runtime}).startswith(message)


def test_r_without_conda_builds_is_refused_even_with_environment_yml(tmp_path: Path) -> None:
    message = refusal(tmp_path, {"runtime.txt": "r-2024-01-01", "environment.yml": ENV_YML})
    assert message.endswith("conda builds are off on this hub (binder.conda.enabled).")


def r_spec(tmp_path: Path, files: Files, repos: str | None = None) -> EnvSpec:
    conda = CondaSettings(channels=["conda-forge", "bioconda"])
    repo = make(tmp_path / "repo", files)
    return detect(repo, PYTHONS, conda, (), RSettings(repos=repos))


@pytest.mark.parametrize(
    ("runtime", "r_base", "repos"),
    [
        ("r-4.3-2024-01-10", "r-base 4.3.*", "https://packagemanager.posit.co/cran/2024-01-10"),
        ("r-4.3.2", "r-base 4.3.2", "https://cloud.r-project.org"),
        ("r-2025-07-01", "r-base", "https://packagemanager.posit.co/cran/2025-07-01"),
    ],
)
def test_runtime_txt_asks_for_r_from_the_first_channel(
    tmp_path: Path, runtime: str, r_base: str, repos: str
) -> None:
    files = {"runtime.txt": runtime, "install.R": "", "environment.yml": ENV_YML}
    spec = r_spec(tmp_path, files)
    assert spec.conda is not None and spec.r is not None
    assert spec.conda.channels == ("conda-forge",)
    assert spec.conda.specs == (r_base, "r-irkernel", "python 3.10.*")
    assert (spec.kind, spec.python, spec.r.repos, spec.r.install_r) == (
        "R",
        None,
        repos,
        "install.R",
    )
    assert (spec.r.description, spec.whole_tree) == (False, True)
    assert spec.defining_files == ("runtime.txt", "install.R")
    assert spec.notices == (
        "These files are ignored because runtime.txt defines the environment: environment.yml.",
    )


def test_description_installs_the_repository_with_remotes_and_requirements(
    tmp_path: Path,
) -> None:
    files = {"DESCRIPTION": "Package: x\n", "requirements.txt": "numpy\n"}
    spec = r_spec(tmp_path, files, repos="https://cran.example.org/")
    assert spec.conda is not None and spec.r is not None
    assert spec.conda.specs == ("r-base", "r-irkernel", "r-remotes", "python 3.10.*")
    assert (spec.kind, spec.requirement_files) == ("requirements", ("requirements.txt",))
    assert (spec.r.repos, spec.r.install_r, spec.r.description) == (
        "https://cran.example.org/",
        None,
        True,
    )


def test_the_r_site_repository_is_part_of_the_key(tmp_path: Path) -> None:
    files = {"runtime.txt": "r-4.3"}
    keys = {
        environment_key(tmp_path / str(i) / "repo", r_spec(tmp_path / str(i), files, repos), "salt")
        for i, repos in enumerate(("https://a.example/", "https://b.example/"))
    }
    assert len(keys) == 2


def test_no_python_versions_to_choose_from(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", {"runtime.txt": "python-3.12"})
    with pytest.raises(SpecError, match=r"asks for Python 3\.12, but this hub offers no other"):
        detect(repo, ())
    assert detect(repo, ("3.12",)).python == "3.12"


@pytest.mark.parametrize(
    ("requires", "python"),
    [(">=3.11", "3.12"), ("<3.11", "3.10"), (">=3.10.4,<3.12", "3.11"), ("~=3.10.0", "3.10")],
)
def test_requires_python_picks_the_newest_fitting_version(
    tmp_path: Path, requires: str, python: str
) -> None:
    spec = spec_of(tmp_path, {"pyproject.toml": f'[project]\nrequires-python = "{requires}"\n'})
    assert (spec.kind, spec.python, spec.install_project) == ("default", python, False)
    assert spec.defining_files == ("pyproject.toml",)
    assert not spec.whole_tree


def test_requires_python_must_fit_the_runtime_and_the_hub(tmp_path: Path) -> None:
    project = '[project]\nrequires-python = ">=3.11"\n'
    spec = spec_of(tmp_path / "a", {"pyproject.toml": project, "runtime.txt": "python-3.11"})
    assert spec.python == "3.11"
    message = refusal(tmp_path / "b", {"pyproject.toml": project, "runtime.txt": "python-3.10"})
    assert message == (
        "runtime.txt asks for Python 3.10 and pyproject.toml asks for requires-python '>=3.11', "
        "but this hub has Python 3.10, 3.11, 3.12; no other Python version can be had here: "
        "downloads of Python versions are off (binder.python_sources)."
    )
    message = refusal(tmp_path / "c", {"pyproject.toml": '[project]\nrequires-python = ">=4"\n'})
    assert message.startswith("pyproject.toml asks for requires-python '>=4', but this hub")
    message = refusal(tmp_path / "d", {"pyproject.toml": '[project]\nrequires-python = "3.1x"\n'})
    assert "which is not a version specifier such as '>=3.11'." in message


INSTALLABLE = '[project]\nname = "me"\nversion = "1"\n[build-system]\nrequires = ["hatchling"]\n'


@pytest.mark.parametrize(
    "files",
    [{"setup.py": "from setuptools import setup\nsetup()\n"}, {"pyproject.toml": INSTALLABLE}],
)
def test_a_root_project_is_installed_with_the_whole_tree(tmp_path: Path, files: Files) -> None:
    spec = spec_of(tmp_path / "alone", files)
    assert (spec.kind, spec.install_project, spec.whole_tree) == ("package", True, True)
    spec = spec_of(tmp_path / "with", {**files, "requirements.txt": "numpy\n"})
    assert (spec.kind, spec.install_project, spec.whole_tree) == ("requirements", True, True)


def test_a_tool_only_pyproject_does_nothing(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"pyproject.toml": "[tool.ruff]\nline-length = 100\n"})
    assert (spec.kind, spec.install_project, spec.defining_files) == ("default", False, ())


def test_a_project_without_build_system_only_chooses_python(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"pyproject.toml": '[project]\nname = "x"\n'})
    assert (spec.kind, spec.install_project, spec.whole_tree) == ("default", False, False)


# binder/ and .binder/ --------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["binder", ".binder"])
def test_a_binder_folder_overrides_the_root(tmp_path: Path, folder: str) -> None:
    spec = spec_of(
        tmp_path,
        {
            f"{folder}/requirements.txt": "numpy\n",
            f"{folder}/postBuild": "#!/bin/sh\n",
            f"{folder}/start": '#!/bin/sh\nexec "$@"\n',
            "environment.yml": "broken: [",
            "Dockerfile": "FROM scratch\n",
            "setup.py": "",
            "pyproject.toml": INSTALLABLE,
            "README.md": "",
        },
    )
    assert spec.binder_dir == folder
    assert spec.kind == "requirements"
    assert spec.requirement_files == (f"{folder}/requirements.txt",)
    assert not spec.install_project
    assert (spec.post_build, spec.start) == (f"{folder}/postBuild", f"{folder}/start")
    assert spec.defining_files == (f"{folder}/requirements.txt", f"{folder}/postBuild")
    assert spec.notices == (
        f"This repository has a {folder}/ folder, so only the files in it define the "
        "environment; these files at the top level are ignored: environment.yml, Dockerfile, "
        "setup.py, pyproject.toml.",
    )


def test_an_empty_binder_folder_gives_the_default_environment(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", {"requirements.txt": "numpy\n"})
    (repo / "binder").mkdir()
    spec = detect(repo, PYTHONS)
    assert (spec.binder_dir, spec.kind, spec.requirement_files) == ("binder", "default", ())


def test_a_binder_file_is_not_a_binder_folder(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"binder": "not a folder", "requirements.txt": "numpy\n"})
    assert (spec.binder_dir, spec.requirement_files) == ("", ("requirements.txt",))


def test_both_binder_folders_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, {"binder/requirements.txt": "a\n", ".binder/apt.txt": "b\n"})
    assert message == (
        "This repository has both a binder/ and a .binder/ folder; keep only one, as Binder "
        "refuses this too."
    )


def test_root_only_files_are_not_read_from_the_binder_folder(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {"binder/setup.py": "", "binder/pyproject.toml": INSTALLABLE, "binder/DESCRIPTION": ""},
    )
    assert (spec.kind, spec.install_project, spec.notices) == ("default", False, ())


# notices -------------------------------------------------------------------------------


def test_what_cannot_be_honoured_is_said(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        {
            "apt.txt": "# system tools\ngraphviz\nlibgl1-mesa-glx  # for opencv\n\n",
            "Dockerfile": "FROM ubuntu\n",
            "Project.toml": "",
            "REQUIRE": "",
            "default.nix": "",
            "install.R": "",
            "requirements.txt": "numpy\n",
        },
    )
    assert spec.kind == "requirements"
    assert spec.notices == (
        "The system packages of apt.txt (graphviz, libgl1-mesa-glx) are unpacked into the "
        "environment without running their installation scripts; the build log names the "
        "packages that have some.",
        "Dockerfile cannot be used without a container engine; the environment is built from "
        "the repository's other files.",
        "Project.toml describes a Julia environment, which hubstack does not build; it is ignored.",
        "REQUIRE lists Julia packages, which hubstack does not install; it is ignored.",
        "default.nix describes a Nix environment, which hubstack does not build; it is ignored.",
        "install.R installs R packages, and is run only in an R environment: one that "
        "runtime.txt asks for with r-<version>-<date>, as on Binder; it is not run.",
    )
    assert spec.defining_files == ("requirements.txt",)


def test_apt_txt_packages_are_part_of_the_plan_and_the_key(tmp_path: Path) -> None:
    names = "".join(f"pkg{i}\n" for i in range(11)) + "g++\npkg0\n"
    spec = spec_of(tmp_path / "a", {"binder/apt.txt": names})
    assert spec.apt_packages == (*(f"pkg{i}" for i in range(11)), "g++")
    assert spec.notices[0].startswith(
        "The system packages of binder/apt.txt (pkg0, pkg1, pkg2, pkg3, pkg4, pkg5, pkg6, "
        "pkg7, pkg8, pkg9 and 2 more) are unpacked"
    )
    assert spec_of(tmp_path / "c", {"apt.txt": "# nothing\n"}).notices == ()


@pytest.mark.parametrize(
    "line", ["<script>", "Figlet", "-o=Dir::Etc=/tmp", "figlet=2.2", "figlet:i386", "a", "x y"]
)
def test_apt_txt_lines_that_are_not_package_names_are_refused(tmp_path: Path, line: str) -> None:
    message = refusal(tmp_path, {"apt.txt": f"figlet\n{line}\n"})
    assert message.startswith("apt.txt should list Debian package names")
    assert "figlet," not in message


def test_post_build_and_start(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"postBuild": "#!/bin/sh\n", "start": '#!/bin/sh\nexec "$@"\n'})
    assert (spec.kind, spec.post_build, spec.start) == ("default", "postBuild", "start")
    assert spec.defining_files == ("postBuild",)
    assert spec.whole_tree


# files that are not what they claim ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("requirements.txt", b"numpy\0\x01\x02", "requirements.txt is not a UTF-8 text file."),
        ("runtime.txt", b"\xff\xfepython", "runtime.txt is not a UTF-8 text file."),
        (
            "Pipfile",
            b"#" * (1 << 20) + b"\n",
            "Pipfile is larger than 1 MiB; hubstack does not read configuration files that big.",
        ),
        ("environment.yml", b"[" * 20_000, "environment.yml is not valid YAML: "),
        ("environment.yml", b"dependencies: &x [*x]\n", "environment.yml has a dependency given"),
        ("environment.yml", b"x: !!python/object:os.system y\n", "environment.yml is not valid"),
        ("pyproject.toml", b"x = [" * 10_000, "pyproject.toml is not valid TOML: "),
    ],
)
def test_junk_files_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    assert refusal(tmp_path, {name: content}).startswith(message)


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"runtime.txt": "\ufeffpython-3.11\n"})
    assert spec.python == "3.11"


def test_too_many_included_files_are_refused(tmp_path: Path) -> None:
    files: Files = {f"r{i}.txt": f"-r r{i + 1}.txt\n" for i in range(70)}
    files["r70.txt"] = "numpy\n"
    files["requirements.txt"] = "-r r0.txt\n"
    message = refusal(tmp_path, files)
    assert message.endswith("requirements files that include each other; hubstack stops there.")


# environment keys -----------------------------------------------------------------------


def key_of(root: Path, salt: str = "builder-1") -> str:
    return environment_key(root, detect(root, PYTHONS), salt)


def key_after(root: Path, files: Files, executable: tuple[str, ...] = ()) -> str:
    make(root, files, executable)
    return key_of(root)


BASE: Files = {
    "requirements.txt": "-r extra.txt\nnumpy\n",
    "extra.txt": "pandas\n",
    "README.md": "# demo\n",
    "notebooks/intro.ipynb": "{}",
    "start": '#!/bin/sh\nexec "$@"\n',
    "apt.txt": "curl\n",
}


def test_key_is_a_deterministic_sha256(tmp_path: Path) -> None:
    one, two = make(tmp_path / "one", BASE), make(tmp_path / "two", BASE)
    key = key_of(one)
    assert re.fullmatch("[0-9a-f]{64}", key)
    assert key_of(two) == key
    assert key_of(one, salt="builder-2") != key


def test_key_follows_only_the_defining_files(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", BASE)
    key = key_of(repo)
    assert key_after(repo, {"README.md": "# changed\n", "notebooks/new.ipynb": "{}"}) == key
    assert key_after(repo, {"start": '#!/bin/sh\nexport X=1\nexec "$@"\n'}) == key
    key = key_after(repo, {"apt.txt": "curl\nwget\n"})  # system packages are built too
    assert key != key_of(make(tmp_path / "before", BASE))
    assert key_after(repo, {"apt.txt": "# tools\ncurl\nwget\n"}) == key
    changed = key_after(repo, {"extra.txt": "pandas==2.2\n"})
    assert changed != key
    assert key_after(repo, {"requirements.txt": "-r extra.txt\nnumpy<3\n"}) != changed


def test_key_changes_with_the_python_asked_for(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", {"requirements.txt": "numpy\n"})
    key = key_of(repo)
    assert key_after(repo, {"runtime.txt": "python-3.11\n"}) != key


def test_post_build_makes_every_file_count(tmp_path: Path) -> None:
    repo = make(tmp_path / "repo", {**BASE, "postBuild": "#!/bin/sh\n"}, ("postBuild",))
    key = key_of(repo)
    assert key_after(repo, {"README.md": "# changed\n"}) != key
    key = key_of(repo)
    assert key_after(repo, {"notebooks/intro.ipynb": "{}"}) == key
    assert (
        key_after(repo, {"notebooks/intro.ipynb": "{}"}, executable=("notebooks/intro.ipynb",))
        != key
    )


def test_whole_tree_key_takes_links_by_target_and_skips_git(tmp_path: Path) -> None:
    outside = make(tmp_path / "outside", {"data.csv": "1\n"})
    repo = make(tmp_path / "repo", {"requirements.txt": "-e .\n", "setup.py": ""})
    (repo / "data").symlink_to(outside / "data.csv")
    key = key_of(repo)
    (outside / "data.csv").write_text("2\n")
    assert key_of(repo) == key
    make(repo, {".git/HEAD": "ref: refs/heads/main\n", "sub/.git": "gitdir: x\n"})
    assert key_of(repo) == key
    (repo / "data").unlink()
    (repo / "data").symlink_to("elsewhere")
    assert key_of(repo) != key


def test_whole_tree_key_tells_paths_from_contents(tmp_path: Path) -> None:
    one = make(tmp_path / "one", {"postBuild": "", "a/b": "c"})
    two = make(tmp_path / "two", {"postBuild": "", "a": "", "b": "c"})
    three = make(tmp_path / "three", {"postBuild": "", "a/b": "c", "empty-dir/.keep": ""})
    os.remove(three / "empty-dir/.keep")
    assert key_of(one) != key_of(two)
    assert key_of(three) == key_of(one)


@pytest.mark.parametrize(
    ("dependencies", "added"),
    [
        ("[r-base=4.3, r-ggplot2]", ("r-irkernel",)),
        ("[r-base, r-irkernel=1.3]", ()),
    ],
)
def test_an_environment_yml_with_r_packages_gets_the_r_kernel(
    tmp_path: Path, dependencies: str, added: tuple[str, ...]
) -> None:
    spec = r_spec(tmp_path, {"environment.yml": f"dependencies: {dependencies}\n"})
    assert spec.conda is not None and spec.r is not None
    asked = tuple(dependencies.strip("[]").split(", "))
    assert spec.conda.specs == (*asked, "python 3.10.*", *added)
    assert (spec.kind, spec.r.repos, spec.r.install_r, spec.whole_tree) == (
        "environment.yml",
        "https://cloud.r-project.org",
        None,
        False,
    )


def test_an_environment_yml_without_r_packages_has_no_r(tmp_path: Path) -> None:
    assert r_spec(tmp_path, {"environment.yml": "dependencies: [numpy, rpy2]\n"}).r is None
