"""What runs for each kind of launch: one plain plan from a validated request."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.envs.layout import MULTIARCH
from hubstack.launch import resolve
from hubstack.launch.plan import BuiltRepository, Content, Limits, ServerPlan, server_plan
from hubstack.system.accounts import Account

GIB = 2**30
MACHINES = [
    {"id": "small", "display": "Small", "cpu": 1, "memory": "2G"},
    {"id": "medium", "display": "Medium", "cpu": 2, "memory": "4G"},
]
ENVIRONMENTS = [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/python"}]
SERVER = "/opt/envs/python/bin/jupyterhub-singleuser"
IPC = "--KernelManager.transport=ipc"  # kernels on the hub's machine take no TCP port
TERMINALS = '--ServerApp.terminado_settings=shell_command=["/bin/bash"]'  # not a login shell
ALICE = Account("hs-alice", 1001, 1001, Path("/home/hs-alice"))
HUB_ENV = {
    "JUPYTERHUB_API_TOKEN": "secret",
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8002/hub/api",
    "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
    "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:41234/user/alice/",
}
BUILT = Path("/var/lib/hubstack/binder/envs/3f9a")
REPO_FILES = Content(
    name="repo",
    url="https://github.com/org/repo",
    commit="a" * 40,
    mirror=Path("/var/lib/hubstack/mirrors/repo.git"),
    start="binder/start",
    allow_origins=("https://docs.example.org",),
)
START = ("/bin/sh", "-c", 'chmod +x "$0" 2>/dev/null; exec "$0" "$@"')


def local(**extra: Any) -> Config:
    return validate({"machines": MACHINES, "environments": ENVIRONMENTS, **extra})


def slurm(hub_url: str | None = "http://hub.cluster:8081/hub/api") -> Config:
    return validate(
        {
            "backend": {
                "type": "slurm",
                "slurm": {
                    "hub_url": hub_url,
                    "containers": {"python": "apptainer exec /images/python.sif"},
                    "fields": {
                        "partition": {"choices": ["debug", "long"], "default": "debug"},
                        "walltime": {"default": "1h", "min": "1m", "max": "1d"},
                        "cores": {"min": 1, "max": 8},
                    },
                },
            },
            "machines": MACHINES,
            "environments": ENVIRONMENTS,
        }
    )


def server_vars(
    account: Account, volume: str, path: str = "/opt/envs/python/bin", machine: str = "small"
) -> dict[str, str]:
    """What hubstack sets besides JupyterHub's variables, for every server."""
    return {
        # VS Code and RStudio, where offered, listen on a private socket, not a TCP port.
        "JUPYTER_VSCODE_PROXY_USE_SOCKET": "yes",
        "JUPYTER_RSESSION_PROXY_USE_SOCKET": "yes",
        "HOME": str(account.home),
        "USER": account.name,
        "PATH": f"{path}:{account.home}/.local/bin:/usr/local/bin:/usr/bin:/bin",
        "HUBSTACK_MACHINE": machine,
        "HUBSTACK_ENVIRONMENT": "python",
        "HUBSTACK_VOLUME": volume,
    }


@dataclasses.dataclass(frozen=True)
class Launch:
    """One row of the table: what a backend hands to the plan."""

    config: Config
    options: Mapping[str, str]
    server_name: str
    account: Account
    volume: str
    built: BuiltRepository | None = None


DEV = Account("dev", 1000, 1000, Path("/home/dev"))


def home_server(
    account: Account,
    volume: str,
    label: str,
    machine: tuple[str, float, int] = ("small", 1, 2 * GIB),
) -> ServerPlan:
    """The plan of a local server of Python 3 that opens its home; ``machine``: the machine
    type's id, CPUs and memory."""
    machine_id, cpu, memory = machine
    return ServerPlan(
        argv=(
            SERVER,
            IPC,
            f"--ServerApp.root_dir={account.home}",
            f"--ServerApp.preferred_dir={volume}",
            TERMINALS,
        ),
        env={**HUB_ENV, **server_vars(account, volume, machine=machine_id), "SHELL": "/bin/bash"},
        workdir=account.home,
        unit=f"hubstack-{account.name}-{label}",
        label=label,
        limits=Limits(cpu=cpu, memory=memory, processes=1024),
        prefix=Path("/opt/envs/python"),
    )


