"""End to end on the local Slurm cluster: a real hub whose servers are Slurm jobs."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, make_repo
from hubprocesses import kill_hub
from hubtest import DEFAULT_ENV, Hub, Session, execute, new_test_root, running_hub, wait_for
from storage_emulators import Throttle, hubdata, moto_s3

from slurm.conftest import Blocker

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_root, needs_default_env]

REPO = Path(__file__).resolve().parents[2]
TABULATE = "tabulate==0.9.0"


def slurm_hub_overrides(hungry: Path) -> dict[str, Any]:
    return {
        "backend": {
            "type": "slurm",
            "slurm": {
                "poll_interval": "3s",
                "pending_poll_interval": "1s",
                "fields": {
                    "partition": {"choices": ["debug", "long", "gpu"], "default": "debug"},
                    "account": {"choices": ["research", "teaching"]},
                    "walltime": {"default": "20m", "min": "1m", "max": "3d"},
                    "cores": {"min": 1, "max": 2},
                    "memory": {"min": "64M", "max": "2G"},
                },
                "partitions": {"debug": {"max_walltime": "1h"}},
            },
        },
        "policy": {"named_servers": {"max": 20}},
        "machines": [
            {"id": "small", "display": "Small", "cpu": 1, "memory": "1G"},
            # For a group nobody here is in: refused to the copy jobs test's user.
            {"id": "wide", "display": "Wide", "cpu": 2, "memory": "1G", "groups": ["copy-wide"]},
        ],
        "environments": [
            {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
            {"id": "hungry", "display": "Hungry", "prefix": str(hungry)},
            {
                "id": "tools",
                "display": "Python tools",
                "prefix": str(DEFAULT_ENV),
                "interfaces": ["lab", "vscode", "voila"],
            },
            # The files of the repository test's repository: one build serves both.
            {"id": "declared", "display": "Declared", "spec": {"requirements": TABULATE}},
        ],
        "extra_jupyterhub_config": {"HubstackSpawner": {"poll_interval": 2}},
    }


@pytest.fixture(scope="module")
def hungry_env() -> Iterator[Path]:
    """An environment whose server allocates far more memory than its job may use."""
    prefix = new_test_root() / "hungry"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin/python3").symlink_to(DEFAULT_ENV / "bin/python3")
    server = prefix / "bin/jupyterhub-singleuser"
    server.write_text(
        "#!/bin/sh\nexec python3 -c 'import time; x = b\"x\" * (1 << 30); time.sleep(60)'\n"
    )
    server.chmod(0o755)
    for path in (prefix.parent, prefix, prefix / "bin"):
        path.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(slurm_cluster: Any, hungry_env: Path) -> Iterator[Hub]:
    with running_hub(slurm_hub_overrides(hungry_env)) as running:
        yield running
        # No orphans: every job the hub submitted ends with its server.
        for name in ("alice", "bob"):
            account = running.prefix + name
            for job in jobs_of(account):
                subprocess.run(["scancel", job], check=False)
            subprocess.run(["sacctmgr", "-i", "delete", "user", account], capture_output=True)


@pytest.fixture(scope="module")
def alice(hub: Hub) -> Session:
    """Alice may charge the Slurm account research, not teaching."""
    subprocess.run(
        [str(REPO / "scripts/slurm-cluster.sh"), "add-user", hub.prefix + "alice", "research"],
        check=True,
        capture_output=True,
    )
    return hub.new_user("alice")


@pytest.fixture(scope="module", autouse=True)
def at_wall_time(alice: Session) -> Session:
    """Alice's server "short" with a wall time of one minute (Slurm's smallest), started as
    the module starts: its job runs out while the tests before the wall-time test run, and
    that test only waits for what is left. Tests that fill the node (Blocker) come after
    the wall-time test, since the job's end frees a CPU."""
    assert alice.start("short", {"walltime": "1m"}).status_code in (201, 202)
    alice.wait_ready("short", timeout=180)
    return alice


