"""Readers for the single files of the Reproducible Execution Environment Specification.

Each reader turns one file into what a uv build needs and refuses, with :class:`SpecError`,
what uv cannot do. Repository files are untrusted: every read is capped, never leaves the
repository (symbolic links included) and turns malformed content into a refusal that names
the file, so a launch page can show it.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from hubstack.errors import Explained
from hubstack.untrusted import json_kind, quote_untrusted

CONFIG_MAX = 1 << 20
# A Pipfile.lock carries every wheel's hash, so a large but honest one passes 1 MiB.
LOCK_MAX = 8 << 20
# -r chains deeper or wider than this are abuse, not configuration.
MAX_REQUIREMENT_FILES = 64
LIST_MAX = 10

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+:=<>!*,-]*")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_NAMED_URL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*@\s*(.+)")
_LOCAL_SPEC = re.compile(r"(?P<path>[^\s\[;#]+)(?P<extras>\[[A-Za-z0-9._, -]*\])?")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".zip")

_FILE_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint"})
_EDITABLE = frozenset({"-e", "--editable"})
_LOCATION_OPTIONS = frozenset({"-f", "--find-links", "-i", "--index-url", "--extra-index-url"})

# Conda packages whose PyPI distribution has another name.
CONDA_TO_PYPI = {
    "matplotlib-base": "matplotlib",
    "msgpack-python": "msgpack",
    "py-opencv": "opencv-python",
    "pyqt": "PyQt5",
    "pytables": "tables",
    "python-graphviz": "graphviz",
    "python-kaleido": "kaleido",
    "pytorch": "torch",
    "pytorch-cpu": "torch",
}
# Conda packages with no PyPI equivalent that installs the same thing: compilers, runtimes of
# other languages, system libraries and tools. Together with the prefix and suffix rules below.
CONDA_ONLY = frozenset({
    "blas", "boost", "boost-cpp", "bzip2", "c-compiler", "ca-certificates", "cairo", "clang",
    "clangxx", "compilers", "cuda-nvcc", "cuda-toolkit", "cudatoolkit", "cudnn", "curl",
    "cxx-compiler", "eigen", "esmf", "esmpy", "ffmpeg", "fftw", "fortran-compiler", "gcc", "gdal",
    "geos", "gfortran", "git", "glib", "graphviz", "gsl", "gxx", "hdf5", "icu", "imagemagick",
    "julia", "make", "mpich", "nccl", "ncurses", "nodejs", "octave", "openblas", "openjdk",
    "openmpi", "openssl", "pandoc", "pango", "perl", "pkg-config", "poppler", "proj", "qt",
    "readline", "ruby", "sqlite", "tectonic", "texlive-core", "tk", "wget", "xeus-cling", "xz",
    "zlib",
})  # fmt: skip
_CONDA_ONLY_PREFIXES = ("r-", "lib", "_", "xorg-")
_CONDA_ONLY_SUFFIXES = ("_linux-64", "_linux-aarch64", "_osx-64", "_osx-arm64", "_win-64")
# PyPI projects that the "lib" prefix rule would otherwise take for conda libraries.
_PYPI_LIB = frozenset({"libcst", "libpysal", "librosa", "libsass", "libtmux"})

# Pipfile keys that pipenv turns into environment markers.
_MARKER_KEYS = (
    "implementation_name", "implementation_version", "os_name", "platform_machine",
    "platform_python_implementation", "platform_release", "platform_system", "platform_version",
    "python_full_version", "python_version", "sys_platform",
)  # fmt: skip


class SpecError(Explained):
    """A repository's environment cannot be built; ``message`` names the file and the problem."""


def listing(values: Iterable[str]) -> str:
    """Values from a repository for a message: plain when harmless, else quoted; at most 10."""
    items = list(values)
    shown = [v if _SAFE_WORD.fullmatch(v) and len(v) <= 60 else quote_untrusted(v) for v in items]
    more = len(shown) - LIST_MAX
    text = ", ".join(shown[:LIST_MAX])
    return f"{text} and {more} more" if more > 0 else text


