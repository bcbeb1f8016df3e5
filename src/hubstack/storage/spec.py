"""What a storage connection is, validated from untrusted input, and the fsspec options a
server needs to use it (adlfs for Azure Blob, s3fs for S3): the hub stores and hands these
out, the servers never get anything they would have to interpret themselves."""

from __future__ import annotations

import re
from typing import Any, Literal, Self
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

KINDS = ("azure-blob", "s3", "s3-compatible")
READ_ONLY_SAS = "rl"  # read and list
NAME = r"^[a-z][a-z0-9_-]{0,39}$"
# S3 bucket and Azure container names share these characters.
CONTAINER = r"^[a-z0-9][a-z0-9.-]{1,62}$"
PREFIX_PART = re.compile(r"^[A-Za-z0-9._ =+@,-]{1,200}$")


class Credential(BaseModel):
    """One of: an Azure account key or SAS token (with the account name), or an S3 key pair."""

    model_config = ConfigDict(extra="forbid")
    account_name: str | None = Field(None, pattern=r"^[a-z0-9]{3,24}$")
    account_key: str | None = Field(None, min_length=8, max_length=200)
    sas_token: str | None = Field(None, min_length=8, max_length=2000)
    access_key_id: str | None = Field(None, min_length=3, max_length=128)
    secret_access_key: str | None = Field(None, min_length=3, max_length=256)
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{2,32}$")


class ConnectionSpec(BaseModel):
    """A connection as a user or champion sends it (``POST /hub/api/storage/connections``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    kind: Literal["azure-blob", "s3", "s3-compatible"]
    container: str = Field(pattern=CONTAINER)
    prefix: str = Field("", max_length=500)
    endpoint: str | None = Field(
        None, pattern=r"^https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._-]*)*$"
    )
    group: str | None = Field(None, max_length=64)
    mode: Literal["ro", "rw"] = "rw"
    credential: Credential

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parts = [p for p in self.prefix.split("/") if p]
        if any(p in (".", "..") or not PREFIX_PART.match(p) for p in parts):
            raise ValueError(
                "prefix: use path parts of letters, digits and . _ - (no '..'), "
                f"not {self.prefix[:60]!r}"
            )
        self.prefix = "/".join(parts)
        cred = self.credential
        if self.kind == "azure-blob":
            if not cred.account_name or not (cred.account_key or cred.sas_token):
                raise ValueError(
                    "credential: azure-blob needs account_name and account_key or sas_token"
                )
            if cred.access_key_id or cred.secret_access_key:
                raise ValueError("credential: access keys are for s3, not azure-blob")
            if cred.sas_token and not cred.account_key:
                allowed = sas_permissions(cred.sas_token)
                if allowed is None:
                    raise ValueError("credential.sas_token: not a SAS token (it has no sp=)")
                # Members get a group's SAS as it is: a read-only one must not write.
                if self.mode == "ro" and not reads_only(allowed):
                    raise ValueError(
                        "credential.sas_token: a read-only connection needs a SAS that "
                        f"only reads and lists (sp={READ_ONLY_SAS}), not sp={allowed}"
                    )
        else:
            if not cred.access_key_id or not cred.secret_access_key:
                raise ValueError(
                    f"credential: {self.kind} needs access_key_id and secret_access_key"
                )
            if cred.account_name or cred.account_key or cred.sas_token:
                raise ValueError(
                    f"credential: account names and keys are for azure-blob, not {self.kind}"
                )
        if self.kind == "s3-compatible" and not self.endpoint:
            raise ValueError(
                "endpoint: s3-compatible needs the store's URL, e.g. https://s3.example.org"
            )
        if self.kind == "s3" and self.endpoint:
            raise ValueError("endpoint: s3 uses AWS; choose s3-compatible for another endpoint")
        return self


def sas_permissions(token: str) -> str | None:
    """A SAS token's permissions (its ``sp``), or None if it has none."""
    found = parse_qs(token.lstrip("?")).get("sp")
    return found[0] if found else None


def reads_only(permissions: str) -> bool:
    """A SAS's ``sp`` allows reading and listing and nothing else."""
    return set(permissions) <= set(READ_ONLY_SAS)


def parse(body: object) -> ConnectionSpec:
    """The spec from a request body; ValueError with a message naming key and problem."""
    if not isinstance(body, dict):
        raise ValueError("send a JSON object with name, kind, container and credential")
    try:
        return ConnectionSpec.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            # Never echo a value: it may be a secret.
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        raise ValueError("; ".join(problems)) from None


def storage_options(kind: str, endpoint: str | None, credential: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``adlfs.AzureBlobFileSystem`` or ``s3fs.S3FileSystem``."""
    if kind == "azure-blob":
        name = credential["account_name"]
        if endpoint:
            # Azurite and private endpoints: a connection string names the blob endpoint.
            parts = [f"AccountName={name}", f"BlobEndpoint={endpoint}"]
            if credential.get("account_key"):
                parts.append(f"AccountKey={credential['account_key']}")
            else:
                parts.append(f"SharedAccessSignature={credential['sas_token'].lstrip('?')}")
            scheme = endpoint.split(":", 1)[0]
            return {"connection_string": f"DefaultEndpointsProtocol={scheme};" + ";".join(parts)}
        options = {"account_name": name}
        if credential.get("account_key"):
            options["account_key"] = credential["account_key"]
        else:
            options["sas_token"] = credential["sas_token"]
        return options
    options: dict[str, Any] = {
        "key": credential["access_key_id"],
        "secret": credential["secret_access_key"],
    }
    if credential.get("session_token"):  # a group connection's temporary credentials
        options["token"] = credential["session_token"]
    if endpoint:
        options["endpoint_url"] = endpoint
    if credential.get("region"):
        options["client_kwargs"] = {"region_name": credential["region"]}
    return options
