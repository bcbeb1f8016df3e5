"""Interfaces besides JupyterLab on a real hub: VS Code (code-server through
jupyter-server-proxy) and Voilà open in headless Chromium as the user, VS Code's process
runs in the server's cgroup as the user on a private socket, and an R notebook cell runs
in Debian's IRkernel.

One ``hubstack up`` hub as root (real accounts, cgroups, volumes) whose environment
"tools" is the default environment offering lab, vscode and voila; "python" is the same
prefix offering JupyterLab only. Screenshots go to ``artifacts/browser/``. RStudio is not
here: no package source this machine uses ships rstudio-server.
"""

from __future__ import annotations

import json
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from chromium import ARTIFACTS, chromium, needs_chromium
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, Session, execute, running_hub, wait_for
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_root, needs_default_env, needs_chromium]

CODE_SERVER = DEFAULT_ENV / "bin/code-server"
R_KERNEL = Path("/usr/share/jupyter/kernels/ir/kernel.json")
needs_code_server = pytest.mark.skipif(
    not CODE_SERVER.exists(), reason="code-server is not installed (scripts/setup.sh --vscode)"
)
needs_r = pytest.mark.skipif(
    not R_KERNEL.exists(), reason="IRkernel is not installed (scripts/setup.sh --r)"
)

START_TIMEOUT_MS = 180_000
USER = "iris"
ENVIRONMENTS = [
    {"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)},
    {
        "id": "tools",
        "display": "Python tools",
        "prefix": str(DEFAULT_ENV),
        "interfaces": ["lab", "vscode", "voila"],
    },
]
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": "print('dashboard total', sum(range(10)))",
        }
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"environments": ENVIRONMENTS}) as running:
        yield running


@pytest.fixture(scope="module")
def iris(hub: Hub) -> tuple[Session, str]:
    password = hub.add_user(USER)
    return hub.login(USER, password), password


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(hub: Hub, iris: tuple[Session, str], browser: Browser) -> Iterator[Page]:
    """Iris's browser, logged in through the login form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", USER)
    page.fill("#password_input", iris[1])
    page.click("#login_submit")
    page.wait_for_url("**/hub/spawn")
    try:
        yield page
    finally:
        context.close()


def account_of(hub: Hub) -> str:
    return f"{hub.prefix}{USER}"


def processes(uid: int, word: bytes) -> list[int]:
    """The processes of ``uid`` whose command line has ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid and word in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_an_interface_the_environment_does_not_offer_is_refused(
    iris: tuple[Session, str],
) -> None:
    session = iris[0]
    refused = session.start("", {"environment": "python", "interface": "vscode"})
    assert refused.status_code == 400, refused.text
    assert "does not offer the interface 'vscode'; it offers: JupyterLab (lab)" in refused.text
    assert session.model() is None


@needs_code_server
def test_vscode_opens_through_the_proxy_as_the_user_inside_the_servers_limits(
    hub: Hub, iris: tuple[Session, str], page: Page
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    session = iris[0]
    page.goto(f"{hub.url}/hub/spawn")
    vscode = page.locator("#hs-interface-vscode")
    expect(vscode).to_be_hidden()  # Python 3, checked first, offers JupyterLab only
    page.get_by_text("Python tools", exact=True).click()
    expect(vscode).to_be_visible()
    expect(page.locator("#hs-interface-lab")).to_be_checked()
    page.get_by_text("VS Code", exact=True).click()
    page.screenshot(path=str(ARTIFACTS / "interfaces-form.png"), full_page=True)
    page.get_by_role("button", name="Start").click()

    page.wait_for_url(f"**/user/{USER}/vscode/**", timeout=START_TIMEOUT_MS)
    expect(page.locator(".monaco-workbench")).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(page.locator(".explorer-folders-view, .explorer-viewlet").first).to_be_visible(
        timeout=START_TIMEOUT_MS
    )
    page.screenshot(path=str(ARTIFACTS / "vscode.png"), full_page=True)
    model = session.model()
    assert model is not None and model["user_options"]["interface"] == "vscode", model

    uid = pwd.getpwnam(account_of(hub)).pw_uid
    [code_server, *_] = wait_for(
        lambda: processes(uid, b"code-server"), 30, "code-server to run as the user"
    )
    unit = f"/hubstack/hubstack-{account_of(hub)}-default"
    cgroups = Path(f"/proc/{code_server}/cgroup").read_text().splitlines()
    assert any(line.endswith(unit) for line in cgroups), cgroups  # the server's limits
    cmdline = Path(f"/proc/{code_server}/cmdline").read_bytes().split(b"\0")
    # On a socket no other account can reach, never on a TCP port (it has no password).
    assert b"--port" not in b" ".join(cmdline), cmdline
    socket = Path(cmdline[cmdline.index(b"--socket") + 1].decode())
    where = Path(f"/proc/{code_server}/root{socket.parent}").stat()  # its mount namespace
    assert (where.st_uid, where.st_mode & 0o077) == (uid, 0), oct(where.st_mode)
    page.goto(f"{hub.url}/hub/home")  # VS Code's page would keep reconnecting
    session.stop()
    wait_for(lambda: not processes(uid, b"code-server"), 30, "code-server to end with it")


@needs_r
def test_voila_renders_a_notebook_and_an_r_cell_runs(
    hub: Hub, iris: tuple[Session, str], page: Page
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    session = iris[0]
    started = session.start("dash", {"environment": "tools", "interface": "voila"})
    assert started.status_code in (201, 202), started.text
    session.wait_ready("dash")
    base = session.server_url("dash")
    headers = {"Authorization": f"token {session.token}"}
    saved = requests.put(
        f"{base}api/contents/dash.ipynb",
        headers=headers,
        json={"type": "notebook", "format": "json", "content": NOTEBOOK},
        timeout=60,
    )
    assert saved.status_code in (200, 201), saved.text

    page.goto(base)  # the server sends its root to the interface's page: Voilà's list
    page.wait_for_url(f"**/user/{USER}/dash/voila", timeout=START_TIMEOUT_MS)
    expect(page.get_by_text("dash.ipynb").first).to_be_visible(timeout=START_TIMEOUT_MS)
    page.goto(f"{base}voila/render/dash.ipynb")
    expect(page.get_by_text("dashboard total 45")).to_be_visible(timeout=START_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "voila.png"), full_page=True)

    kernel = requests.post(f"{base}api/kernels", headers=headers, json={"name": "ir"}, timeout=60)
    assert kernel.status_code == 201, kernel.text
    cell = execute(
        base, kernel.json()["id"], session.token, 'cat(sum(1:10), Sys.getenv("USER"))', 120
    )
    assert (cell.status, cell.stdout) == ("ok", f"55 {account_of(hub)}"), cell
    assert json.loads(R_KERNEL.read_text())["language"] == "R"
    session.stop("dash", remove=True)
