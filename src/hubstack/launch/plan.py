"""What runs when a user starts a server: one plan, whatever the backend.

From a validated launch and what the backend found out (the account, the server's storage,
a repository's built environment), :func:`server_plan` gives the server's whole command
line, its variables, the directory it starts in, its unit or job name and its limits. It is
pure, reading no file and running nothing, so every kind of launch can be read, and tested,
as plain data. A backend only places the plan: the local one in the server's cgroup and
mount namespace as the user, the Slurm one in a job script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubstack.config.interfaces import INTERFACES
from hubstack.config.models import Config, Environment
from hubstack.envs.layout import search_paths
from hubstack.launch.profiles import LaunchRequest

if TYPE_CHECKING:
    from hubstack.system.accounts import Account

SERVER = "bin/jupyterhub-singleuser"
PYTHON = "bin/python3"
# A job's server learns its port and address only on its node (see the job script).
ALL_ADDRESSES = "0.0.0.0"
KERNELS_OVER_IPC = "--KernelManager.transport=ipc"
# environments[].language_server_search false: jupyter-lsp's search at each start is off.
NO_LANGUAGE_SERVER_SEARCH = "--LanguageServerManager.autodetect=False"
# VS Code and RStudio, behind jupyter-server-proxy, listen on a Unix socket in a private
# directory of the server, never on a TCP port: code-server runs with --auth none, and any
# account on the machine could reach a port.
PROXIED_OVER_SOCKETS = {
    "JUPYTER_VSCODE_PROXY_USE_SOCKET": "yes",
    "JUPYTER_RSESSION_PROXY_USE_SOCKET": "yes",
}


def extension_options(environment: Environment) -> list[str]:
    """The Jupyter server extensions of the interfaces ``environment`` offers, enabled on
    the command line: environments may ship them disabled, as the default one does, since
    importing them costs every other server's start."""
    extensions = sorted({INTERFACES[i].extension or "" for i in environment.interfaces} - {""})
    return [f"--ServerApp.jpserver_extensions={name}=True" for name in extensions]


# Terminals as interactive, not login shells: Debian's /etc/profile sets PATH anew for a login
# shell, which would lose the environment's bin in terminals while kernels have it.
TERMINAL_SHELL = '--ServerApp.terminado_settings=shell_command=["/bin/bash"]'


def server_label(server_name: str) -> str:
    """A server's name in paths, units and jobs: the default server (named "") is ``default``."""
    return server_name or "default"


@dataclass(frozen=True)
class Content:
    """A repository's files for one server, and the script its server starts through."""

    name: str
    url: str
    commit: str
    mirror: Path
    snapshot: Path | None = None
    start: str | None = None
    home: Path | None = None  # what the build left in its home, for the user's
    # Web sites whose pages may use the server (Binder clients such as thebe run there).
    allow_origins: tuple[str, ...] = ()

    def directory(self, volume: Path) -> Path:
        """Where the files are in a server's storage: the directory the server opens."""
        return volume / self.name


@dataclass(frozen=True)
class BuiltRepository:
    """An environment once built: the prefix a launch of it runs from, and for a launch
    from a repository the files (of ``content.commit``) its server gets (None: a declared
    environment, whose server opens the home like one of a hand-built prefix)."""

    prefix: Path
    content: Content | None
    apt: bool = False  # Debian packages are unpacked in the environment (envs/layout.py)
    python: str | None = None  # the environment's Python version, X.Y
    layer: Path | None = None  # the prefix of its server layer (envs/server_layer.py)
    # a conda environment's: the prefix of its Python's conda server layer (envs/conda_layer.py)
    fork_layer: Path | None = None


@dataclass(frozen=True)
class Limits:
    """What one server may use: its machine type's, or on Slurm its job's (which counts no
    processes); None means no limit."""

    cpu: float | None
    memory: int | None
    processes: int | None


@dataclass(frozen=True)
class ServerPlan:
    """Everything that runs for one server, before a backend places it."""

    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: Path  # where the server starts, and its Jupyter root directory
    unit: str  # the cgroup unit or Slurm job name
    label: str
    limits: Limits
    prefix: Path  # the environment the server runs from
    container: tuple[str, ...] = ()  # the command the environment runs in (Slurm)

    @property
    def executable(self) -> Path:
        return self.prefix / SERVER

    @property
    def python(self) -> tuple[str, ...]:
        """The environment's Python, in its container: for what runs beside the server."""
        return (*self.container, str(self.prefix / PYTHON))


def start_command(workdir: Path, content: Content, command: list[str]) -> list[str]:
    """``command`` run through the repository's ``start`` script, if it has one (which
    ends with ``exec "$@"``, as the specification asks), and open to the allowed sites."""
    if content.allow_origins:
        pattern = "|".join(re.escape(origin) for origin in content.allow_origins)
        command = [*command, f"--ServerApp.allow_origin_pat=^({pattern})$"]
    if content.start is None:
        return command
    return [
        "/bin/sh",
        "-c",
        'chmod +x "$0" 2>/dev/null; exec "$0" "$@"',
        str(workdir / content.start),
        *command,
    ]