def squeue(*args: str) -> str:
    return subprocess.run(
        ["squeue", "-h", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def jobs_of(account: str) -> list[str]:
    """Active jobs of ``account`` (pending or running), oldest first."""
    return squeue("-u", account, "-t", "PD,R,CG", "-o", "%i").split()


def job_of(hub: Hub, user: str, server: str) -> str:
    name = f"hubstack-{hub.prefix}{user}-{server}"
    jobs = squeue("-u", hub.prefix + user, "-n", name, "-t", "PD,R", "-o", "%i").split()
    assert len(jobs) == 1, f"expected one job named {name}, found {jobs}"
    return jobs[0]


def batch_script(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "write", "batch_script", job_id, "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def messages(events: list[dict[str, Any]]) -> str:
    return "\n".join(str(e.get("message", "")) for e in events)


def test_spawn_through_the_api_runs_a_job_of_the_user(hub: Hub, alice: Session) -> None:
    options = {"partition": "debug", "walltime": "30m", "cores": 1, "memory": "512M"}
    assert alice.start("api", options).status_code in (201, 202)
    events = alice.progress("api", timeout=180)
    assert events[-1].get("ready"), events
    job = job_of(hub, "alice", "api")
    run = alice.run_code(
        "import os, pwd; print(os.environ['SLURM_JOB_ID'], pwd.getpwuid(os.getuid()).pw_name)",
        "api",
    )
    assert run.stdout.split() == [job, hub.prefix + "alice"], run
    lines = [line for line in batch_script(job).splitlines() if line.startswith("#SBATCH")]
    options_set = {line.split()[1].split("=")[0] for line in lines}
    assert "#SBATCH --partition=debug" in lines
    assert "#SBATCH --cpus-per-task=1" in lines
    assert options_set <= {
        "--job-name",
        "--output",
        "--partition",
        "--account",
        "--time",
        "--cpus-per-task",
        "--mem",
        "--export",
    }, lines
    alice.stop("api")
    assert job not in jobs_of(hub.prefix + "alice"), "stop cancels the job"


@pytest.mark.skipif(
    not (DEFAULT_ENV / "bin/code-server").exists()
    or not Path("/usr/share/jupyter/kernels/ir").exists(),
    reason="code-server or IRkernel is not installed (scripts/setup.sh --vscode --r)",
)
def test_a_job_server_opens_in_its_interface_and_serves_the_others(
    hub: Hub, alice: Session
) -> None:
    """VS Code, Voilà and an R kernel, each through the proxy to the job's server."""
    options = {"environment": "tools", "interface": "vscode", "partition": "debug"}
    assert alice.start("tools", options).status_code in (201, 202)
    events = alice.progress("tools", timeout=180)
    assert events[-1].get("ready"), events
    base = alice.server_url("tools")
    auth = {"Authorization": f"token {alice.token}"}
    root = requests.get(base, headers=auth, allow_redirects=False, timeout=60)
    assert root.headers["Location"].startswith("/user/alice/tools/vscode/"), root.headers
    vscode = requests.get(f"{base}vscode/", headers=auth, timeout=300)
    assert vscode.status_code == 200 and "vscode-workbench-web-configuration" in vscode.text
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": "print('answer', 6 * 7)",
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    saved = requests.put(
        f"{base}api/contents/answer.ipynb",
        headers=auth,
        json={"type": "notebook", "content": notebook},
        timeout=60,
    )
    assert saved.status_code in (200, 201), saved.text
    voila = requests.get(f"{base}voila/render/answer.ipynb", headers=auth, timeout=120)
    assert voila.status_code == 200 and "answer 42" in voila.text, voila.text[-2000:]
    kernel = requests.post(f"{base}api/kernels", headers=auth, json={"name": "ir"}, timeout=60)
    assert kernel.status_code == 201, kernel.text
    cell = execute(base, kernel.json()["id"], alice.token, 'cat(Sys.getenv("SLURM_JOB_ID"))', 120)
    assert cell.stdout == job_of(hub, "alice", "tools"), cell
    alice.stop("tools")


def test_an_environment_from_a_repository_runs_as_a_job(hub: Hub, alice: Session) -> None:
    """The hub builds into the shared path; the job runs that environment on its node,
    in the repository's files, through the repository's ``start`` script."""
    with GitDaemon(hub.root / "git") as git:
        make_repo(
            git.base / "slurmrepo",
            {
                "requirements.txt": f"{TABULATE}\n",
                "start": '#!/bin/sh\nexport PROBE=started\nexec "$@"\n',
                "data.csv": "a,b\n",
            },
            executable=("start",),
        )
        options = {"environment": "repository", "repo": git.url("slurmrepo"), "ref": "main"}
        assert alice.start("fromrepo", options).status_code in (201, 202)
        events = alice.progress("fromrepo", timeout=600)
    assert events[-1].get("ready"), events
    model = alice.model("fromrepo")
    assert model is not None and len(model["user_options"]["commit"]) == 40
    job = job_of(hub, "alice", "fromrepo")
    run = alice.run_code(
        "import os, tabulate\n"
        "print(os.environ['SLURM_JOB_ID'], tabulate.__version__, os.environ['PROBE'])\n"
        "print(sorted(os.listdir('.')))",
        "fromrepo",
    )
    assert run.stdout.split("\n")[:2] == [
        f"{job} 0.9.0 started",
        "['data.csv', 'requirements.txt', 'start']",
    ], run
    alice.stop("fromrepo", remove=True)


def test_a_declared_environment_runs_as_a_job_from_the_shared_path(
    hub: Hub, alice: Session
) -> None:
    """Built by the hub at its start into binder.root (the path the nodes share)."""

    def accepted() -> bool:
        answer = alice.start("declared", {"environment": "declared"})
        assert answer.status_code in (201, 202, 400), answer.text
        if answer.status_code == 400:
            assert "is being built" in answer.json()["message"], answer.text
        return answer.status_code != 400

    wait_for(accepted, 600, "the declared environment's build", interval=2)
    alice.wait_ready("declared", timeout=300)
    job = job_of(hub, "alice", "declared")
    run = alice.run_code(
        "import os, sys, tabulate\nprint(os.environ['SLURM_JOB_ID'], sys.prefix)", "declared"
    )
    job_id, prefix = run.stdout.split()
    assert job_id == job and Path(prefix).parent.parent == hub.root / "binder/envs", run
    alice.stop("declared", remove=True)


def test_spawn_through_the_form_on_another_partition(hub: Hub, alice: Session) -> None:
    url = f"{hub.url}/hub/spawn/alice/viaform"
    page = alice.http.get(url, timeout=30)
    assert page.status_code == 200
    assert 'name="partition"' in page.text and 'name="walltime"' in page.text
    xsrf = alice.http.cookies.get("_xsrf", path="/hub/")
    form = {
        "machine": "small",
        "environment": "python",
        "partition": "long",
        "walltime": "15m",
        "cores": "1",
        "memory": "256M",
        "_xsrf": xsrf,
    }
    resp = alice.http.post(url, data=form, allow_redirects=False, timeout=60)
    assert resp.status_code == 302, resp.text
    alice.wait_ready("viaform", timeout=180)
    job = job_of(hub, "alice", "viaform")
    assert squeue("-j", job, "-o", "%P %l %m") == "long 15:00 256M"
    alice.stop("viaform")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"partition": "debug\n#SBATCH --uid=0"}, "partition"),
        ({"partition": "$(id)"}, "partition"),
        ({"walltime": "1:00:00\n#SBATCH --uid=0"}, "wall time"),
        ({"memory": "1G; touch /tmp/hubstack-pwned"}, "memory"),
        ({"cores": "1 --uid=0"}, "cores"),
        ({"cores": 64}, "between 1 and 2"),
        ({"walltime": "2h"}, "limit of partition debug"),
        ({"partition": "gpu"}, "does not exist on the cluster"),
        ({"partition": "long", "walltime": "2-00:00:00"}, "1-00:00:00 limit of partition long"),
        ({"account": "teaching"}, "your accounts are: research"),
        ({"uid": "0"}, "Unknown option"),
    ],
)
def test_bad_fields_are_refused_before_anything_is_submitted(
    hub: Hub, alice: Session, options: dict[str, Any], words: str
) -> None:
    before = jobs_of(hub.prefix + "alice")
    resp = alice.start("tampered", options)
    assert resp.status_code == 400, resp.text
    assert words.lower() in resp.json()["message"].lower()
    assert set(jobs_of(hub.prefix + "alice")) <= set(before), "no job was submitted"
    assert not Path("/tmp/hubstack-pwned").exists()


