"""What servers cost and how much people may spend: prices, budgets and the ledger's database."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from hubstack.config.base import Strict, problem
from hubstack.config.groups import GroupName
from hubstack.units import Duration

# SQLAlchemy URLs of the databases the ledger is tested on; plain ``postgresql://`` means
# the psycopg (3) driver hubstack ships, not SQLAlchemy's default psycopg2.
DATABASE_URL = r"^(sqlite:///\S+|postgresql(\+psycopg)?://\S+)$"
Price = Annotated[float, Field(ge=0, le=1_000_000)]


class Prices(Strict):
    """Money per hour a running server costs: its machine type's price, plus (on Slurm)
    its job's cores and GPUs at their hourly prices."""

    machines: dict[str, Price] = Field(
        default_factory=dict, description="machine type id -> price per hour; unlisted: 0"
    )
    core_hour: Price = Field(0, description="price of one core for one hour (Slurm jobs)")
    gpu_hour: Price = Field(0, description="price of one GPU for one hour (Slurm jobs)")


class Budget(Strict):
    """What one user or group may spend per period: money, core-hours, or both."""

    money: Price | None = None
    core_hours: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _says_how_much(self) -> Self:
        if self.money is None and self.core_hours is None:
            raise problem((), "a budget needs money, core_hours or both", None)
        return self


class Budgets(Strict):
    users: dict[str, Budget] = Field(default_factory=dict, description="hub user -> budget")
    groups: dict[GroupName, Budget] = Field(
        default_factory=dict, description="JupyterHub group -> budget its members share"
    )


class UsageSettings(Strict):
    """The usage ledger (every server session, what it was given and used, at what rate)
    and the budgets enforced from it."""

    database: str | None = Field(
        None,
        pattern=DATABASE_URL,
        description="SQLAlchemy URL of the ledger; null: sqlite in hub.data_dir/usage.sqlite",
    )
    currency: str = Field("EUR", pattern=r"^[A-Za-z$€£¥]{1,5}$")
    prices: Prices = Field(default_factory=Prices)
    budgets: Budgets = Field(default_factory=Budgets)
    period: Literal["month"] | Duration = Field(
        "month", description="month (calendar, UTC) or a duration, counted from 1970-01-01 UTC"
    )
    warn_at: float = Field(0.8, gt=0, lt=1, description="share of a budget that warns")
    grace: Duration = Field("15m", description="how long servers run on once a budget is spent")  # type: ignore[assignment]
    meter_interval: Duration = Field(
        "1m", description="how often running servers are metered and budgets checked"
    )  # type: ignore[assignment]

    @model_validator(mode="after")
    def _period_is_long_enough(self) -> Self:
        if isinstance(self.period, int) and self.period < 60:
            raise problem(("period",), "must be 'month' or at least 1m", self.period)
        return self

    @property
    def database_url(self) -> str | None:
        """The URL for SQLAlchemy, with the driver hubstack ships for PostgreSQL."""
        if self.database and self.database.startswith("postgresql://"):
            return "postgresql+psycopg://" + self.database.removeprefix("postgresql://")
        return self.database
