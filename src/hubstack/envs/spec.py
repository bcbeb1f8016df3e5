"""What environment a repository asks for, and the key of that environment in the cache.

:func:`detect` applies the Reproducible Execution Environment Specification the way
repo2docker does (which files count, where, and which one wins) to a checked-out tree and
returns a plan for a uv build, refusing what uv cannot build and listing as notices what is
ignored. :func:`environment_key` hashes only what that build can read, so a commit that
changes the README or a notebook keeps its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet

from hubstack.config.models import CondaSettings, RSettings
from hubstack.envs import r_env
from hubstack.envs.conda import DEFAULT_PYTHON, CondaPlan, read_conda_file
from hubstack.envs.python_sources import conda_python_spec, elsewhere
from hubstack.envs.rees_files import (
    PlannedInstall,
    PythonAsk,
    RepoTree,
    SpecError,
    is_python_project,
    listing,
    read_apt,
    read_environment_yml,
    read_pipfile,
    read_pipfile_lock,
    read_pyproject,
    read_runtime,
    scan_requirements_file,
)

__all__ = ["EnvSpec", "SpecError", "detect", "environment_key"]

# Files repo2docker reads in the root or the binder folder, in the order notices name them.
CONFIG_FILES = (
    "environment.yml", "environment.yaml", "Pipfile.lock", "Pipfile", "requirements.txt",
    "runtime.txt", "apt.txt", "postBuild", "start", "Dockerfile", "Project.toml",
    "JuliaProject.toml", "REQUIRE", "default.nix", "install.R",
)  # fmt: skip
# Read only in the root, and only when there is no binder folder.
ROOT_ONLY_FILES = ("setup.py", "pyproject.toml", "DESCRIPTION")

_UNSUPPORTED = {
    "Dockerfile": "{} cannot be used without a container engine; the environment is built "
    "from the repository's other files.",
    "Project.toml": "{} describes a Julia environment, which hubstack does not build; "
    "it is ignored.",
    "JuliaProject.toml": "{} describes a Julia environment, which hubstack does not build; "
    "it is ignored.",
    "REQUIRE": "{} lists Julia packages, which hubstack does not install; it is ignored.",
    "default.nix": "{} describes a Nix environment, which hubstack does not build; it is ignored.",
    "install.R": "{} installs R packages, and is run only in an R environment: one that "
    "runtime.txt asks for with r-<version>-<date>, as on Binder; it is not run.",
}
_CHUNK = 1 << 20
# Python versions are named X.Y; a specifier such as ">=3.11.4" is met by some X.Y.z release.
_PATCH_RANGE = 50


@dataclass(frozen=True)
class EnvSpec:
    """A repository's environment as a uv build plan; paths are relative to the root."""

    binder_dir: str  # "", "binder" or ".binder"
    # "default", "requirements", "environment.yml", "Pipfile", "Pipfile.lock" or "package"
    kind: str
    python: str | None  # "3.X" the files ask for; None: the builder's default
    # One `uv pip install` argument each (a requirement, URL or ./path), paths relative to the
    # repository root: from environment.yml, a Pipfile or a Pipfile.lock.
    requirements: tuple[str, ...]
    requirement_files: tuple[str, ...]  # for `uv pip install -r`, run in the file's folder
    install_project: bool  # root setup.py or pyproject.toml: `uv pip install .` in the root
    post_build: str | None
    start: str | None  # run at every launch, so not part of the key
    defining_files: tuple[str, ...]  # files whose content defines the environment
    whole_tree: bool  # the build reads the rest of the repository too
    notices: tuple[str, ...]  # what is not honoured here, for the launch page
    # Debian packages of apt.txt, unpacked into the environment (see builder.apt_steps)
    apt_packages: tuple[str, ...] = ()
    # environment.yml as conda packages (see envs.conda), or a conda channel's Python as the
    # base of another kind; None: a virtualenv of a hub Python
    conda: CondaPlan | None = None
    uv_python: str | None = None  # a Python uv downloads (see envs.python_sources)
    r: r_env.RPlan | None = None  # R from conda packages (see envs.r_env)


@dataclass
class _Plan:
    kind: str
    install: PlannedInstall
    defining: list[str]
    asks: list[PythonAsk]
    install_project: bool = False
    conda: CondaPlan | None = None
    r: r_env.RPlan | None = None