def test_a_job_at_its_wall_time_is_stopped_and_the_user_told(
    hub: Hub, at_wall_time: Session
) -> None:
    alice = at_wall_time
    wait_for(lambda: alice.model("short") is None, 180, "the job to reach its wall time")
    home = alice.http.get(f"{hub.url}/hub/home", timeout=30).content.decode()
    assert "wall time" in home


def test_a_queued_job_says_why_it_waits_then_starts(hub: Hub, alice: Session) -> None:
    blocker = Blocker()
    homes: list[str] = []
    try:
        assert alice.start("queued").status_code in (201, 202)

        def release_when_queued(event: dict[str, Any]) -> None:
            if "reason Resources" in str(event.get("message")):
                homes.append(alice.http.get(f"{hub.url}/hub/home", timeout=30).text)
                blocker.release()

        events = alice.progress("queued", 240, release_when_queued)
    finally:
        blocker.release()
    assert events[-1].get("ready"), events
    queued = [e["message"] for e in events if "queued on partition debug" in e["message"]]
    assert any("reason Resources, position 1, expected start" in m for m in queued), queued
    # The home page's card of the queued server: its job and why it waits.
    job = job_of(hub, "alice", "queued")
    assert f'<span class="hs-job">{job}</span>' in homes[0]
    assert '<span class="hs-queue">PENDING (Resources)</span>' in homes[0]
    alice.stop("queued")


