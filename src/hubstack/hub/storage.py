"""Storage connections in the hub: users and champions add them, servers fetch their
credentials by name with their own token, admins, champions and owners revoke them.

Kept in a table of the hub's database (so they survive restarts, ``kill -9`` included) with
the credential encrypted (``hubstack.storage.secretbox``). The API answers never contain a
credential, except ``/credentials``, which only the owner's own tokens (a server's token
included: it has ``users:activity`` on its user) get, and only for connections of the user
(their credential) or of the user's groups (a token made for them, not the group's key).
Handlers in the hub rather than a service: they need the caller's groups and roles, which
only the hub knows first-hand.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from sqlalchemy import DateTime, Integer, Unicode, UnicodeText
from sqlalchemy.orm import Mapped, Session, mapped_column
from tornado import web

from hubstack.config.groups import CHAMPIONS_SUFFIX
from hubstack.hub.tables import HubTable, utcnow
from hubstack.storage import delegation, secretbox, spec


class Connection(HubTable):
    """A user's own connection (``owner``) or a group's (``group``, read-only or not)."""

    __tablename__ = "hubstack_storage_connections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Unicode(40), index=True)
    kind: Mapped[str] = mapped_column(Unicode(20))
    container: Mapped[str] = mapped_column(Unicode(63))
    prefix: Mapped[str] = mapped_column(Unicode(500))
    endpoint: Mapped[str | None] = mapped_column(Unicode(300), nullable=True)
    owner: Mapped[str | None] = mapped_column(Unicode(255), nullable=True, index=True)
    group: Mapped[str | None] = mapped_column(Unicode(64), nullable=True, index=True)
    mode: Mapped[str] = mapped_column(Unicode(2))
    created_by: Mapped[str] = mapped_column(Unicode(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_by: Mapped[str | None] = mapped_column(Unicode(255), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Fernet token of the credential's JSON; emptied on revocation.
    sealed: Mapped[str] = mapped_column(UnicodeText)

    def describe(self) -> dict[str, Any]:
        """What anyone allowed to see the connection sees: never the credential."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "container": self.container,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "owner": self.owner,
            "group": self.group,
            "mode": self.mode,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat() + "Z",
            "revoked": self.revoked_at is not None,
        }


def groups_of(user: Any) -> tuple[set[str], set[str]]:
    """The groups ``user`` is a member of, and those they champion."""
    names = {g.name for g in user.groups}
    championed = {n.removesuffix(CHAMPIONS_SUFFIX) for n in names if n.endswith(CHAMPIONS_SUFFIX)}
    return names - {n for n in names if n.endswith(CHAMPIONS_SUFFIX)}, championed


def active(db: Session) -> Any:
    return db.query(Connection).filter(Connection.revoked_at.is_(None)).populate_existing()


def visible(db: Session, user: Any) -> list[Connection]:
    """The user's own connections and those of groups they are in or champion."""
    members, championed = groups_of(user)
    return [
        c
        for c in active(db).order_by(Connection.name).all()
        if c.owner == user.name or (c.group is not None and c.group in members | championed)
    ]


def resolve(db: Session, user: Any, name: str) -> Connection:
    """The connection ``name`` means for ``user``: their own first, then one of a group's."""
    found = [c for c in visible(db, user) if c.name == name]
    own = [c for c in found if c.owner == user.name]
    if own:
        return own[0]
    if len(found) == 1:
        return found[0]
    if found:
        groups = ", ".join(sorted(str(c.group) for c in found))
        raise web.HTTPError(409, f"{name!r} names connections of several groups ({groups})")
    revoked = (
        db.query(Connection)
        .filter_by(name=name)
        .filter(Connection.revoked_at.is_not(None))
        .order_by(Connection.revoked_at.desc())
        .populate_existing()
        .all()
    )
    members, championed = groups_of(user)
    for c in revoked:
        if c.owner == user.name or c.group in members | championed:
            raise web.HTTPError(
                410,
                f"the storage connection {name!r} was revoked by {c.revoked_by} at "
                f"{c.revoked_at:%Y-%m-%d %H:%M} UTC; ask for a new one",
            )
    raise web.HTTPError(404, f"you have no storage connection named {name!r}")


def may_manage_group(user: Any, group: str) -> bool:
    return bool(user.admin) or group in groups_of(user)[1]


def may_revoke(user: Any, connection: Connection) -> bool:
    if connection.group is not None:
        return may_manage_group(user, connection.group)
    return bool(user.admin) or connection.owner == user.name


