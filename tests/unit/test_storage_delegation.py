"""What a member's server gets for a group's storage connection: a SAS or STS token the
store limits to the connection's mode, made from the group's key, never the key itself.
That the store refuses a member's write with it: tests/e2e/test_storage_connections.py."""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest

from hubstack.storage import delegation
from hubstack.storage.delegation import GroupConnection

KEY = "a2V5LW9mLXRoZS1ncm91cHMtYWNjb3VudC1ub3QtZm9yLW1lbWJlcnM="
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def azure(mode: str, endpoint: str | None = None, **credential: str) -> GroupConnection:
    given = credential or {"account_name": "acct", "account_key": KEY}
    return GroupConnection(1, "azure-blob", "lab", "shared", endpoint, mode, given)


@pytest.mark.parametrize(
    ("mode", "endpoint", "permissions", "protocol"),
    [
        ("ro", None, "rl", ["https"]),
        ("rw", None, "racwdl", ["https"]),
        ("ro", "https://blob.example.org/acct", "rl", ["https"]),
        ("ro", "http://127.0.0.1:10000/acct", "rl", None),
    ],
)
def test_azure_members_get_a_container_sas_of_the_mode(
    mode: str, endpoint: str | None, permissions: str, protocol: list[str] | None
) -> None:
    handed = delegation.azure_sas(azure(mode, endpoint), NOW, 3600)
    assert set(handed) == {"account_name", "sas_token"} and KEY not in str(handed)
    fields = parse_qs(handed["sas_token"])
    assert fields["sp"] == [permissions] and fields["sr"] == ["c"]
    assert fields.get("spr") == protocol
    assert fields["se"] == ["2026-12-07T10:00:00Z"]
    assert fields["st"] == [f"{NOW - timedelta(minutes=5):%Y-%m-%dT%H:%M:%SZ}"]


def test_a_group_sas_is_handed_out_as_it_is_if_it_keeps_the_mode() -> None:
    given = {"account_name": "acct", "sas_token": "sv=2024-11-04&sp=rl&sr=c&sig=x"}
    assert delegation.azure_sas(azure("ro", **given), NOW, 3600) == given
    # Kept before read-only connections were checked for it when added.
    writer = given | {"sas_token": "sv=2024-11-04&sp=rwl&sr=c&sig=x"}
    with pytest.raises(delegation.Refused, match="sp=rwl"):
        delegation.azure_sas(azure("ro", **writer), NOW, 3600)


@pytest.mark.parametrize(
    ("prefix", "mode", "objects", "actions"),
    [
        ("", "ro", "arn:aws:s3:::bkt/*", ["s3:GetObject"]),
        ("a/b", "ro", ["arn:aws:s3:::bkt/a/b", "arn:aws:s3:::bkt/a/b/*"], ["s3:GetObject"]),
        ("a", "rw", ["arn:aws:s3:::bkt/a", "arn:aws:s3:::bkt/a/*"], list(delegation.S3_WRITE)),
    ],
)
def test_s3_policy_is_the_connections_objects_and_mode(
    prefix: str, mode: str, objects: str | list[str], actions: list[str]
) -> None:
    bucket, keys = delegation.s3_policy("bkt", prefix, mode)["Statement"]
    assert bucket["Resource"] == "arn:aws:s3:::bkt"
    assert {"s3:ListBucket", "s3:GetBucketLocation"} <= set(bucket["Action"])
    assert ("s3:ListBucketMultipartUploads" in bucket["Action"]) == (mode == "rw")
    assert keys["Resource"] == objects and keys["Action"] == actions
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in (bucket, keys))


@pytest.mark.parametrize(
    ("user", "name"),
    [("alice", "hub-alice"), ("a b/c", "hub-a_b_c"), ("x" * 40, "hub-" + "x" * 28)],
)
def test_federation_name_is_what_sts_takes(user: str, name: str) -> None:
    assert delegation.federation_name(user) == name


def test_s3_tokens_are_reused_for_half_their_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []

    def fetch(group: GroupConnection, user: str, lifetime: int) -> dict[str, Any]:
        calls.append((group.id, user))
        return {"access_key_id": f"ASIA{len(calls)}"}

    clock = [1000.0]
    monkeypatch.setattr(delegation.time, "monotonic", lambda: clock[0])
    tokens = delegation.Tokens(fetch)
    group = GroupConnection(7, "s3", "bkt", "", None, "ro", {})
    assert tokens.get(group, "alice", 3600) == {"access_key_id": "ASIA1"}
    clock[0] += 1799
    assert tokens.get(group, "alice", 3600) == {"access_key_id": "ASIA1"}
    assert tokens.get(group, "bob", 3600) == {"access_key_id": "ASIA2"}, "each member his own"
    clock[0] += 2
    assert tokens.get(group, "alice", 3600) == {"access_key_id": "ASIA3"}
    assert calls == [(7, "alice"), (7, "bob"), (7, "alice")]


def test_a_refusal_is_remembered_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fetch(group: GroupConnection, user: str, lifetime: int) -> dict[str, Any]:
        calls.append(user)
        raise delegation.Refused(f"no STS ({len(calls)})")

    clock = [1000.0]
    monkeypatch.setattr(delegation.time, "monotonic", lambda: clock[0])
    tokens = delegation.Tokens(fetch)
    group = GroupConnection(7, "s3", "bkt", "", None, "ro", {})
    for _ in range(3):
        with pytest.raises(delegation.Refused, match=r"no STS \(1\)"):
            tokens.get(group, "alice", 3600)
    clock[0] += delegation.REFUSAL_KEPT + 1
    with pytest.raises(delegation.Refused, match=r"no STS \(2\)"):
        tokens.get(group, "alice", 3600)
    assert calls == ["alice", "alice"]


def test_s3_tokens_come_from_threads_of_their_own() -> None:
    threads: list[str] = []

    def fetch(group: GroupConnection, user: str, lifetime: int) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"access_key_id": "ASIA1"}

    group = GroupConnection(7, "s3", "bkt", "", None, "ro", {})
    handed = asyncio.run(delegation.for_member(group, "alice", 3600, delegation.Tokens(fetch)))
    assert handed == {"access_key_id": "ASIA1"}
    assert threads[0].startswith("hubstack-sts")


def test_an_unreachable_sts_is_named() -> None:
    """A store whose endpoint is down: the member is told so, and not the key."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    credential = {"access_key_id": "AKIAX", "secret_access_key": KEY}
    group = GroupConnection(
        1, "s3-compatible", "bkt", "", f"http://127.0.0.1:{port}", "ro", credential
    )
    with pytest.raises(delegation.Refused, match="its STS could not be reached") as refused:
        delegation.s3_token(group, "alice", 3600)
    assert KEY not in str(refused.value)
