"""End to end on a real hub: login, spawn, limits, storage, isolation, policy, failures."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, wait_for

from hubstack.system import tool, volumes

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]


def unix(hub: Hub, user: str) -> str:
    return f"{hub.prefix}{user}"


def cgroup_dir(controller: str, hub: Hub, user: str, label: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/hubstack/hubstack-{unix(hub, user)}-{label}")


def volume_image(hub: Hub, user: str, label: str) -> Path:
    return hub.data_dir / "storage/servers" / unix(hub, user) / f"{label}.img"


def xsrf(session: Session) -> str:
    return session.http.cookies.get("_xsrf", path="/hub/")


def test_login_form_refuses_a_wrong_password(hub: Hub, alice: Session) -> None:
    http = requests.Session()
    http.get(f"{hub.url}/hub/login", timeout=30)
    resp = http.post(
        f"{hub.url}/hub/login",
        data={"username": "alice", "password": "wrong", "_xsrf": http.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 403
    assert "Invalid username or password" in resp.text


def test_spawn_form_lists_machines_and_environments(hub: Hub, alice: Session) -> None:
    page = alice.http.get(f"{hub.url}/hub/spawn/alice/formcheck", timeout=30)
    assert page.status_code == 200
    html = page.content.decode()  # JupyterHub sends no charset; the page is UTF-8
    for text in ("Small", "1 CPU · 1 GB RAM", "Tiny", "0.5 CPU", "Python 3"):
        assert text in html
    alice.api("DELETE", "/users/alice/servers/formcheck", json={"remove": True})


def test_spawn_through_the_form_runs_as_the_users_account_with_limits(
    hub: Hub, alice: Session
) -> None:
    url = f"{hub.url}/hub/spawn/alice/viaform"
    alice.http.get(url, timeout=30)
    resp = alice.http.post(
        url,
        data={"machine": "tiny", "environment": "python", "_xsrf": xsrf(alice)},
        allow_redirects=False,
        timeout=60,
    )
    assert resp.status_code == 302, resp.text[-2000:]
    alice.wait_ready("viaform")
    model = alice.model("viaform")
    assert model is not None
    assert model["user_options"] == {"machine": "tiny", "environment": "python"}

    run = alice.run_code(
        "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name)\n"
        "print(open('/proc/self/cgroup').read())",
        "viaform",
    )
    assert run.status == "ok", run
    account, *cgroups = run.stdout.split()
    assert account == unix(hub, "alice")
    unit = f"hubstack-{unix(hub, 'alice')}-viaform"
    assert any(line.endswith(f":memory:/hubstack/{unit}") for line in cgroups), (
        "the kernel runs inside the server's cgroup"
    )
    memory = cgroup_dir("memory", hub, "alice", "viaform")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 400 * 2**20
    cpu = cgroup_dir("cpu", hub, "alice", "viaform")
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50000
    pids = cgroup_dir("pids", hub, "alice", "viaform")
    assert (pids / "pids.max").read_text().strip() == "1024"
    alice.stop("viaform", remove=True)
    assert not memory.exists(), "the server's cgroup must go when it stops"


def test_spawn_through_the_api_with_user_options(hub: Hub, alice: Session) -> None:
    resp = alice.start("viaapi", {"machine": "small", "environment": "python"})
    assert resp.status_code in (201, 202), resp.text
    alice.wait_ready("viaapi")
    run = alice.run_code("print(6 * 7)", "viaapi")
    assert run.status == "ok" and run.stdout.strip() == "42"
    limit = cgroup_dir("memory", hub, "alice", "viaapi") / "memory.limit_in_bytes"
    assert int(limit.read_text()) == 2**30
    alice.stop("viaapi", remove=True)


def test_tampered_options_are_refused_with_400(hub: Hub, alice: Session) -> None:
    for options, expected in (
        ({"machine": "huge"}, "Unknown machine type 'huge'"),
        ({"machine": "small", "cpu": 64}, "Unknown option 'cpu'"),
        ({"environment": ["python"]}, "must be given as a string"),
    ):
        resp = alice.start("", options)
        assert resp.status_code == 400, resp.text
        assert expected in resp.json()["message"]
        assert alice.model("") is None, "nothing may start from a refused request"

    url = f"{hub.url}/hub/spawn/alice"
    alice.http.get(url, timeout=30)
    resp = alice.http.post(
        url,
        data={"machine": "small", "environment": "python", "cpu": "64", "_xsrf": xsrf(alice)},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 400
    assert "Unknown option" in resp.text and "cpu" in resp.text
    assert alice.model("") is None


def test_named_server_rules_and_count_are_enforced(hub: Hub, bob: Session) -> None:
    for name in ("Bad_Name", "x" * 21, "default", "-lead"):
        resp = bob.api("PUT", f"/users/bob/servers/{name}", json={})
        assert resp.status_code == 400, (name, resp.text)
        assert "not allowed" in resp.json()["message"] or "reserved" in resp.json()["message"]
    for name in ("one", "two"):
        assert bob.api("PUT", f"/users/bob/servers/{name}", json={}).status_code == 201
    resp = bob.start("three")
    assert resp.status_code == 400
    assert resp.json()["message"] == (
        "You already have 2 named servers (the maximum); delete one to create another."
    )
    for name in ("one", "two"):
        assert bob.api("DELETE", f"/users/bob/servers/{name}", json={"remove": True}).ok


def test_memory_limit_kills_the_process_and_the_user_is_told(hub: Hub, alice: Session) -> None:
    assert alice.start("hungry", {"machine": "tiny"}).status_code in (201, 202)
    alice.wait_ready("hungry")
    run = alice.run_code(
        "b = bytearray(900 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')",
        "hungry",
    )
    assert run.status == "died", run
    assert "survived" not in run.stdout

    def notice_shown() -> bool:
        home = alice.http.get(f"{hub.url}/hub/home", timeout=30).text
        return "ran out of memory (limit 400M)" in home

    wait_for(notice_shown, 60, "the out-of-memory notice on the home page")
    alice.stop("hungry", remove=True)


def test_a_server_that_cannot_start_explains_why(hub: Hub, alice: Session) -> None:
    resp = alice.start("starved", {"machine": "starved"})
    events = alice.progress("starved") if resp.status_code == 202 else []
    message = resp.json()["message"] if resp.status_code >= 400 else events[-1]["message"]
    assert "ran out of memory (limit 16M)" in message, (resp.status_code, resp.text, events)
    events = alice.progress("starved")
    assert events[-1]["failed"] and "ran out of memory (limit 16M)" in events[-1]["message"]
    page = alice.http.get(f"{hub.url}/hub/spawn-pending/alice/starved", timeout=30)
    assert "ran out of memory (limit 16M)" in page.content.decode()

    resp = alice.start("broken", {"environment": "broken"})
    message = resp.json()["message"] if resp.status_code >= 400 else alice.progress("broken")
    assert "/opt/hubstack/envs/missing/bin/jupyterhub-singleuser is missing" in str(message)
    for name in ("starved", "broken"):
        alice.api("DELETE", f"/users/alice/servers/{name}", json={"remove": True})


def test_volume_is_hard_limited_kept_on_stop_and_removed_on_delete(
    hub: Hub, alice: Session
) -> None:
    assert alice.start("data").status_code in (201, 202)
    alice.wait_ready("data")
    fill = (
        "import errno, os\n"
        "path = os.path.join(os.environ['HUBSTACK_VOLUME'], 'big')\n"
        "try:\n"
        "    with open(path, 'wb') as f:\n"
        "        for _ in range(200):\n"
        "            f.write(b'0' * 2**20)\n"
        "            f.flush()\n"
        "            os.fsync(f.fileno())\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], e.strerror)\n"
        "os.remove(path)\n"
        "open(os.path.join(os.environ['HUBSTACK_VOLUME'], 'keep.txt'), 'w').write('kept')\n"
    )
    run = alice.run_code(fill, "data")
    assert run.stdout.strip() == "ENOSPC No space left on device", run
    image = volume_image(hub, "alice", "data")
    assert image.exists()

    alice.stop("data")
    assert image.exists(), "stopping keeps the volume"
    assert alice.start("data").status_code in (201, 202)
    alice.wait_ready("data")
    run = alice.run_code(
        "import os; print(open(os.path.join(os.environ['HUBSTACK_VOLUME'], 'keep.txt')).read())",
        "data",
    )
    assert run.stdout.strip() == "kept", run

    alice.stop("data", remove=True)
    wait_for(lambda: not image.exists(), 30, "the deleted server's volume to be removed")
    assert alice.start("data").status_code in (201, 202)
    alice.wait_ready("data")
    run = alice.run_code("import os; print(os.listdir(os.environ['HUBSTACK_VOLUME']))", "data")
    assert "keep.txt" not in run.stdout, "a re-created server starts with an empty volume"
    alice.stop("data", remove=True)


def test_a_start_right_after_a_stop_waits_for_the_previous_storage(hub: Hub, bob: Session) -> None:
    """A server stopped with a kernel running and started again at once from the spawn
    form, while another mount namespace (one a build made, say) still holds its volume and
    home: the start waits for them to be released, never mounting them twice, then runs."""
    assert bob.start("again").status_code in (201, 202)
    bob.wait_ready("again")
    headers = {"Authorization": f"token {bob.token}"}
    kernel = requests.post(f"{bob.server_url('again')}api/kernels", headers=headers, timeout=60)
    kernel.raise_for_status()
    image = volume_image(hub, "bob", "again")
    ours = os.readlink("/proc/self/ns/mnt")
    holder = subprocess.Popen(
        [tool("unshare"), "--mount", "--propagation", "private", "--", tool("cat")],
        stdin=subprocess.PIPE,
    )
    try:
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/mnt") != ours, 30, "a namespace")
        assert bob.api("DELETE", bob.server_path("again")).status_code == 204
        url = f"{hub.url}/hub/spawn/bob/again"
        bob.http.get(url, timeout=30)
        form = {"machine": "small", "environment": "python", "_xsrf": xsrf(bob)}
        resp = bob.http.post(url, data=form, allow_redirects=False, timeout=60)
        assert resp.status_code == 302, resp.text[-2000:]
        waiting = "Waiting for your previous server's storage to be released"
        events = bob.progress("again", watch=lambda event: event.get("message") == waiting)
        assert events[-1].get("message") == waiting, events
        assert volumes.is_held(image) and not volumes.is_in_use(image)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    bob.wait_ready("again")
    run = bob.run_code("import os; print(os.environ['HUBSTACK_VOLUME'])", "again")
    assert run.status == "ok", run
    bob.stop("again", remove=True)


def test_users_cannot_read_each_others_files(hub: Hub, alice: Session, bob: Session) -> None:
    assert alice.start("private").status_code in (201, 202)
    alice.wait_ready("private")
    run = alice.run_code("open('secret.txt', 'w').write('mine'); print('ok')", "private")
    assert run.stdout.strip() == "ok"
    assert bob.start("snoop").status_code in (201, 202)
    bob.wait_ready("snoop")
    alice_home = hub.home_base / unix(hub, "alice")
    run = bob.run_code(
        f"try:\n    print(open('{alice_home}/secret.txt').read())\n"
        f"except PermissionError:\n    print('denied')\n"
        f"try:\n    print(open('{alice_home}/volumes/private/x', 'w'))\n"
        f"except PermissionError:\n    print('denied')\n",
        "snoop",
    )
    assert run.stdout.split() == ["denied", "denied"], run
    alice.stop("private", remove=True)
    bob.stop("snoop", remove=True)


def test_admin_password_is_printed_once_and_can_be_reset(hub: Hub) -> None:
    assert hub.admin_password, "the first start prints the admin password"
    hub.login("admin", hub.admin_password)
    result = hub.cli("reset-password", "admin")
    assert result.returncode == 0, result.stderr
    new = re.search(r": (\S+)$", result.stdout.strip())
    assert new is not None
    hub.login("admin", new.group(1))
    assert hub.cli("reset-password", "nobody-here").returncode == 1