@dataclass(frozen=True)
class PythonAsk:
    """A file's request for a Python version, kept as a specifier so any hub version can match."""

    source: str  # the file that asks, e.g. "binder/runtime.txt"
    shown: str  # the request as the user wrote it, for messages
    specifier: SpecifierSet


def minor_ask(source: str, version: str) -> PythonAsk:
    """An ask for ``X`` or ``X.Y`` (longer versions are cut to ``X.Y``, as repo2docker does)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
        raise SpecError(
            f"{source} asks for Python {quote_untrusted(version)}, which is not a version "
            "number such as 3.12."
        )
    minor = ".".join(version.split(".")[:2])
    return PythonAsk(source, f"Python {minor}", SpecifierSet(f"=={minor}.*"))


class RepoTree:
    """A checked-out repository, read without ever leaving it."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)

    def real(self, rel: str) -> str:
        """The real path of ``rel``; refuses a symbolic link that leads outside."""
        path = os.path.realpath(os.path.join(self.root, rel))
        if path != self.root and not path.startswith(self.root + os.sep):
            raise SpecError(
                f"{rel} is a symbolic link to a place outside the repository; "
                "hubstack only reads files inside it."
            )
        return path

    def inside(self, rel: str) -> bool:
        """Whether ``rel`` (relative to the root) stays in the repository, links resolved."""
        norm = posixpath.normpath(rel)
        if norm == ".." or norm.startswith(("../", "/")):
            return False
        try:
            self.real(norm)
        except SpecError:
            return False
        return True

    def is_file(self, rel: str) -> bool:
        return os.path.isfile(self.real(rel))

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(self.real(rel))

    def read(self, rel: str, limit: int = CONFIG_MAX) -> str:
        """A configuration file's text; refuses big, binary or non-UTF-8 files."""
        try:
            with open(self.real(rel), "rb") as file:
                data = file.read(limit + 1)
        except OSError as error:
            raise SpecError(f"{rel} could not be read ({error.strerror}).") from None
        if len(data) > limit:
            raise SpecError(
                f"{rel} is larger than {limit >> 20} MiB; hubstack does not read "
                "configuration files that big."
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise SpecError(f"{rel} is not a UTF-8 text file.")
        return text


def _parse(tree: RepoTree, rel: str, what: str, load: Callable[[str], Any], limit: int) -> Any:
    try:
        return load(tree.read(rel, limit))
    except (ValueError, RecursionError, yaml.YAMLError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(f"{rel} is not valid {what}: {quote_untrusted(detail)}.") from None


def _table(value: object, rel: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{rel}: {key} should be a table of entries.")
    return value


# requirements files ------------------------------------------------------------------------


@dataclass
class Reach:
    """What requirement lines read besides the package index: files, and local paths."""

    files: list[str] = field(default_factory=list)
    local: bool = False


def _logical_lines(text: str) -> Iterator[str]:
    """pip's reading of a requirements file: joined continuations, comments removed."""
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = re.sub(r"(^|\s)#.*", "", pending + raw).strip()
        pending = ""
        if line:
            yield line
    line = re.sub(r"(^|\s)#.*", "", pending).strip()
    if line:
        yield line


def _option(line: str) -> tuple[str, str] | None:
    """``-r x``, ``-rx``, ``--requirement x`` and ``--requirement=x`` as (option, value)."""
    if not line.startswith("-"):
        return None
    if line.startswith("--"):
        match = re.match(r"(--[A-Za-z0-9-]*)(?:=|\s+|$)(.*)", line)
        return (match[1], match[2].strip()) if match else (line, "")
    return line[:2], line[2:].strip()


def _location(value: str) -> str | None:
    """The local path (with any extras) a requirement or option value reads; None for names
    and remote URLs."""
    target = value
    named = _NAMED_URL.fullmatch(value)
    if named:
        target = named[2].strip()
    url = _URL.match(target)
    if url:
        scheme = url[1].lower()
        local = scheme == "file" or scheme.endswith("+file")
        return target[len(scheme) + 1 :] if local else None
    if target.lower().startswith("file:"):
        return target[len("file:") :]
    path = re.split(r"[\s;\[]", target)[0]
    if path.startswith((".", "/", "~", "\\")) or "/" in path or path.endswith(_ARCHIVES):
        return target
    return None


def _inside(tree: RepoTree, base: str, path: str, source: str) -> str:
    """``path`` relative to the folder ``base``, as a repository path; refused when it leaves."""
    clean = re.split(r"[\s;\[]", path)[0]
    absolute = clean.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:", clean)
    rel = posixpath.normpath(posixpath.join(base, clean))
    if absolute or not tree.inside(rel):
        raise SpecError(
            f"{source} refers to {quote_untrusted(path)}, which is outside the repository; "
            "only files inside it can be used."
        )
    return rel


def _is_requirement(line: str) -> bool:
    """A PEP 508 requirement on one line (the builder writes one requirement a line)."""
    try:
        Requirement(line)
    except InvalidRequirement:
        return False
    return line.isprintable()


def _no_variables(line: str, source: str) -> None:
    if "${" in line:
        raise SpecError(
            f"{source} uses an environment variable ({quote_untrusted(line)}); the build does "
            "not expand them, so write the value out."
        )


def scan_requirements_file(tree: RepoTree, rel: str, reach: Reach, cwd: str) -> None:
    """Follow a requirements file's ``-r``/``-c`` files and note its local paths, recursively.

    Paths in ``-r``/``-c`` are relative to the file that names them, other local paths to
    ``cwd`` (the folder the install runs in), as pip and uv read them.
    """
    if rel in reach.files:
        return
    if len(reach.files) >= MAX_REQUIREMENT_FILES:
        raise SpecError(
            f"{rel} is one of more than {MAX_REQUIREMENT_FILES} requirements files that "
            "include each other; hubstack stops there."
        )
    reach.files.append(rel)
    base = posixpath.dirname(rel)
    for line in _logical_lines(tree.read(rel)):
        _no_variables(line, rel)
        option = _option(line)
        if option is not None:
            name, value = option
            if name in _FILE_OPTIONS:
                if not _URL.match(value):
                    scan_requirements_file(tree, _included(tree, base, value, rel), reach, cwd)
                continue
            if name not in _EDITABLE | _LOCATION_OPTIONS:
                continue
            line = value
        path = _location(line)
        if path is not None:
            _inside(tree, cwd, path, rel)
            reach.local = True


def _included(tree: RepoTree, base: str, value: str, source: str) -> str:
    target = _inside(tree, base, value, source)
    if not tree.is_file(target):
        raise SpecError(
            f"{source} refers to {quote_untrusted(value)}, which is not a file in the repository."
        )
    return target


def _local_spec(tree: RepoTree, base: str, text: str, source: str) -> str:
    """A local path (with extras) as one ``uv pip install`` argument relative to the root."""
    spec = _LOCAL_SPEC.fullmatch(text.strip())
    if spec is None:
        raise SpecError(
            f"{source} has the local requirement {quote_untrusted(text)}, which hubstack "
            "does not understand; write it as a path such as ./mypackage or .[extra]."
        )
    rel = _inside(tree, base, spec["path"], source)
    return ("./" if rel == "." else f"./{rel}") + (spec["extras"] or "")


# environment.yml ---------------------------------------------------------------------------


@dataclass
class PlannedInstall:
    """What one of environment.yml, Pipfile or Pipfile.lock asks uv to install."""

    requirements: list[str] = field(default_factory=list)
    requirement_files: list[str] = field(default_factory=list)
    python: PythonAsk | None = None
    reach: Reach = field(default_factory=Reach)


def needs_conda(name: str) -> bool:
    """Whether a conda package has no PyPI equivalent (see :data:`CONDA_ONLY`)."""
    name = name.lower()
    if name in _PYPI_LIB:
        return False
    return (
        name in CONDA_ONLY
        or name.startswith(_CONDA_ONLY_PREFIXES)
        or name.endswith(_CONDA_ONLY_SUFFIXES)
    )


def _conda_constraint(rest: str) -> str:
    """A conda version constraint in PEP 440 terms: ``=1.2`` means ``1.2.*``, ``=1.2=build``
    pins 1.2, ``1.2`` after a space is exact and ``1.2*`` a prefix."""

    def prefix(version: str) -> str:
        return f"=={version.rstrip('*').rstrip('.')}.*"

    rest = rest.strip()
    if not rest:
        return ""
    if rest.startswith("=") and not rest.startswith("=="):
        version, _, build = rest[1:].partition("=")
        return f"=={version.strip()}" if build else prefix(version.strip())
    if rest[0].isdigit():
        version = rest.split()[0]
        return prefix(version) if version.endswith("*") else f"=={version}"
    return re.sub(r"\s+", "", rest)


def _conda_dependency(dep: str, source: str, plan: PlannedInstall, conda: list[str]) -> None:
    """One conda dependency: a PyPI requirement, the Python version, or a conda-only name."""
    text = dep.strip()
    match = re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.-]*)(.*)", text)
    if "::" in text or (match is not None and needs_conda(match[1])):
        conda.append(text)
        return
    if match is None:
        raise _not_understood(source, dep)
    name, constraint = match[1].lower(), _conda_constraint(match[2])
    if name == "pip":
        return
    if name == "python":
        if constraint:
            try:
                plan.python = PythonAsk(source, quote_untrusted(text), SpecifierSet(constraint))
            except InvalidSpecifier:
                raise _not_understood(source, dep) from None
        return
    line = f"{CONDA_TO_PYPI.get(name, name)}{constraint}"
    if not _is_requirement(line):
        raise _not_understood(source, dep)
    plan.requirements.append(line)


def _not_understood(source: str, dep: object) -> SpecError:
    if not isinstance(dep, str):
        return SpecError(
            f"{source} has a dependency given as {json_kind(dep)}, not as a package specification."
        )
    return SpecError(
        f"{source} has the dependency {quote_untrusted(dep)}, which hubstack cannot "
        "translate into a package from PyPI."
    )


def _pip_item(tree: RepoTree, item: object, base: str, source: str, plan: PlannedInstall) -> None:
    """One entry of environment.yml's ``pip:`` list (conda runs pip in the file's folder)."""
    if not isinstance(item, str) or not item.strip().isprintable():
        raise _not_understood(source, item)
    line = item.strip()
    _no_variables(line, source)
    option = _option(line)
    if option is not None:
        name, value = option
        if name in ("-r", "--requirement"):
            target = _included(tree, base, value, source)
            plan.requirement_files.append(target)
            scan_requirements_file(tree, target, plan.reach, posixpath.dirname(target))
            return
        if name not in _EDITABLE:
            raise SpecError(
                f"{source} uses {quote_untrusted(name)} in its pip: section, which hubstack "
                "does not pass on there; put those pip lines in a requirements file next to "
                "it and list that file in the pip: section as -r <file>."
            )
        line = value
    path = _location(line)
    if path is not None:
        plan.requirements.append(_local_spec(tree, base, path, source))
        plan.reach.local = True
        return
    if not _is_requirement(line) and not _URL.match(line):
        raise _not_understood(source, line)
    plan.requirements.append(line)


@dataclass
class EnvironmentFile:
    """An environment.yml as written: its channels and conda dependencies (checked by their
    reader), and its pip: section as a plan."""

    channels: list[str]
    dependencies: list[str]
    pip: PlannedInstall


def read_environment_file(tree: RepoTree, rel: str) -> EnvironmentFile:
    """environment.yml's parts; its shape is checked here, the conda dependencies by the
    build that uses them (PyPI names or conda packages)."""
    data = _parse(tree, rel, "YAML", yaml.safe_load, CONFIG_MAX)
    if data is not None and not isinstance(data, dict):
        raise SpecError(f"{rel} should be a mapping with a dependencies: list.")
    deps = (data or {}).get("dependencies") or []
    if not isinstance(deps, list):
        raise SpecError(f"{rel}: dependencies should be a list.")
    channels = (data or {}).get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise SpecError(f"{rel}: channels should be a list of channel names.")
    found = EnvironmentFile(channels, [], PlannedInstall())
    base = posixpath.dirname(rel)
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            items = dep["pip"] or []
            if not isinstance(items, list):
                raise SpecError(f"{rel}: the pip: section should be a list.")
            for item in items:
                _pip_item(tree, item, base, rel, found.pip)
        elif isinstance(dep, str):
            found.dependencies.append(dep)
        else:
            raise _not_understood(rel, dep)
    return found


def read_environment_yml(tree: RepoTree, rel: str) -> PlannedInstall:
    """environment.yml's PyPI-installable dependencies and pip: section; conda-only ones are
    refused by name, since installing the rest would be a different environment."""
    found = read_environment_file(tree, rel)
    plan = PlannedInstall(requirement_files=found.pip.requirement_files, reach=found.pip.reach)
    conda: list[str] = []
    for dep in found.dependencies:
        _conda_dependency(dep, rel, plan, conda)
    plan.requirements += found.pip.requirements
    if conda:
        raise SpecError(
            f"{rel} asks for packages that need conda, which hubstack does not use (it builds "
            f"with uv from PyPI): {listing(conda)}. Remove them, or list their PyPI "
            "equivalents in the pip: section."
        )
    return plan


# Pipfile and Pipfile.lock ------------------------------------------------------------------


def _pipenv_line(tree: RepoTree, source: str, name: object, value: object, reach: Reach) -> str:
    """One Pipfile or Pipfile.lock entry as a ``uv pip install`` argument."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            f"{source} has the package name {quote_untrusted(str(name))}, which is not valid."
        )
    shown = quote_untrusted(name)
    entry = {"version": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not all(
        isinstance(item, str | bool | list) for item in entry.values()
    ):
        raise SpecError(f"{source}: the entry for {shown} is not understood.")
    extras = entry.get("extras", [])
    if not isinstance(extras, list) or not all(isinstance(extra, str) for extra in extras):
        raise SpecError(f"{source}: the extras of {shown} should be a list of names.")
    extra_text = f"[{','.join(extras)}]" if extras else ""
    markers = [f"({entry['markers']})"] if isinstance(entry.get("markers"), str) else []
    markers += [f"{key} {entry[key]}" for key in _MARKER_KEYS if isinstance(entry.get(key), str)]
    local = entry["path"] if isinstance(entry.get("path"), str) else None
    if local is None and isinstance(entry.get("file"), str):
        local = _location(entry["file"])
    if local is not None:
        if markers:
            raise SpecError(
                f"{source}: {shown} is a local path with markers, which hubstack does not support."
            )
        reach.local = True
        return _local_spec(tree, posixpath.dirname(source), f"{local}{extra_text}", source)
    if isinstance(entry.get("git"), str):
        line = f"{name}{extra_text} @ {_git_url(entry, source, shown)}"
    elif isinstance(entry.get("file"), str):
        line = f"{name}{extra_text} @ {entry['file']}"
    else:
        version = entry.get("version", "*")
        if not isinstance(version, str):
            raise SpecError(f"{source}: the version of {shown} should be a string.")
        version = "" if version.strip() == "*" else version.strip()
        if version[:1].isdigit():  # pipenv reads a bare version as an exact pin
            version = f"=={version}"
        line = f"{name}{extra_text}{version}"
    if markers:
        line += " ; " + " and ".join(markers)
    if not _is_requirement(line):
        raise SpecError(f"{source}: the entry for {shown} is not understood.")
    return line


def _git_url(entry: dict[str, Any], source: str, shown: str) -> str:
    url = entry["git"]
    if not _URL.match(url) or _location(url) is not None:
        raise SpecError(
            f"{source}: {shown} names the git repository {quote_untrusted(url)}; only remote "
            "URLs such as https://... can be used."
        )
    url = url if url.startswith("git+") else f"git+{url}"
    if isinstance(entry.get("ref"), str):
        url += f"@{entry['ref']}"
    if isinstance(entry.get("subdirectory"), str):
        url += f"#subdirectory={entry['subdirectory']}"
    return url


def _pipenv_python(requires: object, source: str, key: str) -> PythonAsk | None:
    table = _table(requires, source, key)
    for version_key in ("python_version", "python_full_version"):
        version = table.get(version_key)
        if isinstance(version, str) and version.strip():
            return minor_ask(source, version.strip())
    return None


def read_pipfile(tree: RepoTree, rel: str) -> PlannedInstall:
    """[packages] and [dev-packages] (pipenv installs both for Binder), [requires] python."""
    data = _parse(tree, rel, "TOML", tomllib.loads, CONFIG_MAX)
    plan = PlannedInstall(python=_pipenv_python(data.get("requires"), rel, "[requires]"))
    for section in ("packages", "dev-packages"):
        for name, value in _table(data.get(section), rel, f"[{section}]").items():
            plan.requirements.append(_pipenv_line(tree, rel, name, value, plan.reach))
    return plan


def read_pipfile_lock(tree: RepoTree, rel: str) -> PlannedInstall:
    """The pins of "default" and "develop"; the Python version from _meta.requires."""
    data = _parse(tree, rel, "JSON", json.loads, LOCK_MAX)
    if not isinstance(data, dict):
        raise SpecError(f"{rel} should be a JSON object.")
    meta = _table(data.get("_meta"), rel, "_meta")
    plan = PlannedInstall(python=_pipenv_python(meta.get("requires"), rel, "_meta.requires"))
    for section in ("default", "develop"):
        for name, value in _table(data.get(section), rel, section).items():
            plan.requirements.append(_pipenv_line(tree, rel, name, value, plan.reach))
    return plan


# runtime.txt, pyproject.toml, apt.txt ------------------------------------------------------


def read_runtime(tree: RepoTree, rel: str) -> PythonAsk:
    """``python-X.Y``, ``python-X`` (the newest 3.x) or with a snapshot date, which is ignored."""
    text = tree.read(rel).strip()
    match = re.fullmatch(r"python-([0-9]+(?:\.[0-9]+){0,2})(?:-[0-9]{4}-[0-9]{2}-[0-9]{2})?", text)
    if match is None:
        raise SpecError(
            f"{rel} should name a Python version such as python-3.12; "
            f"it says {quote_untrusted(text)}."
        )
    return minor_ask(rel, match[1])


@dataclass(frozen=True)
class Pyproject:
    installable: bool  # [project] and [build-system]: repo2docker runs `pip install .`
    requires_python: PythonAsk | None


def read_pyproject(tree: RepoTree, rel: str) -> Pyproject:
    data = _parse(tree, rel, "TOML", tomllib.loads, CONFIG_MAX)
    project = data.get("project")
    installable = isinstance(project, dict) and isinstance(data.get("build-system"), dict)
    requires = project.get("requires-python") if isinstance(project, dict) else None
    if requires is None:
        return Pyproject(installable, None)
    if not isinstance(requires, str):
        raise SpecError(f"{rel}: requires-python should be a string such as '>=3.11'.")
    try:
        specifier = SpecifierSet(requires)
    except InvalidSpecifier:
        raise SpecError(
            f"{rel} has requires-python = {quote_untrusted(requires)}, which is not a "
            "version specifier such as '>=3.11'."
        ) from None
    ask = PythonAsk(rel, f"requires-python {quote_untrusted(requires)}", specifier)
    return Pyproject(installable, ask)


def is_python_project(tree: RepoTree, rel: str) -> bool:
    """Whether a pyproject.toml describes a project (leniently: only used for a notice)."""
    try:
        return isinstance(_parse(tree, rel, "TOML", tomllib.loads, CONFIG_MAX).get("project"), dict)
    except SpecError:
        return False


# Debian Policy 5.6.1: lower case letters, digits, +, - and ., at least two, starting with a
# letter or digit. Nothing else reaches apt: no versions, architectures, paths or options.
_DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}")


def read_apt(tree: RepoTree, rel: str) -> list[str]:
    """The package names of an apt.txt (one a line, # comments); refuses anything that is
    not a Debian package name."""
    lines = (line.split("#", 1)[0].strip() for line in tree.read(rel).splitlines())
    names = list(dict.fromkeys(line for line in lines if line))
    bad = [name for name in names if not _DEBIAN_NAME.fullmatch(name)]
    if bad:
        raise SpecError(
            f"{rel} should list Debian package names (lower case letters, digits, '+', '-' "
            f"and '.'), one a line; these are not: {listing(bad)}."
        )
    return names
