"""The other ways to run the hub: dev mode (not root) and machine accounts through PAM."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from hubtest import Hub, new_test_root, remove_later, running_hub

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]
REPO = Path(__file__).parents[2]


def uv() -> str:
    return shutil.which("uv") or "/opt/hubstack/tools/bin/uv"


@pytest.fixture
def unix_account() -> Iterator[tuple[str, Path]]:
    """A throwaway machine account with a home under a traversable test root."""
    name = "hsx" + secrets.token_hex(3)
    home = new_test_root() / name
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), name], check=True)
    try:
        yield name, home
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def portable_python() -> Iterator[str]:
    """hubstack installed where any account can run it (the checkout may be private)."""
    venv = new_test_root() / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_LINK_MODE": "copy"}
    subprocess.run([uv(), "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True)
    subprocess.run(
        [uv(), "pip", "install", "-q", "--python", str(venv / "bin/python"), str(REPO)],
        check=True,
        env=env,
    )
    subprocess.run(["chmod", "-R", "a+rX", str(venv.parent)], check=True)
    try:
        yield str(venv / "bin/python")
    finally:
        remove_later(venv.parent)


def test_dev_mode_runs_servers_as_the_invoking_account_and_says_so(
    portable_python: str, unix_account: tuple[str, Path]
) -> None:
    account, home = unix_account
    root = home / "hub"
    root.mkdir()
    hub = Hub(root, python=portable_python, run_as=account)
    shutil.chown(root, account)
    for path in root.rglob("*"):
        shutil.chown(path, account)
    try:
        hub.start()
        assert "dev mode: not running as root" in hub.log()
        erin = hub.new_user("erin")
        page = erin.http.get(f"{hub.url}/hub/home", timeout=30).content.decode()
        assert "Dev mode" in page and "no isolation" in page
        assert erin.start("work").status_code in (201, 202)
        erin.wait_ready("work")
        run = erin.run_code("import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name)", "work")
        assert run.stdout.strip() == account
        erin.stop("work")
    finally:
        hub.cleanup()


def test_pam_logs_in_machine_accounts_and_runs_servers_as_them(
    unix_account: tuple[str, Path],
) -> None:
    account, home = unix_account
    password = secrets.token_urlsafe(12)
    subprocess.run(["chpasswd"], input=f"{account}:{password}", text=True, check=True)
    with running_hub({"auth": {"type": "pam"}, "hub": {"admin_users": [account]}}) as hub:
        session = hub.login(account, password)
        assert session.start().status_code in (201, 202)
        session.wait_ready()
        run = session.run_code(
            "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.environ['HOME'],"
            " os.environ['HUBSTACK_VOLUME'])"
        )
        name, run_home, volume = run.stdout.split()
        assert (name, run_home) == (account, str(home))
        assert volume == f"{home}/volumes/default"
        session.stop()
        assert hub.cli("add-user", "someone").returncode != 0, "PAM hubs have no built-in accounts"
