"""A start that never completes leaves nothing behind: no process, cgroup or mount."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, new_test_root, running_hub, wait_for

from hubstack.system import volumes

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]


@pytest.fixture(scope="module")
def stalled_env() -> Iterator[Path]:
    """An environment whose server runs but never listens."""
    prefix = new_test_root() / "stalled"
    (prefix / "bin").mkdir(parents=True, mode=0o755)
    server = prefix / "bin/jupyterhub-singleuser"
    server.write_text(f"#!{DEFAULT_ENV}/bin/python3\nimport time\ntime.sleep(300)\n")
    server.chmod(0o755)
    # The hub runs a local server through its environment's Python (listen_fd.py).
    python = prefix / "bin/python3"
    python.write_text(f'#!/bin/sh\nexec {DEFAULT_ENV}/bin/python3 "$@"\n')
    python.chmod(0o755)
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(stalled_env: Path) -> Iterator[Hub]:
    overrides = {
        "environments": [{"id": "stalled", "display": "Stalled", "prefix": str(stalled_env)}],
        "backend": {"local": {"start_timeout": "15s"}},
    }
    with running_hub(overrides) as running:
        yield running


def processes_of(account: str) -> str:
    return subprocess.run(
        ["pgrep", "-u", account, "-a"], capture_output=True, text=True, check=False
    ).stdout


def test_a_start_that_times_out_is_undone(hub: Hub) -> None:
    erin = hub.new_user("erin")
    account = f"{hub.prefix}erin"
    assert erin.start("slow").status_code in (201, 202)
    wait_for(lambda: processes_of(account), 60, "the server process to start")

    def settled() -> bool:
        model = erin.model("slow", include_stopped=True)
        return model is not None and not model["pending"] and not model["ready"]

    wait_for(settled, 90, "the start to time out")
    home_page = erin.http.get(f"{hub.url}/hub/home", timeout=60).text
    assert "Your server did not answer within 15s of its start" in home_page, home_page[-3000:]
    wait_for(lambda: not processes_of(account), 30, "no process of the account to remain")
    home = hub.home_base / account
    assert not volumes.is_mounted(home / "volumes/slow")
    assert not volumes.is_mounted(home), "the home is unmounted with its last server"
    assert not Path(f"/sys/fs/cgroup/memory/hubstack/hubstack-{account}-slow").exists()
