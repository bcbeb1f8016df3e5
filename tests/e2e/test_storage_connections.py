"""Storage connections on a real hub, used from real servers as real accounts: hubdata and
fsspec's hub:// against Azurite and moto's S3 server (emulators on loopback).

A user's own S3 connection copies in and out with checksums, resumes after a copy is
killed, finds corrupted files; a champion's read-only Azure connection for a group reads
for its members and refuses writes, its members' servers getting a SAS that the store
refuses writes with, not the key (and STS credentials for a group's S3 connection);
nobody else gets a connection, through the REST API or on disk; a revoked connection is
refused; no secret is in the log, the database, a process's command line or a home."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import DEFAULT_ENV, Hub, Session, running_hub
from storage_emulators import (
    AZURITE,
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Store,
    azurite,
    hubdata,
    moto_s3,
)

pytestmark = [
    pytest.mark.e2e,
    needs_root,
    needs_default_env,
    pytest.mark.skipif(not AZURITE.exists(), reason="run scripts/setup.sh --test (Azurite)"),
]

GROUPS = {"sclab": {"champions": ["sc-carol"], "members": ["sc-alice"]}}
S3_KEY_ID = "AKIA" + secrets.token_hex(8).upper()
S3_SECRET = "s3secret-" + secrets.token_urlsafe(24)
CSV = "x,y\n1,2\n3,4\n"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Store]]:
    with moto_s3() as s3, azurite(tmp_path_factory.mktemp("azurite")) as blob:
        # The stores' own content, made as their owners would (not through the hub).
        code = (
            "import adlfs, s3fs, sys\n"
            "s3 = s3fs.S3FileSystem(key=sys.argv[1], secret='x', endpoint_url=sys.argv[2])\n"
            "s3.mkdir('sc-bucket')\n"
            "az = adlfs.AzureBlobFileSystem(connection_string=sys.argv[3])\n"
            "az.mkdir('sc-lab')\n"
            f"az.pipe_file('sc-lab/shared/table.csv', {CSV.encode()!r})\n"
            # Bigger than the home quota (40M) of the hub below.
            "s3.pipe_file('sc-bucket/alice/huge.bin', bytes(48 * 1024 * 1024))\n"
        )
        subprocess.run(
            [str(DEFAULT_ENV / "bin/python"), "-c", code, "k", s3.endpoint, azure_string(blob)],
            check=True,
            timeout=120,
        )
        yield {"s3": s3, "azure": blob}


def azure_string(blob: Store) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={blob.endpoint};"
    )


@pytest.fixture(scope="module")
def hub(stores: dict[str, Store]) -> Iterator[Hub]:
    # A small home, so that a copy fills it (home volumes are ext4 images: ENOSPC).
    with running_hub({"groups": GROUPS, "policy": {"storage": {"home": "40M"}}}) as running:
        yield running


@pytest.fixture(scope="module")
def alice(hub: Hub) -> Session:
    session = hub.new_user("sc-alice")
    assert session.start().status_code in (201, 202)
    session.wait_ready()
    return session


@pytest.fixture(scope="module")
def carol(hub: Hub) -> Session:
    return hub.new_user("sc-carol")


@pytest.fixture(scope="module")
def bob(hub: Hub) -> Session:
    return hub.new_user("sc-bob")


def s3_connection(stores: dict[str, Store], **extra: Any) -> dict[str, Any]:
    return {
        "name": "mine",
        "kind": "s3-compatible",
        "endpoint": stores["s3"].endpoint,
        "container": "sc-bucket",
        "prefix": "alice",
        "credential": {"access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET},
        **extra,
    }


def in_server(session: Session, code: str) -> Any:
    run = session.run_code(code, timeout=300)
    assert run.status == "ok", run
    return json.loads(run.stdout.strip().splitlines()[-1])


MAKE_FILES = """
import hashlib, json, os
os.chdir(os.path.expanduser('~'))
os.makedirs('data/sub', exist_ok=True)
for i in range(12):
    with open(f'data/sub/f{i}.bin' if i % 2 else f'data/f{i}.bin', 'wb') as out:
        out.write(os.urandom(1500 * (i + 1)))
with open('data/big.bin', 'wb') as out:
    out.write(os.urandom(4 * 1024 * 1024))
print(json.dumps(True))
"""

TREE = """
import hashlib, json, os
def tree(top):
    top = os.path.expanduser(top)
    out = {}
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, top)] = hashlib.sha256(open(p, 'rb').read()).hexdigest()
    return out
