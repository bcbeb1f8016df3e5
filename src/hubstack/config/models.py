"""The schema of ``hubstack.yaml``: every key an operator can set, with its default.

These names are the operator's interface; later features extend them, never rename them.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from hubstack.config.alerts import AlertSettings
from hubstack.config.auth import AuthSettings
from hubstack.config.base import HTTP_URL, AbsolutePath, Strict, problem
from hubstack.config.cluster import ClusterSettings
from hubstack.config.groups import GroupName, GroupSettings, SharedFolder
from hubstack.config.interfaces import InterfaceId
from hubstack.config.script import check_script
from hubstack.config.usage import UsageSettings
from hubstack.units import Duration, Size, format_size

SLUG = r"^[a-z][a-z0-9-]{0,29}$"
BIND = r"^[^:\s]*:\d{1,5}$"
BASE_URL = r"^/([A-Za-z0-9._~-]+/)*$"
URL_PATH = r"^/[A-Za-z0-9/_.-]*$"
ORIGIN = r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$"
# Values that end up on an ``#SBATCH`` line: no whitespace, quotes, ``#``, ``$`` or line
# breaks, so none can end the line, start another option or reach the shell.
SAFE_TOKEN = r"^[A-Za-z0-9._:,=@+/%-]+$"
SBATCH_OPTION = r"^--[a-z][a-z-]*$"
DEFAULT_PREFIX = Path("/opt/hubstack")
# The spawn form's environment choice meaning "built from the repository given with it".
REPOSITORY_ENVIRONMENT = "repository"

# The user_options keys of the spawn form besides the extras; an extra may not reuse one.
BUILTIN_FIELDS = frozenset(
    {"machine", "environment", "partition", "account", "qos", "reservation"}
    | {"walltime", "cores", "memory", "gpus"}
)
# sbatch options hubstack sets itself, or that would change what a hubstack job is (one
# task of one user, its output in the one log the hub reads); extras may not set them,
# nor abbreviate them (sbatch takes any unambiguous prefix of a long option).
RESERVED_SBATCH = frozenset(
    {"--job-name", "--output", "--error", "--input", "--open-mode", "--chdir"}
    | {"--export", "--export-file", "--get-user-env", "--uid", "--gid", "--wrap"}
    | {"--partition", "--account", "--qos", "--reservation", "--time", "--time-min"}
    | {"--cpus-per-task", "--mem", "--mem-per-cpu", "--mem-per-gpu", "--gres", "--gpus"}
    | {"--gpus-per-node", "--gpus-per-task", "--cpus-per-gpu", "--ntasks", "--nodes"}
    | {"--ntasks-per-node", "--array", "--wait", "--parsable", "--hold", "--test-only"}
)


def default_data_dir() -> Path:
    """Root keeps state in /var/lib; an unprivileged (dev mode) hub keeps it in the home."""
    if os.geteuid() == 0:
        return Path("/var/lib/hubstack")
    return Path.home() / ".local/share/hubstack"


def _split_command(value: object) -> object:
    """A command line written as one string is split the way a shell would split it."""
    if not isinstance(value, str):
        return value
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"not a command line: {exc}") from None
    if not args:
        raise ValueError("the command is empty")
    return args


def _port_range(value: str) -> str:
    match = re.fullmatch(r"([0-9]{4,5})-([0-9]{4,5})", value)
    if match and 1024 <= int(match[1]) <= int(match[2]) <= 65535:
        return value
    raise ValueError("not a port range; use LOW-HIGH within 1024-65535, e.g. 20000-29999")


Command = Annotated[
    list[str], BeforeValidator(_split_command), PlainSerializer(shlex.join, return_type=str)
]
PortRange = Annotated[str, AfterValidator(_port_range)]
SafeToken = Annotated[str, Field(pattern=SAFE_TOKEN)]


class HubSettings(Strict):
    bind: str = Field("127.0.0.1:8000", pattern=BIND)
    data_dir: Path = Field(default_factory=default_data_dir)
    admin_users: list[str] = Field(default_factory=lambda: ["admin"])
    base_url: str = Field("/", pattern=BASE_URL)
    # How CPU and memory limits are enforced on the hub's machine: local servers and every
    # build (builds run here whatever the backend).
    limits: Literal["auto", "systemd", "cgroup-v2", "cgroup-v1", "off"] = "auto"

    @property
    def ip(self) -> str:
        return self.bind.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @field_validator("bind")
    @classmethod
    def _port_range(cls, value: str) -> str:
        port = int(value.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
        return value

    @field_validator("admin_users")
    @classmethod
    def _admin_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or name != name.strip() or "/" in name:
                raise ValueError(f"{name!r} is not a valid user name")
        return value


class AccountsSettings(Strict):
    """The Unix accounts hub users run as, on this machine and on a Slurm cluster alike."""

    prefix: str = Field("hs-", pattern=r"^[a-z][a-z0-9-]{0,9}$")


class LocalSettings(Strict):
    home_base: Path = Path("/home")
    max_processes: int = Field(1024, ge=16, description="per server: a guard against fork bombs")
    concurrent_starts: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="servers starting at once; more wait in line (null: the CPU count)",
    )
    start_timeout: Duration = Field(
        "1m", description="how long a start may take once its turn has come"
    )  # type: ignore[assignment]
    queue_timeout: Duration = Field(
        "10m", description="how long a start may wait in line for its turn"
    )  # type: ignore[assignment]
    fork_server: bool = Field(
        True,
        description="fork servers of root-owned environments, and of repository "
        "environments on a shared server layer, from a process that has imported Jupyter "
        "once, instead of starting each from scratch (never for environments users can "
        "write, repositories with a start script or apt.txt, or on systemd hosts)",
    )
    fork_kernels: bool = Field(
        True,
        description="in forked servers, fork Python kernels from a kernel parent that has "
        "imported ipykernel once (environments with hubstack-kernels installed)",
    )


class Choice(Strict):
    """A value the user picks from ``choices``; no choices means the field is not offered."""

    choices: list[SafeToken] = Field(default_factory=list)
    default: SafeToken | None = Field(None, description="null: the first choice")
    groups: dict[SafeToken, list[GroupName]] = Field(
        default_factory=dict, description="choice -> who may pick it; unlisted: everyone"
    )

    @model_validator(mode="after")
    def _default_is_a_choice(self) -> Self:
        allowed = ", ".join(self.choices) or "(none)"
        if self.default is not None and self.default not in self.choices:
            raise problem(("default",), f"must be one of the choices: {allowed}", self.default)
        for choice in self.groups:
            if choice not in self.choices:
                raise problem(("groups", choice), f"is not one of the choices: {allowed}", choice)
        return self

    @property
    def initial(self) -> str | None:
        """What a user who does not choose gets: the default, else the first choice."""
        if self.default is not None:
            return self.default
        return self.choices[0] if self.choices else None


class Extra(Choice):
    """A site's own sbatch option offered on the form, e.g. a node feature."""

    choices: list[SafeToken] = Field(min_length=1)
    id: str = Field(pattern=SLUG)
    display: str
    sbatch: str = Field(pattern=SBATCH_OPTION)

    @field_validator("id")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_FIELDS:
            raise ValueError(f"{value!r} is a field hubstack has itself; choose another id")
        return value

    @field_validator("sbatch")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        clash = sorted(option for option in RESERVED_SBATCH if option.startswith(value))
        if clash:
            raise ValueError(f"{value} is or abbreviates {clash[0]}, which hubstack sets itself")
        return value