def _binder_dir(tree: RepoTree) -> str:
    binder, dot_binder = tree.is_dir("binder"), tree.is_dir(".binder")
    if binder and dot_binder:
        raise SpecError(
            "This repository has both a binder/ and a .binder/ folder; keep only one, "
            "as Binder refuses this too."
        )
    return ".binder" if dot_binder else "binder" if binder else ""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _meets(specifier: SpecifierSet, version: str) -> bool:
    return any(specifier.contains(f"{version}.{patch}") for patch in range(_PATCH_RANGE))


def choose_python(asks: list[PythonAsk], available: Collection[str]) -> str | None:
    """The newest of the hub's Python versions that every ask accepts (None: no asks)."""
    if not asks:
        return None
    fitting = [v for v in available if all(_meets(ask.specifier, v) for ask in asks)]
    if fitting:
        return max(fitting, key=_version_key)
    asked = " and ".join(f"{ask.source} asks for {ask.shown}" for ask in asks)
    offered = ", ".join(sorted(available, key=_version_key))
    hub = f"this hub has Python {offered}" if offered else "this hub offers no other Python"
    raise SpecError(f"{asked}, but {hub}.")


def _python_plan(tree: RepoTree, binder_dir: str, at: dict[str, str], r: bool = False) -> _Plan:
    """requirements.txt, runtime.txt and the root project: repo2docker's Python buildpack,
    which its R buildpack extends (``r``: runtime.txt names R, not Python)."""
    plan = _Plan("default", PlannedInstall(), [], [])
    if "runtime.txt" in at and not r:
        plan.asks.append(read_runtime(tree, at["runtime.txt"]))
        plan.defining.append(at["runtime.txt"])
    if not binder_dir:
        plan.install_project = "setup.py" in at
        if "pyproject.toml" in at:
            project = read_pyproject(tree, "pyproject.toml")
            plan.install_project |= project.installable
            if project.requires_python is not None:
                plan.asks.append(project.requires_python)
                plan.defining.append("pyproject.toml")
    if "requirements.txt" in at:
        path = at["requirements.txt"]
        scan_requirements_file(tree, path, plan.install.reach, posixpath.dirname(path))
        plan.install.requirement_files.append(path)
        plan.kind = "requirements"
    elif plan.install_project:
        plan.kind = "package"
    return plan


def _pipenv_plan(tree: RepoTree, at: dict[str, str], ignored: list[str]) -> _Plan:
    """Pipfile.lock beats Pipfile; the Python version: lock, then Pipfile, then runtime.txt."""
    if "Pipfile.lock" in at:
        lock = at["Pipfile.lock"]
        plan = _Plan("Pipfile.lock", read_pipfile_lock(tree, lock), [lock], [])
        if plan.install.python is None and "Pipfile" in at:
            plan.install.python = read_pipfile(tree, at["Pipfile"]).python
            plan.defining.append(at["Pipfile"])
    else:
        plan = _Plan("Pipfile", read_pipfile(tree, at["Pipfile"]), [at["Pipfile"]], [])
    if plan.install.python is not None:
        plan.asks.append(plan.install.python)
        ignored.append("runtime.txt")
    elif "runtime.txt" in at:
        plan.asks.append(read_runtime(tree, at["runtime.txt"]))
        plan.defining.append(at["runtime.txt"])
    ignored += ["requirements.txt", "setup.py", "pyproject.toml"]
    return plan


def _conda_plan(
    tree: RepoTree,
    at: dict[str, str],
    ignored: list[str],
    settings: tuple[CondaSettings | None, RSettings],
    notices: list[str],
) -> _Plan:
    """environment.yml wins over every other file; runtime.txt is ignored with it. With
    conda builds on, its packages (Python too) come from conda channels, with R's kernel
    if it has R packages; else from PyPI."""
    rel = at.get("environment.yml") or at["environment.yaml"]
    conda, r_settings = settings
    if conda is not None and conda.enabled:
        found = read_conda_file(tree, rel, conda)
        notices += found.notices
        plan = _Plan("environment.yml", found.pip, [rel], [], conda=found.conda)
        if r_env.uses_r(found.conda.specs):
            plan.conda = CondaPlan(found.conda.channels, r_env.with_kernel(found.conda.specs))
            plan.r = r_env.plan(None, None, False, r_settings)
    else:
        plan = _Plan("environment.yml", read_environment_yml(tree, rel), [rel], [])
    if plan.install.python is not None:
        plan.asks.append(plan.install.python)
    ignored += ["environment.yaml", "Pipfile.lock", "Pipfile", "requirements.txt"]
    ignored += ["runtime.txt", "setup.py", "pyproject.toml"]
    return plan


