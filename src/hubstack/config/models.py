"""The schema of ``hubstack.yaml``: every key an operator can set, with its default.

These names are the operator's interface; later features extend them, never rename them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hubstack.config.units import Duration, Size

SLUG = r"^[a-z][a-z0-9-]{0,29}$"
BIND = r"^[^:\s]*:\d{1,5}$"
BASE_URL = r"^/([A-Za-z0-9._~-]+/)*$"
URL_PATH = r"^/[A-Za-z0-9/_.-]*$"
DEFAULT_PREFIX = Path("/opt/hubstack")


def default_data_dir() -> Path:
    """Root keeps state in /var/lib; an unprivileged (dev mode) hub keeps it in the home."""
    if os.geteuid() == 0:
        return Path("/var/lib/hubstack")
    return Path.home() / ".local/share/hubstack"


class Strict(BaseModel):
    """Unknown keys are errors: a typo in the config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Hub(Strict):
    bind: str = Field("127.0.0.1:8000", pattern=BIND)
    data_dir: Path = Field(default_factory=default_data_dir)
    admin_users: list[str] = Field(default_factory=lambda: ["admin"])
    base_url: str = Field("/", pattern=BASE_URL)

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


class Auth(Strict):
    type: Literal["native", "pam"] = "native"
    open_signup: bool = False


class LocalBackend(Strict):
    user_prefix: str = Field("hs-", pattern=r"^[a-z][a-z0-9-]{0,9}$")
    home_base: Path = Path("/home")
    limits: Literal["auto", "systemd", "cgroup-v2", "cgroup-v1", "off"] = "auto"
    max_processes: int = Field(1024, ge=16, description="per server: a guard against fork bombs")


class Backend(Strict):
    type: Literal["local"] = "local"
    local: LocalBackend = Field(default_factory=LocalBackend)


class Machine(Strict):
    id: str = Field(pattern=SLUG)
    display: str
    cpu: float = Field(gt=0, le=1024)
    memory: Size
    description: str = ""


class Environment(Strict):
    id: str = Field(pattern=SLUG)
    display: str
    description: str = ""
    prefix: Path = Field(description="a Python environment whose bin/ has jupyterhub-singleuser")
    default_url: str = Field("/lab", pattern=URL_PATH)

    @field_validator("prefix")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        return value


class NamedServers(Strict):
    max: int = Field(5, ge=0, le=100)
    name_max_length: int = Field(20, ge=1, le=30)


class Storage(Strict):
    server_volume: Size = "2G"  # type: ignore[assignment]
    home: Size = "10G"  # type: ignore[assignment]


class Policy(Strict):
    named_servers: NamedServers = Field(default_factory=NamedServers)
    idle_timeout: Duration = "2h"  # type: ignore[assignment]
    storage: Storage = Field(default_factory=Storage)


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
        )
    ]


class Config(Strict):
    hub: Hub = Field(default_factory=Hub)
    auth: Auth = Field(default_factory=Auth)
    backend: Backend = Field(default_factory=Backend)
    machines: list[Machine] = Field(default_factory=default_machines, min_length=1)
    environments: list[Environment] = Field(default_factory=default_environments, min_length=1)
    policy: Policy = Field(default_factory=Policy)
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

    def machine(self, machine_id: str) -> Machine | None:
        return next((m for m in self.machines if m.id == machine_id), None)

    def environment(self, env_id: str) -> Environment | None:
        return next((e for e in self.environments if e.id == env_id), None)