class Range(Strict):
    """A number the user sets between ``min`` and ``max``; a null default (where allowed)
    means the machine type's value."""

    default: int | None = None
    min: int
    max: int

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        shown = self.model_dump(mode="json")
        if self.min > self.max:
            raise problem(("min",), f"must not be more than max {shown['max']}", shown["min"])
        if self.default is not None and not self.min <= self.default <= self.max:
            raise problem(
                ("default",),
                f"must be between min {shown['min']} and max {shown['max']}",
                shown["default"],
            )
        return self


class CoresRange(Range):
    default: int | None = Field(None, ge=1)
    min: int = Field(1, ge=1)
    max: int = Field(8, ge=1)


class MemoryRange(Range):
    default: Size | None = None
    min: Size = "256M"  # type: ignore[assignment]
    max: Size = "64G"  # type: ignore[assignment]


class GpusRange(Range):
    default: int = Field(0, ge=0)
    min: int = Field(0, ge=0)
    max: int = Field(ge=0)


class WalltimeRange(Range):
    default: Duration = "1h"  # type: ignore[assignment]
    min: Duration = "1m"  # type: ignore[assignment]
    max: Duration = "8h"  # type: ignore[assignment]


class SlurmFields(Strict):
    """What the spawn form offers; a choice without choices or a null range is not offered."""

    partition: Choice = Field(default_factory=Choice)
    account: Choice = Field(default_factory=Choice)
    qos: Choice = Field(default_factory=Choice)
    reservation: Choice = Field(default_factory=Choice)
    walltime: WalltimeRange = Field(default_factory=WalltimeRange)
    cores: CoresRange | None = Field(default_factory=CoresRange)
    memory: MemoryRange | None = Field(default_factory=MemoryRange)
    gpus: GpusRange | None = None
    extras: list[Extra] = Field(default_factory=list)

    @field_validator("extras")
    @classmethod
    def _unique(cls, extras: list[Extra]) -> list[Extra]:
        for index, extra in enumerate(extras):
            if any(other.id == extra.id for other in extras[:index]):
                raise problem((index, "id"), "is used twice; ids must be unique", extra.id)
            if any(other.sbatch == extra.sbatch for other in extras[:index]):
                raise problem((index, "sbatch"), "is set by another extra already", extra.sbatch)
        return extras


