"""Budgets changed at run time by admins: ``/hub/api/usage/budgets`` (GET the budgets in
force; PUT or DELETE ``users/U`` and ``groups/G``) and the page ``/hub/budgets``.

Only admins change budgets (JupyterHub's ``admin:users`` and ``admin:groups`` scopes): a
budget limits what a group spends, so its champions, who spend it, do not raise it. Each
change is stored in the ledger's database (it outlives restarts), in force at once for
starts and the meter, and written to the audit log with who, from where, old and new.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from pydantic import ValidationError
from tornado import web

from hubstack.config import Config
from hubstack.config.load import describe_problem
from hubstack.config.usage import Budget
from hubstack.hub.usage import accounting, audit
from hubstack.usage.budgets import Scope
from hubstack.usage.overrides import Entry

KINDS = {"users": "user", "groups": "group"}


def budget_of(body: object) -> Budget:
    """The budget a request asks for, or HTTP 400 naming each bad key and value."""
    try:
        return Budget.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(describe_problem(dict(e)) for e in exc.errors())
        allowed = "a budget is {money: 0 to 1000000, core_hours: 0 or more}, one or both"
        raise web.HTTPError(400, f"{problems} ({allowed})") from None


def _amount(budget: Budget) -> dict[str, float | None]:
    return {"money": budget.money, "core_hours": budget.core_hours}


def as_json(entry: Entry) -> dict[str, Any]:
    return {
        "kind": entry.scope.kind,
        "name": entry.scope.name,
        **_amount(entry.budget),
        "source": "config" if entry.changed_by is None else "changed",
        "changed_by": entry.changed_by,
        "changed_at": entry.changed_at.isoformat() if entry.changed_at else None,
    }


class BudgetMixin:
    """What the API and the page share: the budgets in force, and changing one."""

    hubstack: Config
    db: Any
    request: Any

    def initialize(self, config: Config) -> None:
        self.hubstack = config

    async def entries(self) -> list[Entry]:
        books = await asyncio.to_thread(accounting, self.hubstack)
        return books.book.entries()

    def scope_of(self, kind: str, name: str) -> Scope:
        """The scope of an existing hub user or group, else HTTP 400."""
        if kind == "users":
            known = self.db.query(orm.User).filter_by(name=name).first()
        else:
            known = orm.Group.find(self.db, name)
        if known is None:
            raise web.HTTPError(400, f"there is no hub {KINDS[kind]} named {name!r}")
        return Scope(KINDS[kind], name)

    async def change(self, scope: Scope, budget: Budget | None) -> None:
        """Put ``budget`` in force (None: back to the config's) and audit it."""
        actor = self.current_user.name  # type: ignore[attr-defined]
        books = await asyncio.to_thread(accounting, self.hubstack)
        old = await asyncio.to_thread(books.book.set, scope, budget, actor, datetime.now(UTC))
        await audit(
            self.hubstack,
            self,
            "budget",
            scope.name if scope.kind == "user" else "",
            "",
            scope=scope.kind,
            name=scope.name,
            old=_amount(old) if old else None,
            new=_amount(budget) if budget else None,
            # What is in force now (DELETE: the config's, or none).
            now=_amount(now) if (now := books.book.get(scope)) else None,
        )


class BudgetsAPIHandler(BudgetMixin, APIHandler):
    @needs_scope("admin:users")
    async def get(self) -> None:
        usage = self.hubstack.usage
        self.set_header("Content-Type", "application/json")
        self.write(
            json.dumps(
                {
                    "currency": usage.currency,
                    "period": usage.period,
                    "budgets": [as_json(e) for e in await self.entries()],
                }
            )
        )


class BudgetAPIHandler(BudgetMixin, APIHandler):
    """PUT a user's or group's budget (the JSON body), DELETE it back to the config's."""

    async def _put(self, kind: str, name: str) -> None:
        scope = self.scope_of(kind, name)
        await self.change(scope, budget_of(self.get_json_body()))
        (entry,) = [e for e in await self.entries() if e.scope == scope]
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(as_json(entry)))

    async def _delete(self, kind: str, name: str) -> None:
        await self.change(self.scope_of(kind, name), None)
        self.set_status(204)


class UserBudgetAPIHandler(BudgetAPIHandler):
    @needs_scope("admin:users")
    async def put(self, user_name: str) -> None:
        await self._put("users", user_name)

    @needs_scope("admin:users")
    async def delete(self, user_name: str) -> None:
        await self._delete("users", user_name)


class GroupBudgetAPIHandler(BudgetAPIHandler):
    @needs_scope("admin:groups")
    async def put(self, group_name: str) -> None:
        await self._put("groups", group_name)

    @needs_scope("admin:groups")
    async def delete(self, group_name: str) -> None:
        await self._delete("groups", group_name)


class BudgetsPageHandler(BudgetMixin, BaseHandler):
    """``/hub/budgets``: every budget in force with where it comes from, and a form to
    change one (admins only; the form carries JupyterHub's XSRF token)."""

    async def page(self, **extra: Any) -> None:
        html = await self.render_template(
            "budgets.html",
            entries=await self.entries(),
            currency=self.hubstack.usage.currency,
            **extra,
        )
        self.finish(html)

    def _admin(self) -> None:
        if not self.current_user.admin:
            raise web.HTTPError(403, "only admins change budgets")

    @web.authenticated
    async def get(self) -> None:
        self._admin()
        await self.page()

    @web.authenticated
    async def post(self) -> None:
        self._admin()
        arg = self.get_body_argument
        kind, name = arg("kind", ""), arg("name", "").strip()
        try:
            if kind not in KINDS:
                raise web.HTTPError(400, f"kind must be users or groups (got {kind!r})")
            scope = self.scope_of(kind, name)
            if arg("reset", ""):
                await self.change(scope, None)
            else:
                amounts = {key: arg(key, "").strip() for key in ("money", "core_hours")}
                await self.change(scope, budget_of({k: v for k, v in amounts.items() if v}))
        except web.HTTPError as exc:
            self.set_status(exc.status_code)
            await self.page(error=exc.log_message)
            return
        await self.page(changed=str(scope))


def handlers(config: Config) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/)."""
    kwargs = {"config": config}
    return [
        (r"/api/usage/budgets", BudgetsAPIHandler, kwargs),
        (r"/api/usage/budgets/users/([^/]+)", UserBudgetAPIHandler, kwargs),
        (r"/api/usage/budgets/groups/([^/]+)", GroupBudgetAPIHandler, kwargs),
        (r"/budgets", BudgetsPageHandler, kwargs),
    ]