def _r_plan(
    tree: RepoTree,
    binder_dir: str,
    at: dict[str, str],
    runtime: r_env.RRuntime | None,
    settings: tuple[CondaSettings | None, RSettings],
    ignored: list[str],
) -> _Plan:
    """R wins over environment.yml and Pipfiles, as repo2docker's buildpack order has it; its
    packages, R and Python alike, come from the first conda channel."""
    conda, r_settings = settings
    what = at["runtime.txt"] if runtime else "DESCRIPTION"
    if conda is None or not conda.enabled:
        raise SpecError(
            f"{what} asks for an R environment, which is built from conda packages "
            "(r-base, r-irkernel), and conda builds are off on this hub (binder.conda.enabled)."
        )
    plan = _python_plan(tree, binder_dir, at, r=True)
    plan.kind = "R" if plan.kind == "default" else plan.kind
    plan.defining += [at[name] for name in ("runtime.txt", "install.R") if name in at]
    r = r_env.plan(runtime, at.get("install.R"), "DESCRIPTION" in at, r_settings)
    python = conda_python_spec(plan.asks) if plan.asks else f"python {DEFAULT_PYTHON}.*"
    plan.asks = []
    plan.conda = CondaPlan((conda.channels[0],), (*r_env.conda_specs(r), python))
    plan.r = r
    ignored += ["environment.yml", "environment.yaml", "Pipfile.lock", "Pipfile"]
    return plan


def _present(tree: RepoTree, binder_dir: str) -> dict[str, str]:
    """The configuration files that count, by name, as repository paths."""
    at = {
        name: posixpath.join(binder_dir, name)
        for name in CONFIG_FILES
        if tree.is_file(posixpath.join(binder_dir, name))
    }
    if not binder_dir:
        at.update((name, name) for name in ROOT_ONLY_FILES if tree.is_file(name))
    return at


def _worth_naming(tree: RepoTree, ignored: list[str]) -> list[str]:
    """Ignored files a notice should name: not a top-level pyproject.toml that only holds
    tools' settings, which defines no environment either way."""
    return [path for path in ignored if path != "pyproject.toml" or is_python_project(tree, path)]


def _notices(tree: RepoTree, binder_dir: str, at: dict[str, str], is_r: bool) -> list[str]:
    """Files hubstack cannot honour, and root files a binder folder overrides."""
    notices: list[str] = []
    if binder_dir:
        root = _worth_naming(
            tree, [name for name in CONFIG_FILES + ROOT_ONLY_FILES if tree.is_file(name)]
        )
        if root:
            notices.append(
                f"This repository has a {binder_dir}/ folder, so only the files in it define "
                f"the environment; these files at the top level are ignored: {', '.join(root)}."
            )
    if "apt.txt" in at and (packages := read_apt(tree, at["apt.txt"])):
        notices.append(
            f"The system packages of {at['apt.txt']} ({listing(packages)}) are unpacked into "
            "the environment without running their installation scripts; the build log names "
            "the packages that have some."
        )
    unsupported = {
        n: t for n, t in _UNSUPPORTED.items() if n in at and not (is_r and n == "install.R")
    }
    notices += [text.format(at[name]) for name, text in unsupported.items()]
    return notices