class PartitionLimits(Strict):
    """Maxima of one partition, checked before a job is submitted; null: no own limit."""

    max_walltime: Duration | None = None
    max_cores: int | None = Field(None, ge=1)
    max_memory: Size | None = None
    max_gpus: int | None = Field(None, ge=0)


class SlurmShared(Strict):
    """Storage every node sees at the same path."""

    home_base: AbsolutePath = Path("/home")
    volumes: AbsolutePath | None = Field(
        None, description="per-server volumes at <volumes>/<account>/<server>; null: none"
    )
    groups: AbsolutePath | None = Field(
        None, description="groups' shared folders at <groups>/<group>; needed for them on Slurm"
    )


class SlurmSettings(Strict):
    """Servers run as batch jobs of their user, on the nodes of a Slurm cluster."""

    submit_as: Literal["runuser", "sudo", "su"] = "runuser"
    bin_dir: AbsolutePath = Path("/usr/bin")
    script: str | None = Field(None, description="a job script template; null: the built-in one")
    prologue: str = ""
    port_range: PortRange = Field("20000-29999", description="LOW-HIGH: ports a server may use")
    hub_url: str | None = Field(None, pattern=HTTP_URL)
    poll_interval: Duration = "10s"  # type: ignore[assignment]
    pending_poll_interval: Duration = "2s"  # type: ignore[assignment]
    unknown_grace: Duration = "5m"  # type: ignore[assignment]
    start_timeout: Duration = "1h"  # type: ignore[assignment]
    shared: SlurmShared = Field(default_factory=SlurmShared)
    containers: dict[str, Command] = Field(default_factory=dict)
    fields: SlurmFields = Field(default_factory=SlurmFields)
    partitions: dict[str, PartitionLimits] = Field(default_factory=dict)

    @field_validator("script")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else check_script(value)

    @model_validator(mode="after")
    def _partitions_are_offered(self) -> Self:
        choices = self.fields.partition.choices
        for name in self.partitions:
            if not choices:
                raise problem(
                    ("partitions", name),
                    "per-partition limits need the partitions listed in fields.partition.choices",
                    name,
                )
            if name not in choices:
                raise problem(
                    ("partitions", name),
                    f"is not among fields.partition.choices: {', '.join(choices)}",
                    name,
                )
        return self