def user_installs(home: Path, python: str | None) -> dict[str, str]:
    """``pip install`` in a server of a built environment installs into the user's
    ``~/.local``, which its Python then finds: the environment is root's and shared, and a
    virtualenv turns off Python's user site-packages (so ``--user`` is refused in it).

    ``PIP_PREFIX`` puts the packages in ``~/.local/lib/pythonX.Y/site-packages`` and their
    commands in ``~/.local/bin`` (on ``PATH``); ``PYTHONPATH`` adds that folder, as the user
    site-packages would be outside a virtualenv.
    """
    if python is None:
        return {}
    local = home / ".local"
    return {
        "PIP_PREFIX": str(local),
        "PYTHONPATH": str(local / f"lib/python{python}/site-packages"),
    }


def server_plan(
    config: Config,
    request: LaunchRequest,
    server_name: str,
    account: Account,
    volume: Path,
    hub_env: Mapping[str, str],
    built: BuiltRepository | None = None,
    listen_code: str | None = None,
) -> ServerPlan:
    """The plan of a server of ``account`` with its storage at ``volume``, started with the
    variables JupyterHub gives it (``hub_env``) on the configured backend.

    ``listen_code`` is Python that the environment's interpreter runs with the server's
    command line as its arguments, in place of that command (the local backend's hand-over
    of the socket it bound, see ``backends/listen_fd.py``). Kernels talk to the server over
    Unix sockets in its runtime directory on the hub's machine, never on TCP ports that
    another server or kernel could take first.

    A launch from a repository (``request.repo``) runs ``built``, its environment once
    built, and opens the repository's directory in the volume (as Binder does, so paths in
    launch links are relative to it); any other launch opens the home.
    """
    content = None if built is None else built.content
    if (request.repo is None) != (content is None):
        raise ValueError("a launch from a repository needs its built environment, and only it")
    on_slurm = config.backend.type == "slurm"
    label = server_label(server_name)
    environment = request.environment
    prefix = environment.prefix if built is None else built.prefix
    if prefix is None:
        raise ValueError("a declared environment's launch needs its build")
    checkout = None if content is None else content.directory(volume)
    workdir = checkout or account.home
    container = tuple(config.backend.slurm.containers.get(environment.id, ())) if on_slurm else ()
    server = [str(prefix / SERVER)]
    if listen_code is not None:
        server = [str(prefix / PYTHON), "-c", listen_code, *server]
    command = [
        *container,
        *server,
        *([f"--ip={ALL_ADDRESSES}"] if on_slurm else [KERNELS_OVER_IPC]),
        f"--ServerApp.root_dir={workdir}",
        f"--ServerApp.preferred_dir={checkout or volume}",
        *extension_options(environment),
        *([] if environment.language_server_search else [NO_LANGUAGE_SERVER_SEARCH]),
        TERMINAL_SHELL,
    ]
    env = dict(hub_env)
    if on_slurm:
        # The job's server reports its address itself, and reaches the hub where the
        # compute nodes can.
        env.pop("JUPYTERHUB_SERVICE_URL", None)
        env["JUPYTERHUB_API_URL"] = config.backend.slurm.hub_url or hub_env["JUPYTERHUB_API_URL"]
    env |= PROXIED_OVER_SOCKETS | {
        "HOME": str(account.home),
        "USER": account.name,
        **search_paths(
            prefix,
            account.home,
            checkout,
            built is not None and built.apt,
            None if built is None else built.layer,
        ),
        "HUBSTACK_MACHINE": request.machine.id,
        "HUBSTACK_ENVIRONMENT": environment.id,
        "HUBSTACK_VOLUME": str(volume),
    }
    if built is not None:
        env |= user_installs(account.home, built.python)
    if content is not None and checkout is not None:
        command = start_command(checkout, content, command)
        env |= {
            "REPO_DIR": str(checkout),
            "BINDER_REPO_URL": content.url,
            "HUBSTACK_REPO_COMMIT": content.commit,
        }
    if not on_slurm:
        env["SHELL"] = "/bin/bash"
    if request.slurm is not None:
        limits = Limits(cpu=request.slurm.cores, memory=request.slurm.memory, processes=None)
    else:
        machine = request.machine
        limits = Limits(machine.cpu, machine.memory, config.backend.local.max_processes)
    return ServerPlan(
        argv=tuple(command),
        env=env,
        workdir=workdir,
        unit=f"hubstack-{account.name}-{label}",
        label=label,
        limits=limits,
        prefix=prefix,
        container=container,
    )
