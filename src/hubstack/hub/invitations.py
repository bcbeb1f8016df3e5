"""Invitations to a group: a link that lets people join it until it expires or is used up.

A champion (or admin) of a hub-managed group makes one on ``/hub/groups/<G>/invitations``
or with ``POST /hub/api/groups/<G>/invitations``; who may is JupyterHub's ``groups`` scope
on the group, as for adding members directly. The link is ``/hub/invite?invite_code=...``:
with built-in accounts it creates an account (authorized at once) in the group; with other
logins it adds the logged-in person. The code is random, only its SHA-256 is stored (in a
table of the hub's database, so invitations survive restarts), and it travels in a query
value whose name the hub's log filters redact.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from nativeauthenticator import NativeAuthenticator
from sqlalchemy import DateTime, Integer, Unicode, update
from sqlalchemy.orm import Mapped, Session, mapped_column
from tornado import web

from hubstack.config.groups import GroupSettings
from hubstack.hub import builtin_accounts
from hubstack.hub.tables import HubTable, utcnow
from hubstack.units import format_duration, parse_duration

CODE_BYTES = 24
MAX_EXPIRY = 90 * 86400
MAX_USES = 10_000
DEFAULT_EXPIRY = 7 * 86400
# Unix account names are made from hub names (accounts.prefix + name): keep new ones plain.
NEW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Invitation(HubTable):
    """One link: its group, who made it, until when and how many times it may be used."""

    __tablename__ = "hubstack_invitations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group: Mapped[str] = mapped_column(Unicode(64), index=True)
    code_hash: Mapped[str] = mapped_column(Unicode(64), unique=True)
    created_by: Mapped[str] = mapped_column(Unicode(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    uses: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)

    def refusal(self, now: datetime) -> str | None:
        """Why the link cannot be used now, or None."""
        if self.expires_at <= now:
            return "This invitation has expired. Ask whoever sent it for a new one."
        if self.used >= self.uses:
            return "This invitation has been used up. Ask whoever sent it for a new one."
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "uses": self.uses,
            "used": self.used,
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat() + "Z"


def code_hash(code: str) -> str:
    # A random 192-bit code needs no slow hash: nobody can guess it from its SHA-256.
    return hashlib.sha256(code.encode()).hexdigest()


def parse_request(expires_in: object, uses: object) -> tuple[int, int]:
    """An invitation's expiry (seconds) and uses from what a champion sent; ValueError
    with a message saying what is allowed."""
    try:
        seconds = parse_duration(expires_in if expires_in not in (None, "") else DEFAULT_EXPIRY)
    except ValueError as exc:
        raise ValueError(f"expires_in: {exc}") from None
    if not 60 <= seconds <= MAX_EXPIRY:
        raise ValueError(f"expires_in must be between 1m and {format_duration(MAX_EXPIRY)}")
    try:
        count = int(str(uses if uses not in (None, "") else 1))
    except ValueError:
        raise ValueError(f"uses must be a whole number, not {str(uses)[:40]!r}") from None
    if not 1 <= count <= MAX_USES:
        raise ValueError(f"uses must be between 1 and {MAX_USES}")
    return seconds, count


def create(db: Session, group: str, by: str, seconds: int, uses: int) -> tuple[str, Invitation]:
    """A new invitation and its code (shown once: only its hash is kept)."""
    code = secrets.token_urlsafe(CODE_BYTES)
    now = utcnow()
    invitation = Invitation(
        group=group,
        code_hash=code_hash(code),
        created_by=by,
        created_at=now,
        expires_at=now + timedelta(seconds=seconds),
        uses=uses,
        used=0,
    )
    db.add(invitation)
    db.commit()
    return code, invitation


def find(db: Session, code: str) -> Invitation | None:
    if not code or len(code) > 100:
        return None
    # populate_existing: the hub's session keeps loaded rows, and take_use changes them in SQL.
    query = db.query(Invitation).filter_by(code_hash=code_hash(code)).populate_existing()
    return query.first()


def take_use(db: Session, invitation: Invitation) -> bool:
    """Count one use, unless it expired or was used up meanwhile: one conditional UPDATE,
    so two people using the last use at once cannot both get in. Not committed."""
    result = db.execute(
        update(Invitation)
        .where(
            Invitation.id == invitation.id,
            Invitation.used < Invitation.uses,
            Invitation.expires_at > utcnow(),
        )
        .values(used=Invitation.used + 1)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def invite_url(handler: BaseHandler, code: str) -> str:
    request = handler.request
    return f"{request.protocol}://{request.host}{handler.hub.base_url}invite?invite_code={code}"


class GroupsMixin:
    """The config's groups, given to each handler by ``handlers``."""

    groups: dict[str, GroupSettings]

    def initialize(self, groups: dict[str, GroupSettings]) -> None:
        self.groups = groups

    def invitable(self, name: str) -> None:
        settings = self.groups.get(name)
        if settings is None:
            raise web.HTTPError(404, f"{name!r} is not one of this hub's groups")
        if not settings.hub_managed:
            raise web.HTTPError(
                400,
                f"the members of {name!r} come from the login provider; invitations are "
                "only for groups whose members the hub keeps (source: hub)",
            )


