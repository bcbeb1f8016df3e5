"""The session policy a member's STS token for a group's S3 connection carries
(``hubstack.storage.delegation.s3_policy``), checked by a store that enforces IAM: moto's
S3 server with its IAM checks on, the policy given to a user of its own, and that user's
key used by hubdata's copy engine and s3fs in the default environment, as in a member's
server. Read-only: the connection's prefix lists, reads and copies in; writing and
removing there, and anything outside the prefix, are refused by the store. Read-write:
copies out too, a multipart upload included, still nothing outside the prefix.
moto's STS does not bind its tokens to the policy; the hub's calls to STS are exercised in
tests/e2e/test_storage_connections.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env
from hubtest import DEFAULT_ENV
from storage_emulators import Store, moto_s3

from hubstack.storage.delegation import s3_policy

pytestmark = [needs_default_env]

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}

MEMBER = """
import json, os, sys
from fsspec.implementations.local import LocalFileSystem
from hubstack_data import copy
from hubstack_data.connection import filesystem

key, secret, endpoint, work = sys.argv[1:5]
fs = filesystem("s3", {"key": key, "secret": secret, "endpoint_url": endpoint})
disk = LocalFileSystem()
os.makedirs(f"{work}/out", exist_ok=True)
with open(f"{work}/out/result.txt", "wb") as f:
    f.write(b"result")

def copied(src, dst):
    copy.run(src, dst, copy.plan(src, dst, True, False), lambda _: None)
    return sorted(os.listdir(f"{work}/in")) if dst.local else fs.ls("bkt/lab/out")

def multipart():
    with fs.open("bkt/lab/big.bin", "wb", block_size=5 * 2**20) as out:
        out.write(bytes(12 * 2**20))
    return fs.info("bkt/lab/big.bin")["size"]

tries = {
    "list": lambda: fs.ls("bkt/lab"),
    "missing": lambda: fs.info("bkt/lab/nope"),
    "copy in": lambda: copied(copy.Side(fs, "bkt/lab", "bkt/lab"),
                              copy.Side(disk, f"{work}/in", f"{work}/in")),
    "read elsewhere": lambda: fs.cat("bkt/other/b.txt"),
    "copy out": lambda: copied(copy.Side(disk, f"{work}/out", f"{work}/out"),
                               copy.Side(fs, "bkt/lab/out", "bkt/lab/out")),
    "multipart": multipart,
    "write elsewhere": lambda: fs.pipe_file("bkt/other/new.txt", b"x"),
    "remove": lambda: fs.rm_file("bkt/lab/a.txt"),
}
found = {}
for name, attempt in tries.items():
    try:
        attempt()
        found[name] = "done"
    except PermissionError:
        found[name] = "refused"
    except FileNotFoundError:
        found[name] = "missing"
    except Exception as e:  # the copy engine's own report of a refusal
        found[name] = "refused" if "Access Denied" in str(e) else f"{type(e).__name__}: {e}"
print(json.dumps(found))
"""

READ_ONLY = {
    "list": "done",
    "missing": "missing",
    "copy in": "done",
    "read elsewhere": "refused",
    "copy out": "refused",
    "multipart": "refused",
    "write elsewhere": "refused",
    "remove": "refused",
}


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[Store, object]]:
    """moto checking every request but its readiness check and the three that make its
    admin."""
    import boto3
    from botocore.exceptions import ClientError

    with moto_s3(free_requests=4) as s3:
        kw = {"endpoint_url": s3.endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="AKIAFREE", aws_secret_access_key="x", **kw)
        iam.create_user(UserName="admin")
        iam.put_user_policy(
            UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY)
        )
        made = iam.create_access_key(UserName="admin")["AccessKey"]
        keys = {
            "aws_access_key_id": made["AccessKeyId"],
            "aws_secret_access_key": made["SecretAccessKey"],
        }
        admin = boto3.Session(**keys)
        bucket = admin.client("s3", **kw)
        bucket.create_bucket(Bucket="bkt")
        bucket.put_object(Bucket="bkt", Key="lab/a.txt", Body=b"in")
        bucket.put_object(Bucket="bkt", Key="other/b.txt", Body=b"out")
        stranger = boto3.client("s3", aws_access_key_id="AKIAFREE", aws_secret_access_key="x", **kw)
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            stranger.list_objects_v2(Bucket="bkt")
        yield s3, admin.client("iam", **kw)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("ro", READ_ONLY),
        ("rw", READ_ONLY | {"copy out": "done", "multipart": "done", "remove": "done"}),
    ],
)
def test_the_store_holds_a_member_to_the_connection(
    store: tuple[Store, object], tmp_path: Path, mode: str, expected: dict[str, str]
) -> None:
    s3, iam = store
    user = f"member-{mode}"
    iam.create_user(UserName=user)  # type: ignore[attr-defined]
    policy = json.dumps(s3_policy("bkt", "lab", mode))
    iam.put_user_policy(UserName=user, PolicyName="token", PolicyDocument=policy)  # type: ignore[attr-defined]
    key = iam.create_access_key(UserName=user)["AccessKey"]  # type: ignore[attr-defined]
    argv = [key["AccessKeyId"], key["SecretAccessKey"], s3.endpoint, str(tmp_path)]
    run = subprocess.run(
        [str(DEFAULT_ENV / "bin/python"), "-c", MEMBER, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected
