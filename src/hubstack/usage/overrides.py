"""Budgets changed at run time: the config holds the defaults, an admin's change is a row
in the ledger's database (so it survives restarts and ``kill -9``), and the budgets in
force are the config's with those rows laid over them. Blocking: the hub calls it in a
thread; it keeps what is in force in memory, so enforcing costs no query."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Float, String, select
from sqlalchemy.orm import Mapped, mapped_column

from hubstack.config.usage import Budget, Budgets, UsageSettings
from hubstack.usage.budgets import Scope
from hubstack.usage.ledger import Base, Ledger, UTCDateTime


class OverrideRow(Base):
    """The budget of one user or group as an admin last set it."""

    __tablename__ = "hubstack_budget_overrides"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # user or group
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    money: Mapped[float | None] = mapped_column(Float)
    core_hours: Mapped[float | None] = mapped_column(Float)
    changed_by: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Entry:
    """A budget in force and where it comes from: the config, or who changed it when."""

    scope: Scope
    budget: Budget
    changed_by: str | None = None
    changed_at: datetime | None = None


class BudgetBook:
    """The budgets in force for one ledger: config defaults with admins' changes."""

    def __init__(self, ledger: Ledger, settings: UsageSettings) -> None:
        self.ledger = ledger
        self.defaults = settings
        self._lock = threading.Lock()
        with ledger.begin() as db:
            self._rows = {Scope(r.kind, r.name): r for r in db.scalars(select(OverrideRow))}
        self._settings = self._effective()

    def _effective(self) -> UsageSettings:
        users = dict(self.defaults.budgets.users)
        groups = dict(self.defaults.budgets.groups)
        for scope, row in self._rows.items():
            budget = Budget(money=row.money, core_hours=row.core_hours)
            (users if scope.kind == "user" else groups)[scope.name] = budget
        # model_construct: group names from the database were checked when they were set.
        budgets = Budgets.model_construct(users=users, groups=groups)
        return self.defaults.model_copy(update={"budgets": budgets})

    @property
    def settings(self) -> UsageSettings:
        """The usage settings with the budgets in force now."""
        return self._settings

    def entries(self) -> list[Entry]:
        """Every budget in force, users first, by name."""
        found = []
        for kind, budgets in (
            ("user", self._settings.budgets.users),
            ("group", self._settings.budgets.groups),
        ):
            for name in sorted(budgets):
                row = self._rows.get(Scope(kind, name))
                found.append(
                    Entry(
                        Scope(kind, name),
                        budgets[name],
                        row.changed_by if row else None,
                        row.changed_at if row else None,
                    )
                )
        return found

    def get(self, scope: Scope) -> Budget | None:
        budgets = self._settings.budgets
        return (budgets.users if scope.kind == "user" else budgets.groups).get(scope.name)

    def set(self, scope: Scope, budget: Budget | None, by: str, at: datetime) -> Budget | None:
        """Put ``budget`` in force for ``scope`` (None: back to the config's); the one it
        replaces."""
        with self._lock:
            old = self.get(scope)
            rows = dict(self._rows)
            with self.ledger.begin() as db:
                row = db.get(OverrideRow, (scope.kind, scope.name))
                if budget is None:
                    if row is not None:
                        db.delete(row)
                    rows.pop(scope, None)
                else:
                    row = row or OverrideRow(kind=scope.kind, name=scope.name)
                    row.money, row.core_hours = budget.money, budget.core_hours
                    row.changed_by, row.changed_at = by, at
                    db.add(row)
                    rows[scope] = row
            # In force once stored, not before.
            self._rows = rows
            self._settings = self._effective()
            return old
