"""The home page's data from JupyterHub's own spawner rows and hubstack spawners, without a hub:
what each server's card says, the home's usage and the groups a person sees."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from jupyterhub import orm
from jupyterhub.app import JupyterHub

from hubstack.backends.base import StorageUse, Usage
from hubstack.backends.slurm import SlurmBackend
from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.hub.home import Card, HomePage, Volume, home_page
from hubstack.hub.settings import TEMPLATES
from hubstack.hub.spawner import HubstackSpawner
from hubstack.slurm.client import JobInfo
from hubstack.slurm.watcher import Tracked

MIB, GIB = 2**20, 2**30
STARTED = datetime(2026, 12, 1, 9, 30)  # JupyterHub stores naive UTC times
ACTIVE = datetime(2026, 12, 1, 10, 15)
REPO = "https://git.example.org/lab/<script>analysis.git"
NOTICE = {"time": "2026-12-01T11:00:00+00:00", "message": "Your server 'old' stopped."}


def config(backend: str = "local") -> Config:
    return validate(
        {
            "backend": {"type": backend},
            "machines": [
                {"id": "small", "display": "Small (1 CPU, 2 GB)", "cpu": 1, "memory": "2G"},
                {"id": "gpu", "display": "GPU node", "cpu": 8, "memory": "32G"},
            ],
            "environments": [{"id": "python", "display": "Python 3", "prefix": "/opt/envs/py"}],
            "policy": {"storage": {"home": "10G", "server_volume": "2G"}},
        }
    )


def row(name: str, options: dict[str, str], state: dict[str, Any] | None = None) -> orm.Spawner:
    """JupyterHub's database row of a server, as ``User.all_spawners`` yields a stopped one."""
    return orm.Spawner(
        name=name,
        user_options=options,
        state=state or {},
        started=None,
        last_activity=ACTIVE,
    )


def running(cfg: Config, name: str, options: dict[str, str], backend: dict[str, Any]) -> Any:
    """A hubstack spawner of a running server, as JupyterHub keeps it for a started one."""
    spawner = HubstackSpawner(hubstack_config=cfg.model_dump_json())
    spawner.orm_spawner = row(name, options, {"backend": backend})
    spawner.orm_spawner.started = STARTED
    spawner.orm_spawner.server = orm.Server(
        proto="http", ip="127.0.0.1", port=4242, base_url=f"/user/a/{name}", cookie_name="c"
    )
    spawner.load_state(spawner.orm_spawner.state)
    return spawner


def no_queue(state: dict[str, Any]) -> str | None:
    return None


def cards(cfg: Config, spawners: list[Any], use: StorageUse | None = None) -> list[Card]:
    return home_page(cfg, spawners, [], use or StorageUse(), no_queue).cards


def test_a_running_default_server_shows_its_machine_environment_times_and_volume() -> None:
    cfg = config()
    use = StorageUse(servers={"": Usage(300 * MIB, 2 * GIB - 100 * MIB)})
    spawner = running(cfg, "", {"machine": "small", "environment": "python"}, {"pid": 7})
    [card] = cards(cfg, [spawner], use)
    assert card.title == "Default server"
    assert (card.status, card.machine, card.environment) == (
        "running",
        "Small (1 CPU, 2 GB)",
        "Python 3",
    )
    assert card.repository is None
    assert (card.backend, card.job_id, card.queue_state) == ("local", None, None)
    assert card.started == STARTED.replace(tzinfo=UTC)
    assert card.last_activity == ACTIVE.replace(tzinfo=UTC)
    assert card.volume == Volume(2 * GIB, 300 * MIB, 2 * GIB - 100 * MIB)
    assert card.volume.text == "300 MB of 2 GB used"
    assert card.volume.percent == 15
    assert not card.deletable, "JupyterHub never deletes the default server"


def test_a_stopped_named_server_can_be_deleted_and_keeps_its_notices() -> None:
    stopped = row("old", {"machine": "gpu", "environment": "python"}, {"notices": [NOTICE]})
    use = StorageUse(servers={"old": Usage(GIB, 2 * GIB)})
    [card] = cards(config(), [stopped], use)
    assert (card.name, card.title, card.status) == ("old", "old", "stopped")
    assert card.machine == "GPU node"
    assert card.started is None, "a stopped server has no start time to show"
    assert card.notices == [NOTICE]
    assert card.volume is not None and card.volume.text == "1 GB of 2 GB used"
    assert card.deletable


def test_a_repository_server_shows_the_repository_instead_of_an_environment() -> None:
    options = {"machine": "small", "environment": "repository", "repo": REPO, "ref": "main"}
    [card] = cards(config(), [row("analysis", options)])
    assert card.repository == REPO, "kept as given; the template escapes it"
    assert card.environment is None


def test_a_card_shows_the_interface_the_server_opens_in() -> None:
    cfg = config().model_copy(deep=True)
    cfg.environments[0].interfaces = ["voila", "lab", "vscode"]
    default = row("d", {"machine": "small", "environment": "python"})
    chosen = row("c", {"machine": "small", "environment": "python", "interface": "vscode"})
    shown = {card.name: card.interface for card in cards(cfg, [default, chosen])}
    assert shown == {"d": "Voilà", "c": "VS Code"}, "the environment's first unless chosen"
    [repository] = cards(cfg, [row("r", {"environment": "repository", "repo": REPO})])
    assert repository.interface == "JupyterLab"