class InvitationsAPIHandler(GroupsMixin, APIHandler):
    """``/hub/api/groups/<G>/invitations``: list (GET) and make (POST) invitations."""

    @needs_scope("read:groups")
    def get(self, group_name: str) -> None:
        self.invitable(group_name)
        now = utcnow()
        found = self.db.query(Invitation).filter_by(group=group_name).populate_existing().all()
        self.write({"invitations": [i.describe() for i in found if not i.refusal(now)]})

    @needs_scope("groups")
    def post(self, group_name: str) -> None:
        self.invitable(group_name)
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'send a JSON object: {"expires_in": "7d", "uses": 30}')
        try:
            seconds, uses = parse_request(body.get("expires_in"), body.get("uses"))
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from None
        by = self.current_user.name
        code, invitation = create(self.db, group_name, by, seconds, uses)
        self.set_status(201)
        self.write({**invitation.describe(), "url": invite_url(self, code)})


class InvitationsPageHandler(GroupsMixin, BaseHandler):
    """``/hub/groups/<G>/invitations``: a page to make an invitation and copy its link."""

    async def page(self, group: str, **extra: Any) -> None:
        now = utcnow()
        found = self.db.query(Invitation).filter_by(group=group).populate_existing().all()
        html = await self.render_template(
            "invitations.html",
            group=group,
            settings=self.groups[group],
            invitations=[i.describe() for i in found if not i.refusal(now)],
            link=extra.get("link"),
            error=extra.get("error"),
            max_uses=MAX_USES,
        )
        self.finish(html)

    @web.authenticated
    @needs_scope("groups")
    async def get(self, group_name: str) -> None:
        self.invitable(group_name)
        await self.page(group_name)

    @web.authenticated
    @needs_scope("groups")
    async def post(self, group_name: str) -> None:
        self.invitable(group_name)
        try:
            seconds, uses = parse_request(
                self.get_body_argument("expires_in", ""), self.get_body_argument("uses", "")
            )
        except ValueError as exc:
            self.set_status(400)
            await self.page(group_name, error=str(exc))
            return
        code, _ = create(self.db, group_name, self.current_user.name, seconds, uses)
        self.set_status(201)
        await self.page(group_name, link=invite_url(self, code))


