"""The pure parts of the Slurm backend: the report route's input rules and which hosts a job
may report, progress sentences."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime, timedelta

import pytest
from tornado import web

from hubstack.backends.slurm import SlurmBackend, describe_job
from hubstack.config.load import validate
from hubstack.hub.address import parse_address
from hubstack.slurm.client import JobInfo, Slurm
from hubstack.slurm.watcher import Tracked

RANGE = "40000-49999"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"host": "node-12.cluster.example", "port": 40000}, ("node-12.cluster.example", 40000)),
        ({"host": "10.1.2.3", "port": 49999}, ("10.1.2.3", 49999)),
        ({"host": "vm", "port": 41234}, ("vm", 41234)),
    ],
)
def test_a_report_names_a_host_and_a_port_in_range(body: object, expected: object) -> None:
    assert parse_address(body, RANGE) == expected


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"host": "vm"}, "exactly the fields"),
        ({"host": "vm", "port": 40000, "ip": "10.0.0.1"}, "exactly the fields"),
        (["vm", 40000], "exactly the fields"),
        ({"host": "evil.example/../admin", "port": 40000}, "host must be"),
        ({"host": "vm\r\nX-Injected: 1", "port": 40000}, "host must be"),
        ({"host": "", "port": 40000}, "host must be"),
        ({"host": "-vm", "port": 40000}, "host must be"),
        ({"host": 12, "port": 40000}, "host must be"),
        ({"host": "vm", "port": 22}, "40000-49999"),
        ({"host": "vm", "port": "40000"}, "40000-49999"),
        ({"host": "vm", "port": True}, "40000-49999"),
        ({"host": "vm", "port": 40000.5}, "40000-49999"),
    ],
)
def test_anything_else_is_refused_with_400(body: object, words: str) -> None:
    with pytest.raises(web.HTTPError) as refused:
        parse_address(body, RANGE)
    assert refused.value.status_code == 400
    assert words in str(refused.value.log_message)


def job(state: str, **fields: object) -> Tracked:
    info = {"reason": None, "nodes": None, "start_time": None, "position": None, **fields}
    tracked = Tracked("812")
    tracked.info = JobInfo(job_id="812", state=state, partition="gpu", **info)  # type: ignore[arg-type]
    return tracked


def test_a_queued_job_is_described_with_reason_position_and_expected_start() -> None:
    start = datetime.now().replace(hour=14, minute=5, second=0, microsecond=0)
    sentence = describe_job(job("PENDING", reason="Resources", position=3, start_time=start))
    assert sentence == (
        "Job 812 is queued on partition gpu, reason Resources, position 3, expected start 14:05"
    )


def test_a_start_on_another_day_names_the_day() -> None:
    start = datetime.now() + timedelta(days=2)
    sentence = describe_job(job("PENDING", reason="Priority", start_time=start))
    assert sentence.endswith(f"expected start {start.strftime('%b %d %H:%M')}")


def test_running_submitted_and_unanswered_jobs_are_described() -> None:
    assert describe_job(job("RUNNING", nodes="node7")) == (
        "Job 812 is running on node7; waiting for the server to start"
    )
    assert describe_job(Tracked("812")) == "Job 812 is submitted"
    silent = job("PENDING", reason="Resources")
    silent.unknown_since = 1.0
    assert describe_job(silent) == ("The scheduler is not answering; job 812 was last seen PENDING")


def test_a_job_waiting_for_an_elastic_node_says_how_long_boots_take() -> None:
    configuring = job("CONFIGURING", nodes="cpu3")
    assert describe_job(configuring, 41.6) == "Job 812: starting a node for you (typically ~42 s)"
    assert describe_job(configuring) == "Job 812: starting a node for you"


class FixedQueue(Slurm):
    """A scheduler that answers every query with the given jobs."""

    def __init__(self, *infos: JobInfo) -> None:
        super().__init__()
        self.infos = {info.job_id: info for info in infos}

    async def queue(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        self.queries += 1
        return {j: self.infos[j] for j in job_ids if j in self.infos}

    async def node_names(self, node: str) -> set[str]:
        """As for a second slurmd on the machine ``localhost``, at 127.0.0.1."""
        self.queries += 1
        return {node, "localhost", "127.0.0.1"}


def on_node(state: str, node: str | None) -> JobInfo:
    return JobInfo("812", state, None, node, "debug", None, None, batch_host=node)


def refusal(host: str, info: JobInfo, *, watched: bool = False) -> tuple[str | None, int]:
    """The backend's answer to a report of ``host`` by job 812 (as squeue or the watcher
    sees it), and how many queries it cost."""
    backend = SlurmBackend(validate({"backend": {"type": "slurm"}}))
    backend.slurm = FixedQueue(info)
    if watched:
        backend.watcher.jobs["812"] = Tracked("812", info=info)
    state = {"job_id": "812", "account": "hs-alice"}
    answer = asyncio.run(backend.refuse_address(state, host))
    return answer, backend.slurm.queries


@pytest.mark.parametrize("host", ["node-2", "NODE-2"])
def test_the_node_running_the_job_may_be_reported_by_its_name(host: str) -> None:
    assert refusal(host, on_node("RUNNING", "node-2")) == (None, 1)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_or_by_its_host_name_or_address(host: str) -> None:
    assert refusal(host, on_node("RUNNING", "node-2")) == (None, 2)


def test_the_watchers_answer_saves_a_query() -> None:
    assert refusal("node-2", on_node("RUNNING", "node-2"), watched=True) == (None, 0)


@pytest.mark.parametrize("host", ["127.0.0.2", "10.0.0.1", "vm2", "node-3"])
def test_another_host_is_refused_with_the_nodes_name(host: str) -> None:
    answer, _ = refusal(host, on_node("RUNNING", "node-2"))
    assert answer == (
        f"Job 812 runs on node node-2: its server must report node-2 or an address "
        f"of that node, not {host}."
    )


@pytest.mark.parametrize("info", [on_node("PENDING", None), on_node("COMPLETING", "localhost")])
def test_a_job_that_is_not_running_has_no_address(info: JobInfo) -> None:
    answer, _ = refusal("localhost", info)
    assert answer == "Job 812 is not running on any node, so it has no address to report."
