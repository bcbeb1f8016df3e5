"""hubdata's uploads verified against what the store received, against moto's S3 server and
Azurite.

One bit of a file changed on the network on its way to the store, through a relay in front
of the store, stops the copy with the checksum mismatch named and leaves nothing of the file
in the store: a file sent in one request (S3: botocore's CRC32 goes with it, which moto
keeps but does not check; Azure: Azurite's MD5 of what it received) is found by hubdata's
check after the upload, and a large one, sent in parts (S3: 13 parts, an ETag of their
MD5s) or blocks (Azure: each with its MD5, which Azurite checks and refuses), by the store
or that check. The mismatch is said once: no error of the SDK's about the other blocks
follows it. The same copies straight to the store go through, so it is the changed bit that
stops them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_default_env
from hubtest import DEFAULT_ENV
from storage_emulators import AZURITE, AZURITE_ACCOUNT, AZURITE_KEY, Corrupting, azurite, moto_s3

pytestmark = [needs_default_env]

MIB = 2**20
# Above hubdata's sizes for one request: s3fs's two parts of 50 MiB, Azure's 64 MiB.
LARGE = {"s3": 104 * MIB, "abfs": 70 * MIB}

CODE = """
import json, os, sys
from fsspec.implementations.local import LocalFileSystem
from hubstack_data import copy
from hubstack_data.connection import filesystem

protocol, direct, relayed, large, top = sys.argv[1:]
for name, size in (("whole", 5 * 2**20), ("parts", int(large))):
    os.makedirs(f"{top}/{name}")
    with open(f"{top}/{name}/{name}.bin", "wb") as f:
        f.write(os.urandom(size))
store = filesystem(protocol, json.loads(direct))
store.mkdir("sent")

def sent(options, name):
    fs = filesystem(protocol, json.loads(options))
    local = copy.Side(LocalFileSystem(), f"{top}/{name}", f"{top}/{name}")
    there = copy.Side(fs, f"sent/{name}", f"sent/{name}")
    try:
        copy.run(local, there, copy.plan(local, there, True, False), lambda n: None)
        outcome = "copied"
    except copy.CopyStopped as stop:
        outcome = str(stop)
    store.invalidate_cache()
    found = store.find(f"sent/{name}", detail=True)
    kept = {path.rsplit("/", 1)[-1]: info.get("ETag") for path, info in found.items()}
    return [outcome, kept]

changed = [sent(relayed, name) for name in ("whole", "parts")]
straight = [sent(direct, name) for name in ("whole", "parts")]
print(json.dumps([changed, straight]))
"""


def options(protocol: str, endpoint: str) -> dict[str, str]:
    """hubdata's fsspec options for the store at ``endpoint``."""
    if protocol == "s3":
        return {"key": "k", "secret": "x", "endpoint_url": endpoint}
    return {
        "connection_string": f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    }


@contextlib.contextmanager
def store_and_relay(protocol: str, workdir: Path) -> Iterator[tuple[dict, dict]]:
    """The store's options straight and through a relay that changes one bit 2 MiB into
    the requests on each connection."""
    with moto_s3() if protocol == "s3" else azurite(workdir) as store:
        account = urllib.parse.urlsplit(store.endpoint).path  # Azurite's, in its URL
        with Corrupting(store.endpoint, at=2 * MIB, answers=False) as relay:
            yield options(protocol, store.endpoint), options(protocol, relay.endpoint + account)


@pytest.mark.parametrize("protocol", ["s3", "abfs"])
def test_bytes_changed_on_the_way_out_stop_the_copy_and_leave_no_object(
    protocol: str, tmp_path: Path
) -> None:
    if protocol == "abfs" and not AZURITE.exists():
        pytest.skip("run scripts/setup.sh --test (Azurite)")
    with store_and_relay(protocol, tmp_path / "store") as (direct, relayed):
        argv = [str(DEFAULT_ENV / "bin/python"), "-c", CODE, protocol]
        argv += [json.dumps(direct), json.dumps(relayed), str(LARGE[protocol])]
        proc = subprocess.run(
            [*argv, str(tmp_path / "files")], capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "never retrieved" not in proc.stderr, "no error the copy has told printed again"
    changed, straight = json.loads(proc.stdout)
    for name, (message, kept) in zip(("whole", "parts"), changed, strict=True):
        assert message.startswith("checksum mismatch: ") and f"{name}.bin" in message, message
        assert kept == {}, f"the changed {name}.bin is not left in the store"
    (whole, kept_whole), (parts, kept_parts) = straight
    assert whole == parts == "copied"
    assert list(kept_whole) == ["whole.bin"] and list(kept_parts) == ["parts.bin"]
    if protocol == "s3":
        assert "-" not in kept_whole["whole.bin"] and kept_parts["parts.bin"].endswith('-13"')


# A real S3 checks what it receives against the Content-MD5 or checksum sent with it and
# answers BadDigest, which moto does not: botocore's error as s3fs raises it, built here.
REFUSALS = """
import json
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error
from hubstack_data.copy import refused_digest

def answer(code):
    return ClientError({"Error": {"Code": code, "Message": "..."}}, "PutObject")

print(json.dumps([
    [refused_digest(answer(code)), refused_digest(translate_boto_error(answer(code)))]
    for code in ("BadDigest", "InvalidDigest", "NoSuchBucket", "AccessDenied")
]))
"""


def test_a_store_refusing_bytes_for_their_digest_is_a_checksum_mismatch() -> None:
    proc = subprocess.run(
        [str(DEFAULT_ENV / "bin/python"), "-c", REFUSALS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == [[True, True], [True, True], [False, False], [False, False]]