def test_a_job_cancelled_outside_the_hub_is_noticed_and_explained(hub: Hub, alice: Session) -> None:
    assert alice.start("victim").status_code in (201, 202)
    alice.wait_ready("victim", timeout=180)
    subprocess.run(["scancel", job_of(hub, "alice", "victim")], check=True)
    wait_for(lambda: alice.model("victim") is None, 60, "the hub to notice the cancelled job")
    home = alice.http.get(f"{hub.url}/hub/home", timeout=30).content.decode()
    assert "stopped: it was cancelled" in home


def test_a_job_killed_for_memory_says_so(hub: Hub, alice: Session) -> None:
    resp = alice.start("hungry", {"environment": "hungry", "memory": "128M"})
    assert resp.status_code in (201, 202, 500), resp.text
    message = resp.json()["message"] if resp.status_code == 500 else ""
    if not message:
        events = alice.progress("hungry", timeout=180)
        assert events[-1].get("failed"), events
        message = events[-1]["message"]
    assert "ran out of memory" in message, message


def test_a_scheduler_outage_does_not_drop_a_running_server(hub: Hub, alice: Session) -> None:
    assert alice.start("steady").status_code in (201, 202)
    alice.wait_ready("steady", timeout=180)
    failures = hub.log().count("squeue failed")
    subprocess.run(["pkill", "-TERM", "-x", "slurmctld"], check=True)
    try:
        wait_for(
            lambda: hub.log().count("squeue failed") >= failures + 3,
            90,
            "the hub to meet the scheduler outage three times",
        )
        assert alice.model("steady")["ready"], "the server is kept while slurmctld is down"
        assert alice.run_code("print(6 * 7)", "steady").stdout.strip() == "42"
    finally:
        subprocess.run([str(REPO / "scripts/slurm-cluster.sh"), "start"], check=True)
    alice.stop("steady")