TABLE: dict[str, tuple[Launch, ServerPlan]] = {
    "default server": (
        Launch(local(), {}, "", ALICE, "/home/hs-alice/volumes/default"),
        home_server(ALICE, "/home/hs-alice/volumes/default", "default"),
    ),
    "named server": (
        Launch(
            local(), {"machine": "medium"}, "analysis", ALICE, "/home/hs-alice/volumes/analysis"
        ),
        home_server(ALICE, "/home/hs-alice/volumes/analysis", "analysis", ("medium", 2, 4 * GIB)),
    ),
    "repository launch": (
        Launch(
            local(binder={"cors_origins": ["https://docs.example.org"]}),
            {"environment": "repository", "repo": "https://github.com/org/repo", "ref": "main"},
            "",
            ALICE,
            "/home/hs-alice/volumes/default",
            BuiltRepository(BUILT, REPO_FILES),
        ),
        ServerPlan(
            argv=(
                *START,
                "/home/hs-alice/volumes/default/repo/binder/start",
                f"{BUILT}/bin/jupyterhub-singleuser",
                IPC,
                "--ServerApp.root_dir=/home/hs-alice/volumes/default/repo",
                "--ServerApp.preferred_dir=/home/hs-alice/volumes/default/repo",
                TERMINALS,
                r"--ServerApp.allow_origin_pat=^(https://docs\.example\.org)$",
            ),
            env={
                **HUB_ENV,
                **server_vars(ALICE, "/home/hs-alice/volumes/default", f"{BUILT}/bin"),
                # as repo2docker has them: the user's and the repository's .local/bin
                "PATH": f"{BUILT}/bin:/home/hs-alice/.local/bin:"
                "/home/hs-alice/volumes/default/repo/.local/bin:/usr/local/bin:/usr/bin:/bin",
                "HUBSTACK_ENVIRONMENT": "repository",
                "REPO_DIR": "/home/hs-alice/volumes/default/repo",
                "BINDER_REPO_URL": "https://github.com/org/repo",
                "HUBSTACK_REPO_COMMIT": "a" * 40,
                "SHELL": "/bin/bash",
            },
            workdir=Path("/home/hs-alice/volumes/default/repo"),
            unit="hubstack-hs-alice-default",
            label="default",
            limits=Limits(cpu=1, memory=2 * GIB, processes=1024),
            prefix=BUILT,
        ),
    ),
    "slurm job in a container": (
        Launch(
            slurm(),
            {"partition": "long", "walltime": "2h", "cores": "4"},
            "gpu",
            ALICE,
            "/home/hs-alice/volumes/gpu",
        ),
        ServerPlan(
            argv=(
                *("apptainer", "exec", "/images/python.sif"),
                SERVER,
                "--ip=0.0.0.0",
                "--ServerApp.root_dir=/home/hs-alice",
                "--ServerApp.preferred_dir=/home/hs-alice/volumes/gpu",
                TERMINALS,
            ),
            env={
                **{k: v for k, v in HUB_ENV.items() if k != "JUPYTERHUB_SERVICE_URL"},
                "JUPYTERHUB_API_URL": "http://hub.cluster:8081/hub/api",
                **server_vars(ALICE, "/home/hs-alice/volumes/gpu"),
            },
            workdir=Path("/home/hs-alice"),
            unit="hubstack-hs-alice-gpu",
            label="gpu",
            limits=Limits(cpu=4, memory=2 * GIB, processes=None),
            prefix=Path("/opt/envs/python"),
            container=("apptainer", "exec", "/images/python.sif"),
        ),
    ),
    "dev mode (not root)": (
        Launch(local(), {}, "", DEV, "/var/lib/hubstack/dev-storage/dev/default"),
        home_server(DEV, "/var/lib/hubstack/dev-storage/dev/default", "default"),
    ),
}


def plan_of(launch: Launch) -> ServerPlan:
    request = resolve(launch.config, launch.options)
    return server_plan(
        launch.config,
        request,
        launch.server_name,
        launch.account,
        Path(launch.volume),
        HUB_ENV,
        launch.built,
    )


@pytest.mark.parametrize(("launch", "expected"), TABLE.values(), ids=TABLE.keys())
def test_each_kind_of_launch_has_one_plan(launch: Launch, expected: ServerPlan) -> None:
    assert plan_of(launch) == expected


