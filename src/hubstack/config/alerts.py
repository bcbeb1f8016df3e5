"""Where the hub sends alerts for its admins, and when a condition counts as one."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from hubstack.config.base import HTTP_URL, AbsolutePath, Strict, problem
from hubstack.config.secrets import SecretSource
from hubstack.units import Duration

# An address for the SMTP envelope and headers: no spaces, angle brackets or line breaks,
# so none can add a header or a recipient.
EMAIL = r"^[^\s<>@,;]+@[^\s<>@,;]+$"


class Webhook(Strict):
    """A JSON POST for each alert; ``token`` is sent as ``Authorization: Bearer``."""

    url: str = Field(pattern=HTTP_URL)
    token: SecretSource | None = None


class Email(Strict):
    """Mail through the site's SMTP server (the standard library's smtplib)."""

    # ``from`` is a Python keyword: the field is ``sender``, written ``from`` in the file.
    model_config = ConfigDict(extra="forbid", validate_default=True, serialize_by_alias=True)

    smtp_host: str = Field(pattern=r"^[A-Za-z0-9.-]+$")
    smtp_port: int = Field(25, ge=1, le=65535)
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretSource | None = None
    sender: str = Field(alias="from", pattern=EMAIL)
    to: list[Annotated[str, Field(pattern=EMAIL)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _login_pair(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise problem(("password",), "give both username and password, or neither", None)
        return self


class AlertSettings(Strict):
    """Alerts to the hub's admins; with neither ``webhook`` nor ``email`` they are only
    logged. Each fires once when its condition starts and again only after it cleared."""

    webhook: Webhook | None = None
    email: Email | None = None
    check_interval: Duration = "30s"  # type: ignore[assignment]
    disk_percent: int = Field(90, ge=1, le=100, description="a watched disk fuller than this")
    disks: list[AbsolutePath] = Field(
        default_factory=list,
        description="more file systems to watch besides the data dir, binder root and homes",
    )
    spawn_failure_rate: float = Field(0.5, gt=0, le=1)
    spawn_failure_window: Duration = "15m"  # type: ignore[assignment]
    spawn_failure_min: int = Field(5, ge=1, description="starts in the window before it counts")
    build_queue_stuck: Duration = "30m"  # type: ignore[assignment]