def test_a_hub_restart_keeps_running_and_queued_servers(hub: Hub, alice: Session) -> None:
    account = hub.prefix + "alice"
    assert alice.start("kept").status_code in (201, 202)
    alice.wait_ready("kept", timeout=180)
    running = job_of(hub, "alice", "kept")

    blocker = Blocker()
    try:
        assert alice.start("waiting").status_code in (201, 202)

        def queued() -> bool:
            return squeue("-u", account, "-t", "PD", "-o", "%j") == f"hubstack-{account}-waiting"

        wait_for(queued, 60, "the second server's job to queue")
        pending = job_of(hub, "alice", "waiting")
        hub.stop()
        hub.start()
        assert alice.model("kept")["ready"], "the running server is adopted again"
        assert alice.run_code("print('still here')", "kept").stdout.strip() == "still here"
    finally:
        blocker.release()
    wait_for(lambda: (alice.model("waiting") or {}).get("ready"), 180, "the queued job to start")
    assert sorted(jobs_of(account)) == sorted([running, pending]), "no job was submitted twice"
    assert alice.run_code("print('resumed')", "waiting").stdout.strip() == "resumed"
    for server in ("kept", "waiting"):
        alice.stop(server)
    assert jobs_of(account) == []


# -- copy jobs: hubdata cp --job ------------------------------------------------------------

S3_SECRET = "s3secret-" + secrets.token_urlsafe(24)
SLOW_FILES = {f"in/f{i}.bin": os.urandom(512 * 1024) for i in range(16)}


@pytest.fixture(scope="module")
def slow_store() -> Iterator[str]:
    """moto's S3 server with 8 MiB in 16 files, reached through a 2 MiB/s relay: a copy
    runs for seconds, long enough to be watched."""
    with moto_s3() as s3:
        code = (
            "import json, s3fs, sys\n"
            "s3 = s3fs.S3FileSystem(key='k', secret='x', endpoint_url=sys.argv[1])\n"
            "s3.mkdir('cj-bucket')\n"
            "for name, size in json.loads(sys.argv[2]).items():\n"
            "    s3.pipe_file('cj-bucket/' + name, bytes.fromhex(sys.stdin.readline()))\n"
        )
        sizes = json.dumps({name: len(data) for name, data in SLOW_FILES.items()})
        subprocess.run(
            [str(DEFAULT_ENV / "bin/python"), "-c", code, s3.endpoint, sizes],
            input="".join(data.hex() + "\n" for data in SLOW_FILES.values()),
            text=True,
            check=True,
            timeout=120,
        )
        with Throttle(s3.endpoint, 2 * 1024 * 1024) as relay:
            yield relay.endpoint


@pytest.fixture(scope="module")
def copier(hub: Hub, alice: Session, slow_store: str) -> Iterator[Session]:
    """Alice with an S3 connection ``slow`` and a server ``data`` (a job) to run hubdata in."""
    connection = {
        "name": "slow",
        "kind": "s3-compatible",
        "endpoint": slow_store,
        "container": "cj-bucket",
        "credential": {"access_key_id": "AKIACOPYJOBS", "secret_access_key": S3_SECRET},
    }
    resp = alice.api("POST", f"/storage/users/{alice.name}/connections", json=connection)
    assert resp.status_code == 201, resp.text
    assert alice.start("data").status_code in (201, 202)
    alice.wait_ready("data", timeout=180)
    yield alice
    alice.stop("data")


def copy_job(session: Session, *args: str) -> dict[str, Any]:
    """``hubdata cp --job ARGS`` in the server: the job the hub recorded."""
    rc, out, err = hubdata(session, "cp", "--job", *args, server="data")
    assert rc == 0 and "submitted as Slurm job" in out, (rc, out, err)
    job_id = out.split("copy job ")[1].split()[0]
    return session.api("GET", f"/storage/users/{session.name}/jobs/{job_id}").json()


def job_now(session: Session, job: dict[str, Any]) -> dict[str, Any]:
    return session.api("GET", f"/storage/users/{session.name}/jobs/{job['id']}").json()