def add(db: Session, box: Fernet, user: Any, body: object) -> Connection:
    """Validate and store a new connection; HTTP 400/403/409 with a message if refused."""
    try:
        wanted = spec.parse(body)
    except ValueError as exc:
        raise web.HTTPError(400, str(exc)) from None
    if wanted.group is not None:
        if orm.Group.find(db, wanted.group) is None or wanted.group.endswith(CHAMPIONS_SUFFIX):
            raise web.HTTPError(400, f"group: {wanted.group!r} is not one of this hub's groups")
        if not may_manage_group(user, wanted.group):
            raise web.HTTPError(
                403, f"only admins and champions of {wanted.group!r} add its connections"
            )
    elif wanted.mode == "ro":
        raise web.HTTPError(400, "mode: ro is for group connections (give group)")
    clash = active(db).filter_by(name=wanted.name)
    clash = (
        clash.filter_by(group=wanted.group)
        if wanted.group is not None
        else clash.filter_by(owner=user.name)
    )
    if clash.first() is not None:
        raise web.HTTPError(
            409, f"name: a connection named {wanted.name!r} exists; revoke it first"
        )
    credential = wanted.credential.model_dump(exclude_none=True)
    connection = Connection(
        name=wanted.name,
        kind=wanted.kind,
        container=wanted.container,
        prefix=wanted.prefix,
        endpoint=wanted.endpoint,
        owner=None if wanted.group is not None else user.name,
        group=wanted.group,
        mode=wanted.mode,
        created_by=user.name,
        created_at=utcnow(),
        sealed=secretbox.seal(box, json.dumps(credential)),
    )
    db.add(connection)
    db.commit()
    return connection


def revoke(db: Session, user: Any, connection_id: str) -> Connection:
    try:
        found = active(db).filter_by(id=int(connection_id)).first()
    except ValueError:
        found = None
    if found is None or not (may_revoke(user, found) or found in visible(db, user)):
        raise web.HTTPError(404, f"no storage connection with id {connection_id[:20]!r}")
    if not may_revoke(user, found):
        raise web.HTTPError(403, "only admins and the group's champions revoke its connections")
    found.revoked_at = utcnow()
    found.revoked_by = user.name
    found.sealed = ""
    db.commit()
    return found


