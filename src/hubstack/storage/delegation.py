"""What a group's members get for a group connection: a token the store itself limits to
the connection's mode and lifetime, never the key a champion gave the hub.

A member's server holds whatever credential it uses, and its user can read it there; so
the hub hands members of a group a derived one, as Azure and AWS intend keys to be shared:

- Azure with an account key: a container SAS signed with the key (the SDK's own
  ``generate_container_sas``), read and list only for a read-only connection. With a SAS as
  the credential there is nothing to derive: the SAS itself is handed out, and a read-only
  connection takes only a SAS that cannot write (``spec`` checks it when it is added).
- S3 and S3-compatible stores: temporary credentials from the store's STS
  (``GetFederationToken``) with a session policy limited to the connection's objects and
  mode; a store without STS refuses, and the member is told so.

A user's own connection is theirs: their own credential is handed back to their servers.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hubstack.storage.spec import READ_ONLY_SAS, reads_only, sas_permissions

# SAS permissions (``sp``) for writing: add, create, write and delete besides read and list.
SAS_WRITE = "racwdl"
S3_READ = ("s3:GetObject",)
S3_WRITE = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
# How long before a SAS starts: servers' clocks may run a little behind the store's.
CLOCK_SKEW = timedelta(minutes=5)
NO_TOKEN = "the store gave no temporary credentials for this group connection"


class Refused(Exception):
    """No token for the member; the message says why."""


@dataclass(frozen=True)
class GroupConnection:
    """A group connection as the hub keeps it, and its credential unsealed."""

    id: int
    kind: str
    container: str
    prefix: str
    endpoint: str | None
    mode: str
    credential: dict[str, Any]


def azure_sas(group: GroupConnection, now: datetime, lifetime: int) -> dict[str, Any]:
    """A container SAS for a member, from the group's account key (or its SAS, as is)."""
    if not group.credential.get("account_key"):
        allowed = sas_permissions(group.credential["sas_token"]) or ""
        if group.mode == "ro" and not reads_only(allowed):
            # Only a connection kept before ``spec`` checked this when it was added.
            raise Refused(
                f"this read-only group connection's SAS may write (sp={allowed}); its "
                "champions must replace it with one that only reads and lists"
            )
        return group.credential
    # The SDKs are imported at first use, not with the hub: a quarter second each.
    from azure.storage.blob import generate_container_sas

    token = generate_container_sas(
        group.credential["account_name"],
        group.container,
        account_key=group.credential["account_key"],
        permission=READ_ONLY_SAS if group.mode == "ro" else SAS_WRITE,
        start=now - CLOCK_SKEW,
        expiry=now + timedelta(seconds=lifetime),
        protocol=None if (group.endpoint or "https:").startswith("http:") else "https",
    )
    return {"account_name": group.credential["account_name"], "sas_token": token}


def s3_policy(bucket: str, prefix: str, mode: str) -> dict[str, Any]:
    """An IAM policy allowing the connection's objects, no others.

    Listing is allowed for the whole bucket (names only): without it S3 answers a missing
    object with 403 rather than 404, which s3fs takes for a refusal, and a folder could not
    be told from a file. The prefix itself is allowed as an object, as s3fs asks for it
    first when it looks at the connection's top folder."""
    objects = [f"arn:aws:s3:::{bucket}/{prefix}", f"arn:aws:s3:::{bucket}/{prefix}/*"]
    bucket_actions = ["s3:ListBucket", "s3:GetBucketLocation"]
    if mode == "rw":
        bucket_actions.append("s3:ListBucketMultipartUploads")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": bucket_actions, "Resource": f"arn:aws:s3:::{bucket}"},
            {
                "Effect": "Allow",
                "Action": list(S3_WRITE if mode == "rw" else S3_READ),
                "Resource": objects if prefix else f"arn:aws:s3:::{bucket}/*",
            },
        ],
    }


def federation_name(user: str) -> str:
    """STS's name for the token's holder: 2-32 of letters, digits and ``+=,.@_-``."""
    return ("hub-" + re.sub(r"[^\w+=,.@-]", "_", user))[:32]


def s3_token(group: GroupConnection, user: str, lifetime: int) -> dict[str, Any]:
    """Temporary credentials from the store's STS (blocking: call it in a thread)."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    credential = group.credential
    client = botocore.session.Session().create_client(
        "sts",
        region_name=credential.get("region") or "us-east-1",
        endpoint_url=group.endpoint,
        aws_access_key_id=credential["access_key_id"],
        aws_secret_access_key=credential["secret_access_key"],
        config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
    )
    try:
        answer = client.get_federation_token(
            Name=federation_name(user),
            Policy=json.dumps(s3_policy(group.container, group.prefix, group.mode)),
            DurationSeconds=lifetime,
        )
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise Refused(
            f"{NO_TOKEN} (STS GetFederationToken: {error.get('Code', '?')}: "
            f"{error.get('Message', '')}); ask the group's champions for a store with STS"
        ) from None
    except ResponseParserError:
        raise Refused(f"{NO_TOKEN}: it does not answer STS GetFederationToken") from None
    except BotoCoreError as exc:
        raise Refused(f"{NO_TOKEN}: its STS could not be reached ({exc})") from None
    finally:
        client.close()
    issued = answer["Credentials"]
    return {
        "access_key_id": issued["AccessKeyId"],
        "secret_access_key": issued["SecretAccessKey"],
        "session_token": issued["SessionToken"],
        **({"region": credential["region"]} if credential.get("region") else {}),
    }


Fetch = Callable[[GroupConnection, str, int], dict[str, Any]]
# How long a store's refusal is answered from memory: a member asking again and again for
# a token from a store that is down does not make the hub ask it each time.
REFUSAL_KEPT = 30.0


class Tokens:
    """Members' S3 tokens, reused while more than half their lifetime is left: one STS call
    per member and connection, not one for each ``hubdata`` command. In the hub's memory
    only; a restarted hub asks again. The calls run in threads of their own: one may wait
    40 seconds on a store that is down, and must not hold up the hub's other threaded
    work."""

    def __init__(self, fetch: Fetch = s3_token) -> None:
        self.fetch = fetch
        self.kept: dict[tuple[int, str], tuple[float, dict[str, Any] | str]] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="hubstack-sts")

    def get(self, group: GroupConnection, user: str, lifetime: int) -> dict[str, Any]:
        """The member's token (blocking); Refused, also if the store refused lately."""
        key = (group.id, user)
        with self.lock:
            until, kept = self.kept.get(key, (0.0, ""))
        if until > time.monotonic():
            if isinstance(kept, str):
                raise Refused(kept)
            return kept
        try:
            token = self.fetch(group, user, lifetime)
        except Refused as exc:
            with self.lock:
                self.kept[key] = (time.monotonic() + REFUSAL_KEPT, str(exc))
            raise
        with self.lock:
            self.kept[key] = (time.monotonic() + lifetime / 2, token)
        return token


async def for_member(
    group: GroupConnection, user: str, lifetime: int, tokens: Tokens
) -> dict[str, Any]:
    """The credential a member's server gets."""
    if group.kind == "azure-blob":
        return azure_sas(group, datetime.now(UTC), lifetime)
    return await asyncio.wrap_future(tokens.pool.submit(tokens.get, group, user, lifetime))