def test_choices_the_config_no_longer_has_show_their_ids() -> None:
    [card] = cards(config(), [row("legacy", {"machine": "huge", "environment": "r"})])
    assert (card.machine, card.environment) == ("huge", "r")


def test_a_server_never_measured_shows_no_volume() -> None:
    [card] = cards(config(), [row("new", {"machine": "small"})])
    assert card.volume is None


def test_cards_list_the_default_server_first_then_by_name() -> None:
    cfg = config()
    spawners = [row("zeta", {}), row("alpha", {}), running(cfg, "", {}, {"pid": 1})]
    assert [card.name for card in cards(cfg, spawners)] == ["", "alpha", "zeta"]


@pytest.fixture
def slurm() -> SlurmBackend:
    return SlurmBackend(config("slurm"))


def queued(
    backend: SlurmBackend, job_id: str, state: str, reason: str | None, nodes: str | None
) -> None:
    """What the backend's job watcher learnt from its last ``squeue``."""
    info = JobInfo(job_id, state, reason, nodes, "debug", None, 1 if state == "PENDING" else None)
    backend.watcher.jobs[job_id] = Tracked(job_id, info=info)


def test_a_queued_slurm_job_shows_its_id_and_why_it_waits(slurm: SlurmBackend) -> None:
    cfg = slurm.config
    spawner = running(cfg, "big", {"machine": "gpu"}, {"job_id": "1234", "account": "hs-a"})
    spawner._spawn_pending = True
    queued(slurm, "1234", "PENDING", "Resources", None)
    [card] = home_page(cfg, [spawner], [], slurm.storage_use("a", ["big"]), slurm.queue_state).cards
    assert (card.backend, card.job_id, card.status) == ("slurm", "1234", "starting")
    assert card.queue_state == "PENDING (Resources)"
    assert card.volume is None, "the shared file system's quotas are the site's"


def test_a_running_slurm_job_shows_its_node(slurm: SlurmBackend) -> None:
    spawner = running(slurm.config, "", {"machine": "small"}, {"job_id": "77", "host": "node1"})
    queued(slurm, "77", "RUNNING", "None", "node1")
    [card] = home_page(slurm.config, [spawner], [], StorageUse(), slurm.queue_state).cards
    assert (card.job_id, card.queue_state) == ("77", "RUNNING on node1")


def test_a_job_the_watcher_has_not_seen_yet_shows_no_state(slurm: SlurmBackend) -> None:
    spawner = running(slurm.config, "", {}, {"job_id": "78"})
    [card] = home_page(slurm.config, [spawner], [], StorageUse(), slurm.queue_state).cards
    assert (card.job_id, card.queue_state) == ("78", None)


def test_a_stopped_slurm_server_shows_no_old_job() -> None:
    cfg = config("slurm")
    [card] = cards(cfg, [row("done", {"machine": "small"}, {"backend": {"job_id": "9"}})])
    assert card.status == "stopped" and card.queue_state is None


def test_home_usage_groups_and_the_groups_one_champions() -> None:
    groups = ["physics-champions", "physics", "chemistry", "-champions"]
    use = StorageUse(home=Usage(3 * GIB, 10 * GIB))
    page = home_page(config(), [], groups, use, no_queue)
    assert page.home == Volume(10 * GIB, 3 * GIB, 10 * GIB)
    assert page.home.text == "3 GB of 10 GB used" and page.home.percent == 30
    assert page.groups == ["-champions", "chemistry", "physics", "physics-champions"]
    assert page.champion_of == ["physics"]


def test_no_home_volume_where_nothing_was_measured() -> None:
    assert home_page(config(), [], [], StorageUse(), no_queue).home is None


def render_home(page: HomePage) -> str:
    """Our home.html as JupyterHub renders it: its loaders, autoescape, async Jinja."""
    base = JupyterHub()._template_paths_default()[0]
    loader = ChoiceLoader(
        [
            PrefixLoader({"templates": FileSystemLoader([base])}, "/"),
            FileSystemLoader([str(TEMPLATES), base]),
        ]
    )
    env = Environment(loader=loader, autoescape=True, enable_async=True)

    async def load() -> HomePage:
        return page

    user = SimpleNamespace(name="a", escaped_name="a", server_url=lambda name: f"/user/a/{name}/")
    return asyncio.run(
        env.get_template("home.html").render_async(
            user=user,
            hubstack_home=load,
            base_url="/hub/",
            static_url=lambda path, **_: f"/static/{path}",
            allow_named_servers=True,
            no_spawner_check=True,
        )
    )


def test_what_users_gave_is_escaped_on_the_page() -> None:
    cfg = config()
    options = {"machine": "small", "environment": "repository", "repo": REPO}
    notice = {"time": "t", "message": "stopped: <img src=x onerror=alert(1)>"}
    stopped = row("analysis", options, {"notices": [notice]})
    page = home_page(cfg, [stopped], ["<g>", "<g>-champions"], StorageUse(), no_queue)
    html = render_home(page)
    assert "<script>analysis" not in html and "&lt;script&gt;analysis.git" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<g>" not in html and "champion of <strong>&lt;g&gt;</strong>" in html
    assert 'href="/hub/spawn/a/analysis"' in html