class BackendSettings(Strict):
    type: Literal["local", "slurm"] = "local"
    local: LocalSettings = Field(default_factory=LocalSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


class Machine(Strict):
    id: str = Field(pattern=SLUG)
    display: str
    cpu: float = Field(gt=0, le=1024)
    memory: Size
    description: str = ""
    groups: list[GroupName] = Field(
        default_factory=list, description="who may pick it; empty: everyone"
    )


# The files an environment's ``spec`` may hold: a repository's, as builds read them.
SPEC_FILES = ("requirements.txt", "environment.yml", "apt.txt", "postBuild", "runtime.txt")
# Short names the spec also takes for them.
SPEC_ALIASES = {"requirements": "requirements.txt"}


class DeclaredRepository(Strict):
    """An environment built from a git repository at a ref, as a Binder launch would be."""

    url: str = Field(pattern=r"^(https?|git)://[^\s]+$")
    ref: str = Field("HEAD", pattern=r"^[A-Za-z0-9._/@^~-]{1,200}$")


def _spec_files(value: dict[str, str]) -> dict[str, str]:
    """File names as builds read them; the short ones spelt out."""
    files: dict[str, str] = {}
    for name, text in value.items():
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(
                f"{name!r} is a path; a spec holds only files of the environment's own "
                f"folder: {', '.join(SPEC_FILES)}"
            )
        full = SPEC_ALIASES.get(name, name)
        if full not in SPEC_FILES:
            raise ValueError(f"{name!r} is not a file a spec may hold; use {', '.join(SPEC_FILES)}")
        if full in files:
            raise ValueError(f"{full!r} is given twice")
        files[full] = text if text.endswith("\n") or not text else f"{text}\n"
    if not files:
        raise ValueError(f"a spec needs at least one file: {', '.join(SPEC_FILES)}")
    return files


SpecFiles = Annotated[dict[str, str], AfterValidator(_spec_files)]


class Environment(Strict):
    id: str = Field(pattern=SLUG)
    display: str
    description: str = ""
    prefix: AbsolutePath | None = Field(
        None,
        description="a Python environment whose bin/ has jupyterhub-singleuser, built by "
        "hand; or declare one with repository or spec",
    )
    repository: DeclaredRepository | None = Field(
        None, description="build the environment from this git repository at hub start"
    )
    spec: SpecFiles | None = Field(
        None,
        description="build the environment from these files at hub start: " + ", ".join(SPEC_FILES),
    )
    default_url: str = Field(
        "/lab", pattern=URL_PATH, description="where the interface lab opens, e.g. /lab/tree/x"
    )
    interfaces: list[InterfaceId] = Field(
        default_factory=lambda: ["lab"],
        min_length=1,
        description="what its servers may open in (the spawn form's choices); the first is "
        "the default",
    )
    groups: list[GroupName] = Field(
        default_factory=list, description="who may pick it; empty: everyone"
    )
    language_server_search: bool = Field(
        True,
        description="jupyter-lsp searches for language servers at every server start (it runs "
        "npm and Rscript where they exist: about 0.3 CPU-s); false: only the language "
        "servers the environment's own Jupyter config lists",
    )

    @field_validator("interfaces")
    @classmethod
    def _interfaces_once(cls, value: list[str]) -> list[str]:
        for interface in value:
            if value.count(interface) > 1:
                raise ValueError(f"{interface!r} is listed twice; list each interface once")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [name for name in ("prefix", "repository", "spec") if getattr(self, name)]
        if len(given) != 1:
            raise problem(
                (given[-1] if given else "prefix",),
                "an environment needs exactly one of prefix (built by hand), repository or "
                f"spec (built by the hub); {' and '.join(given) if given else 'none'} given",
                None,
            )
        return self

    @property
    def declared(self) -> bool:
        """Whether the hub builds this environment (from a repository or a spec)."""
        return self.prefix is None


def default_binder_root() -> Path:
    """World-readable, so every user account (and, on Slurm, every node) can run the envs."""
    if os.geteuid() == 0:
        return DEFAULT_PREFIX / "binder"
    return default_data_dir() / "binder"


def _host_pattern(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9*?.\[\]-]+(:[0-9*?]+)?", value):
        raise ValueError(
            f"{value!r} is not a host pattern; use a lowercase host name or address, "
            "optionally with :port, where * matches any part "
            "(e.g. *.example.org, gitlab.example.org:8443)"
        )
    return value


HostPattern = Annotated[str, AfterValidator(_host_pattern)]


class BuildLimits(Strict):
    """What one environment build may use; a build over a limit is stopped and removed."""

    time: Duration = "15m"  # type: ignore[assignment]
    cpu: float = Field(2, gt=0, le=1024)
    memory: Size = "4G"  # type: ignore[assignment]
    size: Size = Field("5G", description="the environment and the repository's files")  # type: ignore[assignment]
    processes: int = Field(512, ge=16)
    repository_size: Size = "1G"  # type: ignore[assignment]
    queued_per_user: int = Field(2, ge=1, description="builds one account may have waiting")
    queued: int = Field(20, ge=1, description="builds the hub lets wait at once")


CONDA_CHANNEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class CondaSettings(Strict):
    """environment.yml builds: conda packages, solved and installed without conda."""

    enabled: bool = Field(
        True,
        description="build environment.yml with conda packages; false: install its "
        "dependencies from PyPI and refuse those only conda has",
    )
    channels: list[Annotated[str, Field(pattern=CONDA_CHANNEL)]] = Field(
        default_factory=lambda: ["conda-forge"],
        description="the channels an environment.yml may name; with none named it gets the first",
        min_length=1,
    )
    mirror: str | None = Field(
        None,
        pattern=HTTP_URL,
        description="a site's proxy of the channels, read as <mirror>/<channel>; "
        "null: https://conda.anaconda.org/<channel>",
    )


class PackageCacheSettings(Strict):
    """The wheels the hub keeps from finished builds, which later builds read (not write)."""

    enabled: bool = Field(
        True, description="keep verified wheels of finished builds for later builds"
    )
    size: Size = Field(
        "10G", description="the most the package cache holds; the least recently used go first"
    )  # type: ignore[assignment]


class RSettings(Strict):
    """R environments (runtime.txt r-..., install.R, DESCRIPTION), from conda packages."""

    repos: str | None = Field(
        None,
        pattern=HTTP_URL,
        description="the CRAN-like repository install.R, DESCRIPTION and users install R "
        "packages from; null: Posit Package Manager's CRAN snapshot of runtime.txt's date, "
        "else https://cloud.r-project.org",
    )


class BinderSettings(Strict):
    """Environments built from a git repository (Binder-style launches)."""

    enabled: bool = True
    root: AbsolutePath = Field(
        default_factory=default_binder_root,
        description="built environments and repository mirrors; on Slurm a path every node sees",
    )
    allowed_hosts: list[HostPattern] = Field(
        default_factory=lambda: ["github.com", "gitlab.com", "bitbucket.org", "codeberg.org"]
    )
    allowed_schemes: list[Literal["https", "http", "git"]] = Field(
        default_factory=lambda: ["https"], min_length=1
    )
    build_account: str = Field("hubstack-build", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    limits: BuildLimits = Field(default_factory=BuildLimits)
    conda: CondaSettings = Field(default_factory=CondaSettings)
    r: RSettings = Field(default_factory=RSettings)
    package_cache: PackageCacheSettings = Field(default_factory=PackageCacheSettings)
    python_sources: list[Literal["conda", "uv"]] = Field(
        default_factory=lambda: ["conda"],
        description="where builds get a Python version that binder.pythons lacks, in order: "
        "the first conda channel's python package, or a download by uv; empty: none",
    )
    pythons: dict[str, AbsolutePath] = Field(
        default_factory=dict,
        description="Python versions builds may use, e.g. {'3.12': /usr/bin/python3.12}; "
        "empty: the python3.X found in /usr/local/bin and /usr/bin",
    )
    token_lifetime: Duration = Field(
        "1d", description="how long the token handed to a Binder API client works"
    )  # type: ignore[assignment]
    ref_cache: Duration = Field(
        "1m",
        le=3600,
        description="how long a branch or tag, once resolved to a commit, is launched at that "
        "commit without asking its repository again (at most 1h)",
    )  # type: ignore[assignment]
    cors_origins: list[Annotated[str, Field(pattern=ORIGIN)]] = Field(
        default_factory=list,
        description="web sites whose pages may launch and use servers (Binder clients such "
        "as thebe), e.g. https://docs.example.org",
    )

    @field_validator("pythons")
    @classmethod
    def _versions(cls, value: dict[str, Path]) -> dict[str, Path]:
        for version in value:
            if not re.fullmatch(r"3\.[0-9]{1,2}", version):
                raise ValueError(f"{version!r} is not a Python version like 3.12")
        return value


class NamedServers(Strict):
    max: int = Field(5, ge=0, le=100)
    name_max_length: int = Field(20, ge=1, le=30)


class Storage(Strict):
    server_volume: Size = "2G"  # type: ignore[assignment]
    home: Size = "10G"  # type: ignore[assignment]
    group_token_lifetime: Duration = Field(
        "12h",
        description="how long the token a member's server gets for a group's storage "
        "connection is valid (a SAS or STS credentials, never the group's key)",
    )  # type: ignore[assignment]

    @field_validator("group_token_lifetime")
    @classmethod
    def _sts_allows(cls, seconds: int) -> int:
        if not 15 * 60 <= seconds <= 36 * 3600:
            raise ValueError("must be 15m to 36h (what STS gives)")
        return seconds


class SharedFolders(Strict):
    """Where groups' shared folders live on the hub, and the one every user reads."""

    path: AbsolutePath | None = Field(
        None, description="where the folders are mounted; null: <data_dir>/shared"
    )
    everyone: SharedFolder | None = Field(
        None, description="shared/everyone, read by all and written by admins; null: none"
    )


class PolicySettings(Strict):
    named_servers: NamedServers = Field(default_factory=NamedServers)
    idle_timeout: Duration = "2h"  # type: ignore[assignment]
    storage: Storage = Field(default_factory=Storage)
    shared: SharedFolders = Field(default_factory=SharedFolders)


def default_machines() -> list[Machine]:
    return [
        Machine(id="small", display="Small", cpu=1, memory="2G", description="For notebooks"),
        Machine(id="medium", display="Medium", cpu=2, memory="4G", description="For analysis"),
    ]


def default_environments() -> list[Environment]:
    return [
        Environment(
            id="python",
            display="Python 3",
            description="JupyterLab with numpy, pandas and matplotlib",
            prefix=DEFAULT_PREFIX / "envs/default",
            # It has no language server, and its users cannot add one to it (root's, with no
            # user site-packages): jupyter-lsp's search would cost every start 0.3 CPU-s.
            language_server_search=False,
        )
    ]


class Config(Strict):
    hub: HubSettings = Field(default_factory=HubSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    accounts: AccountsSettings = Field(default_factory=AccountsSettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    machines: list[Machine] = Field(default_factory=default_machines, min_length=1)
    environments: list[Environment] = Field(default_factory=default_environments, min_length=1)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    binder: BinderSettings = Field(default_factory=BinderSettings)
    groups: dict[GroupName, GroupSettings] = Field(default_factory=dict)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    extra_jupyterhub_config: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("machines", "environments")
    @classmethod
    def _unique_ids(cls, items: list[Machine] | list[Environment]) -> list[Any]:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"id {item.id!r} is used twice; ids must be unique")
            seen.add(item.id)
        return items

    @field_validator("extra_jupyterhub_config")
    @classmethod
    def _class_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if not name.isidentifier() or not name[0].isupper():
                raise ValueError(
                    f"{name!r} is not a configurable class name (e.g. JupyterHub, Spawner)"
                )
        return value

    @field_validator("environments")
    @classmethod
    def _not_reserved(cls, items: list[Environment]) -> list[Environment]:
        for item in items:
            if item.id == REPOSITORY_ENVIRONMENT:
                raise ValueError(
                    f"environment id {item.id!r} is reserved for environments built from a "
                    "repository; choose another id"
                )
        return items

    @model_validator(mode="after")
    def _shared_folders_have_a_place(self) -> Self:
        """shared/everyone is the hub-wide folder's; Slurm nodes need a path they all see."""
        shared = [name for name, group in self.groups.items() if group.shared is not None]
        if "everyone" in shared:
            raise problem(
                ("groups", "everyone", "shared"),
                "shared/everyone is the hub-wide folder (policy.shared.everyone); "
                "name the group otherwise",
                "everyone",
            )
        everyone = self.policy.shared.everyone is not None
        slurm = self.backend.slurm
        if self.backend.type == "slurm" and (shared or everyone) and slurm.shared.groups is None:
            raise problem(
                ("backend", "slurm", "shared", "groups"),
                "must be a path every node sees, for the shared folders of "
                + ", ".join(shared + ["everyone"] * everyone),
                None,
            )
        return self

    @model_validator(mode="after")
    def _containers_are_environments(self) -> Self:
        ids = [e.id for e in self.environments]
        for env_id in self.backend.slurm.containers:
            if env_id not in ids:
                raise problem(
                    ("backend", "slurm", "containers", env_id),
                    f"is not an environment id; environments: {', '.join(ids)}",
                    env_id,
                )
        return self

    @model_validator(mode="after")
    def _machines_fit_the_slurm_ranges(self) -> Self:
        """A range without a default takes the machine type's value, which must fit it."""
        if self.backend.type != "slurm":
            return self
        fields = self.backend.slurm.fields
        for name, limits, needs, shown in (
            ("cores", fields.cores, lambda m: math.ceil(m.cpu), int),
            ("memory", fields.memory, lambda m: m.memory, format_size),
        ):
            if limits is None or limits.default is not None:
                continue
            for machine in self.machines:
                if not limits.min <= needs(machine) <= limits.max:
                    raise problem(
                        ("backend", "slurm", "fields", name),
                        f"machine type {machine.id!r} needs a value outside min {shown(limits.min)}"
                        f" to max {shown(limits.max)}; set a default or widen the range",
                        shown(needs(machine)),
                    )
        return self

    @model_validator(mode="after")
    def _prices_are_for_machines(self) -> Self:
        ids = [m.id for m in self.machines]
        for machine_id in self.usage.prices.machines:
            if machine_id not in ids:
                raise problem(
                    ("usage", "prices", "machines", machine_id),
                    f"is not a machine type id; machine types: {', '.join(ids)}",
                    machine_id,
                )
        return self

    def machine(self, machine_id: str) -> Machine | None:
        return next((m for m in self.machines if m.id == machine_id), None)

    def environment(self, env_id: str) -> Environment | None:
        return next((e for e in self.environments if e.id == env_id), None)