class InviteHandler(GroupsMixin, BaseHandler):
    """``/hub/invite?invite_code=...``: the page an invited person opens."""

    def invitation(self) -> tuple[str, Invitation]:
        code = self.get_argument("invite_code", "")
        invitation = find(self.db, code)
        if invitation is None or invitation.group not in self.groups:
            raise web.HTTPError(
                404, "This invitation link is not valid. Check that it was copied whole."
            )
        refusal = invitation.refusal(utcnow())
        if refusal:
            raise web.HTTPError(410, refusal)
        return code, invitation

    @property
    def native(self) -> bool:
        return isinstance(self.authenticator, NativeAuthenticator)

    async def page(self, code: str, group: str, **extra: Any) -> None:
        html = await self.render_template(
            "invite.html",
            code=code,
            group=group,
            display=self.groups[group].display or group,
            native=self.native,
            login_url=self.get_login_url()
            + "?next="
            + quote(f"{self.hub.base_url}invite?invite_code={code}", safe=""),
            joined=extra.get("joined", False),
            created=extra.get("created", ""),
            error=extra.get("error", ""),
            username=extra.get("username", ""),
        )
        self.finish(html)

    async def get(self) -> None:
        code, invitation = self.invitation()
        user = self.current_user
        joined = user is not None and invitation.group in [g.name for g in user.groups]
        await self.page(code, invitation.group, joined=joined)

    async def post(self) -> None:
        code, invitation = self.invitation()
        if self.current_user is not None:
            self.join(invitation)
            await self.page(code, invitation.group, joined=True)
        elif self.native:
            await self.sign_up(code, invitation)
        else:
            self.redirect(self.get_login_url())

    def join(self, invitation: Invitation) -> None:
        """Add the logged-in user to the group (a use is counted only if they were not in)."""
        user = self.current_user
        group = orm.Group.find(self.db, invitation.group)
        if group is None:  # removed on the admin page since
            raise web.HTTPError(410, "This invitation's group no longer exists.")
        if group in user.groups:
            return
        if not take_use(self.db, invitation):
            self.db.rollback()
            raise web.HTTPError(410, "This invitation has just been used up or has expired.")
        group.users.append(user.orm_user)
        self.db.commit()
        self.log.info("%s joined group %s by invitation %d", user.name, group.name, invitation.id)

    async def sign_up(self, code: str, invitation: Invitation) -> None:
        """Create an authorized built-in account in the group."""
        name = self.authenticator.normalize_username(self.get_body_argument("username", ""))
        password = self.get_body_argument("password", "")
        error = self.sign_up_refusal(name, password, self.get_body_argument("confirm", ""))
        if error:
            self.set_status(400)
            await self.page(code, invitation.group, error=error, username=name[:40])
            return
        password_hash = await asyncio.to_thread(builtin_accounts.hash_password, password)
        # Checked again: another request may have taken the name while bcrypt ran.
        if self.sign_up_refusal(name, password, password) or not take_use(self.db, invitation):
            self.db.rollback()
            raise web.HTTPError(410, "This invitation has just been used up or has expired.")
        builtin_accounts.add_hashed(self.db, name, password_hash)
        user = self.user_from_username(name)
        group = orm.Group.find(self.db, invitation.group)
        if group is not None:
            group.users.append(user.orm_user)
        self.db.commit()
        self.log.info("account %s created by invitation %d", name, invitation.id)
        await self.page(code, invitation.group, created=name)

    def sign_up_refusal(self, name: str, password: str, confirm: str) -> str | None:
        if not NEW_NAME.match(name) or not self.authenticator.validate_username(name):
            return (
                "Choose a user name of lowercase letters, digits, - and _ that starts with a "
                "letter (at most 32 characters)."
            )
        # A name the hub knows (an account, or a member listed in the config who has not
        # signed up) belongs to someone else: joining as them would take their groups.
        if builtin_accounts.exists(self.db, name) or orm.User.find(self.db, name) is not None:
            return f"The name {name!r} is taken; choose another, or log in if it is yours."
        if password != confirm:
            return "The two passwords differ."
        if not self.authenticator.is_password_strong(password):
            return (
                f"Choose a longer or less common password (at least "
                f"{self.authenticator.minimum_password_length} characters)."
            )
        return None


def handlers(groups: dict[str, GroupSettings]) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/)."""
    kwargs = {"groups": groups}
    return [
        (r"/api/groups/([^/]+)/invitations", InvitationsAPIHandler, kwargs),
        (r"/groups/([^/]+)/invitations", InvitationsPageHandler, kwargs),
        (r"/invite", InviteHandler, kwargs),
    ]