class StorageMixin:
    """The hub's key (``hubstack.storage.secretbox``), given to each handler by ``handlers``."""

    data_dir: Path

    def initialize(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def box(self) -> Fernet:
        return secretbox.load_key(self.data_dir)

    def acting_user(self, user_name: str) -> Any:
        """The caller, who must be the user the path names: an admin's token acts for the
        admin only, and services have no connections."""
        user = self.current_user  # type: ignore[attr-defined]
        if user is None or getattr(user, "kind", "user") != "user" or user.name != user_name:
            raise web.HTTPError(403, "storage connections are used and managed by their user only")
        return user


class ConnectionsAPIHandler(StorageMixin, APIHandler):
    """``/hub/api/storage/users/<user>/connections``: the connections the user may use or
    manage (GET; servers' tokens may), add one (POST). Adding and revoking need ``tokens``
    on the user: a token as powerful as the user's login, not a server's."""

    @needs_scope("users:activity")
    def get(self, user_name: str) -> None:
        """``?all=1``: an admin sees every connection (to revoke any), never a credential."""
        user = self.acting_user(user_name)
        if self.get_argument("all", "") and user.admin:
            found = active(self.db).order_by(Connection.name).all()
        else:
            found = visible(self.db, user)
        self.write({"connections": [c.describe() for c in found]})

    @needs_scope("tokens")
    def post(self, user_name: str) -> None:
        user = self.acting_user(user_name)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        connection = add(self.db, self.box, user, body)
        self.log.info(
            "%s added storage connection %d (%s)", user.name, connection.id, connection.name
        )
        self.set_status(201)
        self.write(connection.describe())


class ConnectionAPIHandler(StorageMixin, APIHandler):
    """``/hub/api/storage/users/<user>/connections/<id>``: revoke (DELETE)."""

    @needs_scope("tokens")
    def delete(self, user_name: str, connection_id: str) -> None:
        user = self.acting_user(user_name)
        found = revoke(self.db, user, connection_id)
        self.log.info("%s revoked storage connection %d (%s)", user.name, found.id, found.name)
        self.set_status(204)


# Members' STS tokens of this hub process (JupyterHub copies handlers' arguments, so the
# cache, with its lock, is not one).
TOKENS = delegation.Tokens()


class CredentialsAPIHandler(StorageMixin, APIHandler):
    """``/hub/api/storage/users/<user>/credentials/<name>``: what a server of ``user``
    needs to use the connection. Only the user's own tokens with ``users:activity`` on
    themselves (servers' tokens have it), never an admin's for another. A user's own
    connection comes with its credential; a group's with a token made for the member
    (``hubstack.storage.delegation``), never the group's key."""

    lifetime: int

    def initialize(self, data_dir: Path, lifetime: int) -> None:  # type: ignore[override]
        super().initialize(data_dir)
        self.lifetime = lifetime

    @needs_scope("users:activity")
    async def get(self, user_name: str, name: str) -> None:
        user = self.acting_user(user_name)
        connection = resolve(self.db, user, name)
        credential = json.loads(secretbox.unseal(self.box, connection.sealed))
        if connection.group is not None:
            shared = delegation.GroupConnection(
                connection.id,
                connection.kind,
                connection.container,
                connection.prefix,
                connection.endpoint,
                connection.mode,
                credential,
            )
            try:
                credential = await delegation.for_member(shared, user.name, self.lifetime, TOKENS)
            except delegation.Refused as exc:
                raise web.HTTPError(502, str(exc)) from None
        self.set_header("Cache-Control", "no-store")
        self.write(
            {
                **connection.describe(),
                "protocol": "abfs" if connection.kind == "azure-blob" else "s3",
                "storage_options": spec.storage_options(
                    connection.kind, connection.endpoint, credential
                ),
            }
        )


class StoragePageHandler(StorageMixin, BaseHandler):
    """``/hub/storage``: the connections a person sees, a form to add one, revoke buttons
    (a logged-in browser: its cookie carries the person's full scopes)."""

    async def page(self, **extra: Any) -> None:
        user = self.current_user
        # Admins see every connection, to revoke any of them.
        shown = (
            active(self.db).order_by(Connection.name).all()
            if user.admin
            else visible(self.db, user)
        )
        if user.admin:
            everyone = {g.name for g in self.db.query(orm.Group).all()}
            groups = {g for g in everyone if not g.endswith(CHAMPIONS_SUFFIX)}
        else:
            groups = groups_of(user)[1]
        html = await self.render_template(
            "storage.html",
            connections=[c.describe() for c in shown],
            revocable={c.id for c in shown if may_revoke(user, c)},
            groups=sorted(groups),
            error=extra.get("error"),
            added=extra.get("added"),
            copy_jobs=await self.copy_jobs(),
        )
        self.finish(html)

    async def copy_jobs(self) -> list[dict[str, Any]]:
        """The person's copy jobs: none here; ``hubstack.hub.storage_jobs`` serves this page
        with them on a Slurm hub."""
        return []

    @web.authenticated
    async def get(self) -> None:
        await self.page()

    @web.authenticated
    async def post(self) -> None:
        user = self.current_user
        arg = self.get_body_argument
        try:
            if arg("revoke", ""):
                revoke(self.db, user, arg("revoke"))
                await self.page()
                return
            credential = {
                key: arg(key, "").strip()
                for key in (
                    "account_name",
                    "account_key",
                    "sas_token",
                    "access_key_id",
                    "secret_access_key",
                    "region",
                )
                if arg(key, "").strip()
            }
            body = {
                "name": arg("name", ""),
                "kind": arg("kind", ""),
                "container": arg("container", ""),
                "prefix": arg("prefix", ""),
                "endpoint": arg("endpoint", "") or None,
                "group": arg("group", "") or None,
                "mode": arg("mode", "rw"),
                "credential": credential,
            }
            added = add(self.db, self.box, user, body)
        except web.HTTPError as exc:
            self.set_status(exc.status_code)
            await self.page(error=exc.log_message)
            return
        self.set_status(201)
        await self.page(added=added.name)


def handlers(data_dir: Path, lifetime: int) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/); the page ``/storage`` is
    ``hubstack.hub.storage_jobs``'s, which adds copy jobs to it. ``lifetime``: seconds a
    member's token for a group connection is valid."""
    kwargs: dict[str, Any] = {"data_dir": data_dir}
    credentials = {**kwargs, "lifetime": lifetime}
    return [
        (r"/api/storage/users/([^/]+)/connections", ConnectionsAPIHandler, kwargs),
        (r"/api/storage/users/([^/]+)/connections/([^/]+)", ConnectionAPIHandler, kwargs),
        (r"/api/storage/users/([^/]+)/credentials/([^/]+)", CredentialsAPIHandler, credentials),
    ]