def processes_of(uid: int) -> dict[int, tuple[bytes, bytes]]:
    """The command line and environment of each process of ``uid``."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid:
                found[int(proc.name)] = (
                    (proc / "cmdline").read_bytes(),
                    (proc / "environ").read_bytes(),
                )
        except OSError:
            continue
    return found


def test_a_copy_job_runs_as_the_user_with_its_progress_in_the_hub(
    hub: Hub, copier: Session
) -> None:
    job = copy_job(copier, "-r", "slow:in", "copied")
    assert job["state"] in ("queued", "running") and job["slurm_job"], job
    assert (job["machine"], job["partition"]) == ("small", "debug"), "the defaults"
    account = pwd.getpwnam(hub.prefix + "alice")

    def midway() -> dict[str, Any] | None:
        now = job_now(copier, job)
        assert now["state"] in ("queued", "running"), now
        return (
            now
            if now["state"] == "running" and 0 < now["bytes_done"] < now["bytes_total"]
            else None
        )

    seen = wait_for(midway, 180, "the copy job to report progress while it runs")
    assert seen["files_total"] == 16 and seen["bytes_total"] == 8 * 1024 * 1024, seen
    page = copier.http.get(f"{hub.url}/hub/storage", timeout=60).text
    assert "slow:in &rarr; copied" in page and "running" in page

    # The credential is in no script, job record, process or environment; the job's token
    # is not in the environment of the hubdata that runs the copy.
    assert batch_script(job["slurm_job"]).count("HUBSTACK_COPY_TOKEN=") == 0
    shown = subprocess.run(
        ["scontrol", "show", "job", "-dd", job["slurm_job"]], capture_output=True, text=True
    ).stdout
    for text in (batch_script(job["slurm_job"]), shown):
        assert S3_SECRET not in text
    processes = processes_of(account.pw_uid)
    copying = [env for cmd, env in processes.values() if b"run-job" in cmd]
    assert copying, "hubdata runs the copy in the job, as the user"
    for cmd, env in processes.values():
        assert S3_SECRET.encode() not in cmd + env
    assert all(
        b"HUBSTACK_COPY_TOKEN" not in env and b"JUPYTERHUB_API_TOKEN" not in env for env in copying
    )

    # Nobody else sees or cancels it.
    bob = hub.new_user("bob")
    assert bob.api("GET", f"/storage/users/{copier.name}/jobs").status_code in (403, 404)
    for method in ("GET", "DELETE"):
        assert bob.api(method, f"/storage/users/bob/jobs/{job['id']}").status_code == 404
    assert bob.api("GET", "/storage/users/bob/jobs").json() == {"jobs": []}
    assert bob.api("GET", "/storage/users/bob/jobs/9" + "9" * 30).status_code == 404
    bob_page = bob.http.get(f"{hub.url}/hub/storage", timeout=60).text
    assert "slow:in" not in bob_page

    done = wait_for(
        lambda: (now := job_now(copier, job))["state"] not in ("queued", "running") and now,
        180,
        "the copy job to end",
    )
    assert done["state"] == "done" and done["files_done"] == 16, done
    assert done["bytes_done"] == done["bytes_total"], done
    copied = Path(account.pw_dir) / "copied"
    assert {f"in/{p.name}": p.read_bytes() for p in copied.iterdir()} == SLOW_FILES
    assert S3_SECRET not in Path(done["log"]).read_text()
    rc, out, _ = hubdata(copier, "jobs", server="data")
    assert rc == 0 and f"{job['id']}\tdone\t16/16 files" in out


def test_a_copy_job_that_fails_or_is_cancelled_says_so(hub: Hub, copier: Session) -> None:
    jobs = f"/storage/users/{copier.name}/jobs"
    for body, key in (
        ({"source": "slow:a\nb", "destination": "x", "workdir": "/tmp"}, "source"),
        ({"source": "slow:a", "destination": "x", "workdir": "relative"}, "workdir"),
        ({"source": "a", "destination": "x", "workdir": "/tmp"}, "one side"),
    ):
        refused = copier.api("POST", jobs, json=body)
        assert refused.status_code == 400 and key in refused.json()["message"], refused.text
    rc, _, err = hubdata(copier, "cp", "--job", "slow:../etc", "x", server="data")
    assert rc == 2 and "'..'" in err, err
    rc, _, err = hubdata(copier, "cp", "--job", "nosuch:x", "x", server="data")
    assert rc == 2 and "no storage connection named 'nosuch'" in err, err

    missing = copy_job(copier, "slow:missing.bin", "missing.bin")
    ended = wait_for(
        lambda: (now := job_now(copier, missing))["state"] not in ("queued", "running") and now,
        180,
        "the failing copy job to end",
    )
    assert ended["state"] == "failed" and "slow:missing.bin" in ended["error"], ended
    assert "not found" in ended["error"]
    rc, out, _ = hubdata(copier, "status", str(missing["id"]), server="data")
    assert rc == 1 and "not found" in out

    # A hub killed while a copy runs: the job finishes and reports its end once the hub
    # is back, which kept its record.
    survivor = copy_job(copier, "-r", "slow:in", "survived")
    wait_for(lambda: job_now(copier, survivor)["state"] == "running", 180, "the copy to run")
    kill_hub(hub)
    hub.start()
    ended = wait_for(
        lambda: (now := job_now(copier, survivor))["state"] not in ("queued", "running") and now,
        180,
        "the copy job to report its end to the restarted hub",
    )
    assert ended["state"] == "done" and ended["files_done"] == 16, ended

    running = copy_job(copier, "-r", "slow:in", "cancelled")
    wait_for(lambda: job_now(copier, running)["state"] == "running", 180, "the copy to run")
    rc, out, err = hubdata(copier, "cancel", str(running["id"]), server="data")
    assert rc == 0, err
    assert job_now(copier, running)["state"] == "cancelled"
    wait_for(
        lambda: running["slurm_job"] not in jobs_of(hub.prefix + "alice"),
        120,
        "the cancelled copy's Slurm job to leave the queue",
    )


def test_a_copy_job_runs_on_the_machine_type_and_partition_chosen(
    hub: Hub, copier: Session
) -> None:
    jobs = f"/storage/users/{copier.name}/jobs"
    before = len(copier.api("GET", jobs).json()["jobs"])
    base = {"source": "slow:in", "destination": "x", "workdir": "/tmp", "recursive": True}
    for extra, words in (
        ({"machine": "wide"}, "'wide' is for groups: copy-wide, and you are in none"),
        ({"machine": "huge"}, "Unknown machine type 'huge'. Choose one of: small."),
        ({"machine": 3}, "machine"),
        ({"partition": "nosuch"}, "Unknown partition 'nosuch'. Choose one of: debug, long, gpu"),
        ({"partition": "gpu"}, "Partition gpu does not exist on the cluster"),
    ):
        refused = copier.api("POST", jobs, json=base | extra)
        assert refused.status_code == 400 and words in refused.json()["message"], refused.text
    assert len(copier.api("GET", jobs).json()["jobs"]) == before, "nothing recorded or submitted"
    rc, _, err = hubdata(copier, "cp", "--machine", "small", "slow:in/f0.bin", "x", server="data")
    assert rc == 2 and "add --job" in err, err

    job = copy_job(copier, "--machine", "small", "--partition", "long", "-r", "slow:in", "on-long")
    assert (job["machine"], job["partition"]) == ("small", "long"), job
    assert "#SBATCH --partition=long" in batch_script(job["slurm_job"]).splitlines()
    rc, out, _ = hubdata(copier, "jobs", server="data")
    assert rc == 0 and "on small (partition long)" in next(
        line for line in out.splitlines() if line.startswith(f"{job['id']}\t")
    ), out
    page = copier.http.get(f"{hub.url}/hub/storage", timeout=60).text
    assert "small (partition long)" in page
    rc, _, err = hubdata(copier, "cancel", str(job["id"]), server="data")
    assert rc == 0, err
