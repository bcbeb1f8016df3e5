"""Storage connections as users send them: what is refused (naming the key, never echoing a
secret), and the fsspec options adlfs and s3fs get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hubstack.storage import secretbox, spec

SECRET = "very-secret-key-material"


def body(**extra: Any) -> dict[str, Any]:
    return {
        "name": "raw",
        "kind": "s3",
        "container": "my-bucket",
        "credential": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": SECRET},
        **extra,
    }


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"kind": "ftp"}, "kind"),
        ({"container": "UPPER"}, "container"),
        ({"prefix": "a/../b"}, "prefix"),
        ({"endpoint": "http://s3.example"}, "endpoint"),
        ({"kind": "s3-compatible"}, "endpoint"),
        ({"kind": "azure-blob"}, "credential"),
        ({"endpoint": "javascript:alert(1)", "kind": "s3-compatible"}, "endpoint"),
        ({"mode": "rwx"}, "mode"),
        ({"extra": 1}, "extra"),
    ],
)
def test_refused_naming_the_key_without_the_secret(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError) as error:
        spec.parse(body(**extra))
    assert key in str(error.value)
    assert SECRET not in str(error.value)


def test_prefix_is_normalised() -> None:
    assert spec.parse(body(prefix="/a//b/")).prefix == "a/b"


def test_fsspec_options() -> None:
    s3 = spec.storage_options("s3-compatible", "http://127.0.0.1:9000", body()["credential"])
    assert s3 == {"key": "AKIAEXAMPLE", "secret": SECRET, "endpoint_url": "http://127.0.0.1:9000"}
    azure = {"account_name": "acct", "sas_token": "sv=1&sig=abc"}
    assert spec.storage_options("azure-blob", None, azure) == azure
    emulated = spec.storage_options(
        "azure-blob", "http://127.0.0.1:10000/acct", {"account_name": "acct", "account_key": "k"}
    )
    assert emulated == {
        "connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;"
        "BlobEndpoint=http://127.0.0.1:10000/acct;AccountKey=k"
    }


def azure_sas_body(sas: str, mode: str = "ro") -> dict[str, Any]:
    credential = {"account_name": "acct", "sas_token": sas}
    return body(kind="azure-blob", group="lab", mode=mode, credential=credential)


@pytest.mark.parametrize(
    ("sas", "mode", "refused"),
    [
        ("sv=2024-11-04&sp=rl&sr=c&sig=" + SECRET, "ro", None),
        ("?sv=2024-11-04&sp=r&sr=c&sig=" + SECRET, "ro", None),
        ("sv=2024-11-04&sp=racwdl&sr=c&sig=" + SECRET, "ro", "not sp=racwdl"),
        ("sv=2024-11-04&sp=rlw&sr=c&sig=" + SECRET, "ro", "not sp=rlw"),
        ("sv=2024-11-04&sp=racwdl&sr=c&sig=" + SECRET, "rw", None),
        ("sv=2024-11-04&sig=" + SECRET, "rw", "no sp="),
    ],
)
def test_a_group_sas_is_handed_to_members_only_if_it_keeps_the_mode(
    sas: str, mode: str, refused: str | None
) -> None:
    """Members get a group connection's SAS as it is: a read-only connection must not
    carry one that writes."""
    if refused is None:
        assert spec.parse(azure_sas_body(sas, mode)).credential.sas_token == sas
        return
    with pytest.raises(ValueError) as error:
        spec.parse(azure_sas_body(sas, mode))
    assert "credential.sas_token" in str(error.value) and refused in str(error.value)
    assert SECRET not in str(error.value)


def test_session_token_goes_to_s3fs() -> None:
    temporary = body()["credential"] | {"session_token": "tok"}
    assert spec.storage_options("s3", None, temporary)["token"] == "tok"


def test_key_file_is_the_hub_accounts_alone(tmp_path: Path) -> None:
    box = secretbox.load_key(tmp_path)
    key = tmp_path / secretbox.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    sealed = secretbox.seal(box, SECRET)
    assert SECRET not in sealed
    assert secretbox.unseal(secretbox.load_key(tmp_path), sealed) == SECRET
    key.chmod(0o640)
    with pytest.raises(PermissionError, match="0600"):
        secretbox.load_key(tmp_path)


def test_key_file_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"x")
    (tmp_path / secretbox.KEY_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        secretbox.load_key(tmp_path)