def detect(
    root: Path,
    available_pythons: Collection[str],
    conda_settings: CondaSettings | None = None,
    python_sources: Sequence[str] = (),
    r_settings: RSettings | None = None,
) -> EnvSpec:
    """The environment the checked-out tree at ``root`` asks for; ``conda_settings``: how
    environment.yml is built (None: from PyPI, as with ``binder.conda.enabled`` false);
    ``python_sources``: ``binder.python_sources``, for a Python the host does not have;
    ``r_settings``: ``binder.r``.

    Raises :class:`SpecError` for what cannot be built here: both binder folders, conda-only
    packages, R without conda builds, a Python version this hub does not have, malformed or
    oversized files, and references that leave the repository.
    """
    tree = RepoTree(root)
    binder_dir = _binder_dir(tree)
    at = _present(tree, binder_dir)
    runtime = r_env.read_r_runtime(tree, at["runtime.txt"]) if "runtime.txt" in at else None
    is_r = runtime is not None or "DESCRIPTION" in at
    notices = _notices(tree, binder_dir, at, is_r)
    ignored: list[str] = []
    settings = (conda_settings, r_settings or RSettings())
    if is_r:
        plan = _r_plan(tree, binder_dir, at, runtime, settings, ignored)
    elif "environment.yml" in at or "environment.yaml" in at:
        plan = _conda_plan(tree, at, ignored, settings, notices)
    elif "Pipfile.lock" in at or "Pipfile" in at:
        plan = _pipenv_plan(tree, at, ignored)
    else:
        plan = _python_plan(tree, binder_dir, at)
    uv_python, python = None, None
    try:
        python = choose_python(plan.asks, available_pythons)
    except SpecError as refusal:
        plan.conda, uv_python = elsewhere(plan.asks, python_sources, conda_settings, refusal)
    shown = [at[name] for name in dict.fromkeys(ignored) if name in at]
    shown = _worth_naming(tree, [path for path in shown if path not in plan.defining])
    if shown:
        notices.append(
            f"These files are ignored because {plan.defining[0]} defines the environment: "
            f"{', '.join(shown)}."
        )
    reach = plan.install.reach
    post_build = at.get("postBuild")
    apt = tuple(read_apt(tree, at["apt.txt"])) if "apt.txt" in at else ()
    defining = [*plan.defining, *reach.files, *([post_build] if post_build else [])]
    return EnvSpec(
        binder_dir=binder_dir,
        kind=plan.kind,
        python=python,
        requirements=tuple(plan.install.requirements),
        requirement_files=tuple(plan.install.requirement_files),
        install_project=plan.install_project,
        post_build=post_build,
        start=at.get("start"),
        defining_files=tuple(dict.fromkeys(defining)),
        # install.R and DESCRIPTION run or install the repository's own code, as postBuild
        whole_tree=reach.local
        or plan.install_project
        or post_build is not None
        or bool(plan.r and (plan.r.install_r or plan.r.description)),
        notices=tuple(notices),
        apt_packages=apt,
        conda=plan.conda,
        uv_python=uv_python,
        r=plan.r,
    )


def environment_key(root: Path, spec: EnvSpec, salt: str) -> str:
    """The cache key: sha256 over ``salt``, the build plan and what the build can read.

    That is the defining files, or with ``whole_tree`` every file of the tree (path,
    executable bit, content; a symbolic link by its target, never followed; ``.git``
    skipped). ``start`` and the notices are left out: they do not change the build.
    """
    digest = hashlib.sha256()
    plan = {
        "salt": salt,
        "kind": spec.kind,
        "python": spec.python,
        "binder_dir": spec.binder_dir,
        "requirements": spec.requirements,
        "requirement_files": spec.requirement_files,
        "install_project": spec.install_project,
        "post_build": spec.post_build,
        "whole_tree": spec.whole_tree,
        "apt_packages": spec.apt_packages,
        "conda": spec.conda and [spec.conda.channels, spec.conda.specs],
        "uv_python": spec.uv_python,
        "r": spec.r and [spec.r.repos, spec.r.install_r, spec.r.description],
    }
    digest.update(json.dumps(plan, sort_keys=True).encode() + b"\0")
    if spec.whole_tree:
        for record in _tree_records(Path(root)):
            digest.update(record)
    else:
        tree = RepoTree(root)
        for rel in sorted(spec.defining_files):
            digest.update(b"F\0" + os.fsencode(rel) + b"\0" + _content_digest(tree.real(rel)))
    return digest.hexdigest()


def _content_digest(path: str) -> bytes:
    """A file's sha256, read in chunks; the file itself, never a link in its place."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _tree_records(root: Path) -> Iterator[bytes]:
    """One record per file and link, in a fixed order; records end in a fixed-size digest or
    a NUL, and paths hold no NUL, so no two trees give the same stream."""
    folders = [""]
    while folders:
        folder = folders.pop()
        with os.scandir(root / folder) as scan:
            entries = sorted(scan, key=lambda entry: os.fsencode(entry.name))
        subfolders = []
        for entry in entries:
            rel = os.fsencode(posixpath.join(folder, entry.name))
            if entry.name == ".git":
                continue
            if entry.is_symlink():
                yield b"L\0" + rel + b"\0" + os.fsencode(os.readlink(entry.path)) + b"\0"
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append(posixpath.join(folder, entry.name))
            elif entry.is_file(follow_symlinks=False):
                mode = b"x" if entry.stat(follow_symlinks=False).st_mode & 0o111 else b"-"
                yield b"F\0" + rel + b"\0" + mode + _content_digest(entry.path)
        folders.extend(reversed(subfolders))