def test_a_plan_is_frozen_and_leaves_the_hub_env_alone() -> None:
    launch, _ = TABLE["slurm job in a container"]
    plan = plan_of(launch)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.argv = ()  # type: ignore[misc]
    assert "JUPYTERHUB_SERVICE_URL" in HUB_ENV
    assert HUB_ENV["JUPYTERHUB_API_URL"] == "http://127.0.0.1:8002/hub/api"


def test_helpers_beside_a_job_server_run_in_its_container() -> None:
    launch, _ = TABLE["slurm job in a container"]
    python = ("apptainer", "exec", "/images/python.sif", "/opt/envs/python/bin/python3")
    assert plan_of(launch).python == python
    assert plan_of(launch).executable == Path(SERVER)


def test_a_slurm_job_reaches_the_hub_where_jupyterhub_says_without_hub_url() -> None:
    config = slurm(hub_url=None)
    plan = server_plan(config, resolve(config, {}), "", ALICE, Path("/v"), HUB_ENV)
    assert plan.env["JUPYTERHUB_API_URL"] == HUB_ENV["JUPYTERHUB_API_URL"]


def test_a_repository_without_start_script_or_origins_runs_the_server_itself() -> None:
    launch, expected = TABLE["repository launch"]
    plain = dataclasses.replace(REPO_FILES, start=None, allow_origins=())
    plan = plan_of(dataclasses.replace(launch, built=BuiltRepository(BUILT, plain)))
    assert plan.argv == expected.argv[4:-1]


@pytest.mark.parametrize(
    ("options", "built"),
    [
        ({}, BuiltRepository(BUILT, REPO_FILES)),
        ({"environment": "repository", "repo": "https://github.com/org/repo"}, None),
    ],
    ids=["built environment without a repository", "repository without its build"],
)
def test_a_repository_launch_runs_its_built_environment_and_nothing_else_does(
    options: dict[str, str], built: BuiltRepository | None
) -> None:
    config = local()
    with pytest.raises(ValueError, match="built environment"):
        server_plan(config, resolve(config, options), "", ALICE, Path("/v"), HUB_ENV, built)


def test_a_local_server_runs_through_the_code_that_adopts_its_socket() -> None:
    """Inside a repository's start script, so the script still runs the server it execs."""
    launch, expected = TABLE["repository launch"]
    request = resolve(launch.config, launch.options)
    plan = server_plan(
        launch.config,
        request,
        "",
        ALICE,
        Path(launch.volume),
        HUB_ENV,
        launch.built,
        listen_code="adopt()",
    )
    python = (f"{BUILT}/bin/python3", "-c", "adopt()")
    assert plan.argv == (*expected.argv[:4], *python, *expected.argv[4:])


def test_debian_packages_of_a_repository_are_found_by_server_kernels_and_man() -> None:
    launch, _ = TABLE["repository launch"]
    built = BuiltRepository(BUILT, REPO_FILES, apt=True, python="3.11")
    env = plan_of(dataclasses.replace(launch, built=built)).env
    apt = f"{BUILT}/apt"
    assert env["PATH"].split(":")[:5] == [
        f"{BUILT}/bin",
        f"{apt}/usr/local/bin",
        f"{apt}/usr/bin",
        f"{apt}/bin",
        "/home/hs-alice/.local/bin",
    ]
    assert env["LD_LIBRARY_PATH"].split(":")[0] == f"{apt}/usr/lib/{MULTIARCH}"
    assert env["MANPATH"] == f"{apt}/usr/share/man:"  # and the system's pages
    assert "LD_LIBRARY_PATH" not in plan_of(launch).env
    # pip installs go to the user's ~/.local, which the environment's Python finds
    assert env["PIP_PREFIX"] == "/home/hs-alice/.local"
    assert env["PYTHONPATH"] == "/home/hs-alice/.local/lib/python3.11/site-packages"


@pytest.mark.parametrize("search", [True, False])
def test_jupyter_lsp_searches_at_each_start_unless_the_environment_says_not(search: bool) -> None:
    config = local(environments=[{**ENVIRONMENTS[0], "language_server_search": search}])
    plan = server_plan(config, resolve(config, {}), "", ALICE, Path("/v"), HUB_ENV)
    off = "--LanguageServerManager.autodetect=False"
    assert (off in plan.argv) is not search
    assert plan.argv[-1] == TERMINALS