"""


def test_bad_connections_are_refused_with_a_message(alice: Session, stores: dict) -> None:
    path = f"/storage/users/{alice.name}/connections"
    for body, words in [
        ({**s3_connection(stores), "kind": "ftp"}, "kind"),
        (s3_connection(stores, prefix="a/../b"), "prefix"),
        (s3_connection(stores, credential={"account_name": "abc"}), "credential"),
        (s3_connection(stores, group="sclab"), "champions"),
        ("not an object", "JSON object"),
    ]:
        resp = alice.api("POST", path, json=body)
        assert resp.status_code in (400, 403), resp.text
        assert words in resp.json()["message"]
        assert S3_SECRET not in resp.text
    copy = {"source": "mine:x", "destination": "x", "workdir": "/"}
    resp = alice.api("POST", f"/storage/users/{alice.name}/jobs", json=copy)
    assert resp.status_code == 400 and "Slurm hub only" in resp.json()["message"]


def test_own_connection_copies_in_and_out_with_checksums(
    hub: Hub, alice: Session, bob: Session, stores: dict
) -> None:
    resp = alice.api("POST", f"/storage/users/{alice.name}/connections", json=s3_connection(stores))
    assert resp.status_code == 201, resp.text
    assert S3_SECRET not in resp.text and S3_KEY_ID not in resp.text
    assert in_server(alice, MAKE_FILES)

    rc, out, err = hubdata(alice, "cp", "-r", "--dry-run", "data", "mine:in")
    assert rc == 0 and "13 files" in out, err
    rc, out, err = hubdata(alice, "cp", "-r", "data", "mine:in")
    assert rc == 0 and "copied 13 files" in out and "checksums verified" in out, err
    rc, out, _ = hubdata(alice, "ls", "mine:in")
    assert "in/big.bin" in out and "in/sub" in out
    rc, out, err = hubdata(alice, "cp", "-r", "mine:in", "back")
    assert rc == 0 and "copied 13 files" in out, err
    same = in_server(alice, TREE + "print(json.dumps(tree('~/data') == tree('~/back')))")
    assert same is True
    rc, out, _ = hubdata(alice, "cp", "-r", "mine:in", "back")
    assert rc == 0 and "copied 0 files" in out, "a rerun copies nothing"

    # pandas through fsspec's hub:// (the server's token fetches the credential).
    code = (
        "import fsspec, json, pandas\n"
        f"with fsspec.open('hub://mine/t.csv', 'w') as f: f.write({CSV!r})\n"
        "print(json.dumps(pandas.read_csv('hub://mine/t.csv')['y'].tolist()))\n"
    )
    assert in_server(alice, code) == [2, 4]

    rc, _, err = hubdata(alice, "ls", "mine:../other")
    assert rc == 2 and "'..'" in err


def test_a_full_home_stops_the_copy_and_keeps_what_was_copied(alice: Session) -> None:
    rc, _, err = hubdata(alice, "cp", "mine:huge.bin", "huge.bin")
    assert rc == 3 and "quota" in err and "free space and run the same command again" in err
    assert in_server(alice, TREE + "print(json.dumps(tree('~/data') == tree('~/back')))")
    leftovers = "import json, os; print(json.dumps(sorted(os.listdir(os.path.expanduser('~')))))"
    assert not [n for n in in_server(alice, leftovers) if "huge" in n], "no partial file left"
    # The server goes on: the space is free again and a copy works.
    rc, _, err = hubdata(alice, "cp", "mine:t.csv", "t.csv")
    assert rc == 0, err


def test_store_errors_are_named(alice: Session, stores: dict[str, Store]) -> None:
    add = f"/storage/users/{alice.name}/connections"
    down = s3_connection(stores, name="down", endpoint="http://127.0.0.1:9")
    nobucket = s3_connection(stores, name="nobucket", container="sc-missing")
    wrongkey = {
        "name": "wrongkey",
        "kind": "azure-blob",
        "endpoint": stores["azure"].endpoint,
        "container": "sc-lab",
        "credential": {"account_name": AZURITE_ACCOUNT, "account_key": "d3Jvbmcga2V5IGhlcmU="},
    }
    for body in (down, nobucket, wrongkey):
        assert alice.api("POST", add, json=body).status_code == 201
    rc, _, err = hubdata(alice, "ls", "down:")
    assert rc == 2 and "127.0.0.1:9" in err, err
    rc, _, err = hubdata(alice, "ls", "nobucket:")
    assert rc == 2 and "nobucket" in err and "does not exist" in err, err
    rc, _, err = hubdata(alice, "ls", "wrongkey:")
    assert rc == 2 and ("Authentication" in err or "authoriz" in err.lower()), err
    assert "Traceback" not in err


def test_killed_copy_resumes_and_corruption_is_found(alice: Session) -> None:
    # The copy is killed once some files are in (the condition, not a delay, decides).
    code = TREE + (
        "import subprocess, sys, signal, time\n"
        "tool = os.path.join(os.path.dirname(sys.executable), 'hubdata')\n"
        "top = os.path.expanduser('~/resumed')\n"
        "def whole(): return [f for _, _, fs in os.walk(top) for f in fs if 'partial' not in f]\n"
        "p = subprocess.Popen([tool, 'cp', '-r', 'mine:in', 'resumed'],\n"
        "    cwd=os.path.expanduser('~'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "deadline = time.monotonic() + 120\n"
        "while p.poll() is None and time.monotonic() < deadline and len(whole()) < 3:\n"
        "    time.sleep(0.01)\n"
        "p.send_signal(signal.SIGKILL)\n"
        "print(json.dumps([p.wait(), len(whole())]))\n"
    )
    status, copied_before = in_server(alice, code)
    rc, out, err = hubdata(alice, "cp", "-r", "mine:in", "resumed")
    assert rc == 0, err
    copied_now = int(out.split("copied ")[1].split()[0])
    assert copied_now == 13 - copied_before, (status, copied_before, out)
    assert in_server(alice, TREE + "print(json.dumps(tree('~/data') == tree('~/resumed')))")
    assert not in_server(
        alice, TREE + "print(json.dumps([k for k in tree('~/resumed') if 'partial' in k]))"
    )

    corrupt = (
        "import json, os\n"
        "p = os.path.expanduser('~/resumed/f0.bin')\n"
        "b = bytearray(open(p, 'rb').read()); b[0] ^= 0xFF; open(p, 'wb').write(b)\n"
        "print(json.dumps(True))\n"
    )
    assert in_server(alice, corrupt)
    rc, out, err = hubdata(alice, "cp", "-r", "mine:in", "resumed")
    assert rc == 0 and "copied 0 files" in out, "same size: only --checksum looks inside"
    rc, out, err = hubdata(alice, "cp", "-r", "--checksum", "mine:in", "resumed")
    assert rc == 0 and "checksum differs: " in err and "resumed/f0.bin" in err
    assert "copied 1 files" in out
    assert in_server(alice, TREE + "print(json.dumps(tree('~/data') == tree('~/resumed')))")


def test_group_connection_is_read_only_for_members(
    hub: Hub, alice: Session, carol: Session, bob: Session, stores: dict
) -> None:
    body = {
        "name": "labdata",
        "kind": "azure-blob",
        "endpoint": stores["azure"].endpoint,
        "container": "sc-lab",
        "prefix": "shared",
        "group": "sclab",
        "mode": "ro",
        "credential": {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    }
    resp = bob.api("POST", f"/storage/users/{bob.name}/connections", json=body)
    assert resp.status_code == 403, "only champions and admins add a group's connections"
    resp = carol.api("POST", f"/storage/users/{carol.name}/connections", json=body)
    assert resp.status_code == 201, resp.text

    names = {
        c["name"]
        for c in alice.api("GET", f"/storage/users/{alice.name}/connections").json()["connections"]
    }
    assert {"mine", "labdata"} <= names
    rc, out, err = hubdata(alice, "ls")
    assert "labdata" in out and "read-only" in out, err
    rc, out, err = hubdata(alice, "cp", "labdata:table.csv", "table.csv")
    assert rc == 0, err
    rc, _, err = hubdata(alice, "cp", "table.csv", "labdata:copy.csv")
    assert rc == 2 and "read-only" in err
    code = (
        "import fsspec, json\n"
        "try:\n"
        "    with fsspec.open('hub://labdata/x.csv', 'w') as f: f.write('no')\n"
        "    print(json.dumps('written'))\n"
        "except PermissionError as e:\n"
        "    print(json.dumps(str(e)))\n"
    )
    assert "read-only" in in_server(alice, code)
    code = (
        "import fsspec, json\n"
        "fs = fsspec.filesystem('hub', connection='labdata')\n"
        "refused = []\n"
        "for write in (lambda: fs.rm('table.csv'), lambda: fs.pipe_file('y', b'1'),\n"
        "              lambda: fs._pipe_file('y', b'1'), lambda: fs.mv('table.csv', 'z')):\n"
        "    try:\n"
        "        write()\n"
        "    except PermissionError:\n"
        "        refused.append(True)\n"
        "print(json.dumps([len(refused), fs.cat('table.csv').decode()]))\n"
    )
    assert in_server(alice, code) == [4, CSV]
    assert (
        in_server(
            alice,
            "import json, pandas; print(json.dumps(len(pandas.read_csv('hub://labdata/table.csv'))))",
        )
        == 2
    )


# In a member's server, as its user could: the credential the hub hands over, used straight
# with adlfs or s3fs, past hubdata's own checks.
HANDED = """
import json, os, requests
api, user = os.environ['JUPYTERHUB_API_URL'], os.environ['JUPYTERHUB_USER']
answer = requests.get(f'{api}/storage/users/{user}/credentials/%s',
    headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']}).json()
"""


def test_members_get_a_token_of_the_mode_never_the_groups_key(alice: Session) -> None:
    """The read-only group connection's account key stays in the hub: the member's server
    gets a SAS that Azurite itself refuses to write with."""
    code = HANDED % "labdata" + (
        "import adlfs\n"
        "fs = adlfs.AzureBlobFileSystem(**answer['storage_options'])\n"
        "read = fs.cat('sc-lab/shared/table.csv').decode()\n"
        "try:\n"
        "    fs.pipe_file('sc-lab/shared/planted.csv', b'no')\n"
        "    wrote = 'written'\n"
        "except Exception as e:\n"
        "    wrote = str(e)\n"
        "print(json.dumps([json.dumps(answer), read, wrote]))\n"
    )
    answer, read, wrote = in_server(alice, code)
    assert AZURITE_KEY not in answer and "AccountKey" not in answer
    assert "sp=rl&" in answer and read == CSV
    assert "AuthorizationPermissionMismatch" in wrote, wrote


def test_s3_group_members_get_temporary_credentials(
    alice: Session, carol: Session, stores: dict
) -> None:
    """A group's S3 key pair stays in the hub: members get STS credentials (moto's STS; it
    does not enforce their policy, which tests/system/test_storage_token_policy.py checks
    with moto's IAM checks on), and a group connection to a store without STS is refused
    with the reason."""
    body = s3_connection(stores, name="labs3", prefix="lab", group="sclab", mode="rw")
    resp = carol.api("POST", f"/storage/users/{carol.name}/connections", json=body)
    assert resp.status_code == 201, resp.text
    answer = in_server(alice, HANDED % "labs3" + "print(json.dumps(answer))\n")
    options = answer["storage_options"]
    assert S3_SECRET not in json.dumps(answer) and options["key"] != S3_KEY_ID
    assert options["token"], "temporary credentials come with a session token"
    rc, out, err = hubdata(alice, "cp", "-r", "data", "labs3:in")
    assert rc == 0 and "copied" in out, err
    rc, out, err = hubdata(alice, "ls", "labs3:in")
    assert rc == 0 and "big.bin" in out, err

    # Azurite's blob endpoint speaks no STS (nor S3).
    body = s3_connection(stores, name="nosts", group="sclab", endpoint=stores["azure"].endpoint)
    resp = carol.api("POST", f"/storage/users/{carol.name}/connections", json=body)
    assert resp.status_code == 201, resp.text
    rc, _, err = hubdata(alice, "ls", "nosts:")
    assert rc == 2 and "no temporary credentials" in err and "STS" in err, err
    assert S3_SECRET not in err


def test_file_browser_browses_uploads_and_downloads(alice: Session) -> None:
    """JupyterLab's file browser (jupyter-fsspec) in a real server, through the proxy as
    its user: the server's start wrote one source per connection, by name only."""
    alice.stop()
    assert alice.start().status_code in (201, 202)
    alice.wait_ready()
    base = alice.server_url() + "jupyter_fsspec/"
    headers = {"Authorization": f"token {alice.token}", "X-JFS-Client": "non-browser"}

    config = requests.get(base + "config", headers=headers, timeout=60)
    assert config.status_code == 200, config.text
    sources = {s["name"]: s for s in config.json()["content"]}
    assert {"mine", "labdata"} <= set(sources), sources
    errors = {name: sources[name].get("error") for name in ("mine", "labdata")}
    assert errors == {"mine": None, "labdata": None}, errors
    assert S3_SECRET not in config.text and AZURITE_KEY not in config.text

    listed = requests.get(
        base + "files",
        params={"key": "labdata", "item_path": "labdata"},
        headers=headers,
        timeout=60,
    )
    assert listed.status_code == 200, listed.text
    assert "labdata/table.csv" in [f["name"] for f in listed.json()["content"]]
    got = requests.get(
        base + "files/contents",
        params={"key": "labdata", "item_path": "labdata/table.csv"},
        headers=headers,
        timeout=60,
    )
    assert got.status_code == 200 and got.text == CSV

    for key, status in (("mine", 201), ("labdata", 500)):
        sent = requests.post(
            base + "files/contents",
            params={"key": key, "item_path": f"{key}/browser/up.txt"},
            data=b"from the browser",
            headers=headers,
            timeout=60,
        )
        assert sent.status_code == status, sent.text
    assert "read-only" in sent.text, "jupyter-fsspec answers a refused write with 500"
    rc, out, err = hubdata(alice, "ls", "mine:browser")
    assert rc == 0 and "browser/up.txt" in out, err
    mode = in_server(
        alice,
        "import json, os, stat\n"
        "from jupyter_core.paths import jupyter_config_dir\n"
        "p = os.path.join(jupyter_config_dir(), 'jupyter-fsspec.yaml')\n"
        "print(json.dumps(stat.S_IMODE(os.stat(p).st_mode)))\n",
    )
    assert mode == 0o600


def test_storage_page_lists_and_refuses_bad_input(hub: Hub, carol: Session) -> None:
    page = carol.http.get(f"{hub.url}/hub/storage", timeout=60)
    assert page.status_code == 200 and "labdata" in page.text and "read-only" in page.text
    assert AZURITE_KEY not in page.text
    xsrf = carol.http.cookies.get("_xsrf", path="/hub/")
    form = {"name": "Bad Name", "kind": "s3", "container": "b-1", "_xsrf": xsrf}
    bad = carol.http.post(f"{hub.url}/hub/storage", data=form, timeout=60)
    assert bad.status_code == 400 and "name:" in bad.text


def test_nobody_else_gets_a_connection(hub: Hub, alice: Session, bob: Session) -> None:
    listing = bob.api("GET", f"/storage/users/{bob.name}/connections").json()["connections"]
    assert listing == []
    assert bob.api("GET", f"/storage/users/{bob.name}/credentials/mine").status_code == 404
    assert bob.api("GET", f"/storage/users/{bob.name}/credentials/labdata").status_code == 404
    for path in ("connections", "credentials/mine"):
        resp = bob.api("GET", f"/storage/users/{alice.name}/{path}")
        assert resp.status_code in (403, 404), resp.text
    admin = hub.login("admin", hub.admin_password)
    resp = admin.api("GET", f"/storage/users/{alice.name}/credentials/mine")
    assert resp.status_code == 403, "not even an admin gets a user's credential"
    listing = admin.api("GET", "/storage/users/admin/connections?all=1")
    assert "mine" in {c["name"] for c in listing.json()["connections"]}
    assert S3_SECRET not in listing.text
    assert bob.api("GET", f"/storage/users/{bob.name}/connections?all=1").json() == {
        "connections": []
    }, "only admins see all"
    key = hub.data_dir / "storage-connections.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == 0
    code = (
        "import json\n"
        f"try: open({str(key)!r}).read(); print(json.dumps('read'))\n"
        "except OSError as e: print(json.dumps(type(e).__name__))\n"
    )
    assert in_server(alice, code) == "PermissionError"


def test_revoked_connection_is_refused(hub: Hub, alice: Session, carol: Session) -> None:
    found = carol.api("GET", f"/storage/users/{carol.name}/connections").json()["connections"]
    (labdata,) = [c for c in found if c["name"] == "labdata"]
    resp = alice.api("DELETE", f"/storage/users/{alice.name}/connections/{labdata['id']}")
    assert resp.status_code == 403, "a member does not revoke the group's connection"
    resp = carol.api("DELETE", f"/storage/users/{carol.name}/connections/{labdata['id']}")
    assert resp.status_code == 204, resp.text
    rc, _, err = hubdata(alice, "ls", "labdata:")
    assert rc == 2 and "revoked by sc-carol" in err


def test_connections_survive_kill_of_the_hub(hub: Hub, alice: Session) -> None:
    kill_hub(hub)
    hub.start()
    rc, out, err = hubdata(alice, "cp", "mine:t.csv", "after-restart.csv")
    assert rc == 0 and "copied 1 files" in out, err
    rc, _, err = hubdata(alice, "ls", "labdata:")
    assert rc == 2 and "revoked" in err


def test_no_secret_in_clear_anywhere(hub: Hub, alice: Session) -> None:
    secrets_ = [S3_SECRET.encode(), AZURITE_KEY.encode()]
    places = [hub.log_path, *hub.data_dir.glob("*.sqlite*")]
    for place in places:
        data = place.read_bytes()
        assert not any(s in data for s in secrets_), f"a secret in {place}"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert S3_SECRET.encode() not in cmdline, f"a secret on the command line of {proc}"
    home = hub.home_base
    for directory, _, files in os.walk(home):
        for name in files:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
                assert S3_SECRET.encode() not in path.read_bytes(), f"a secret in {path}"
