"""Copy jobs (``hubdata cp --job``): a copy between a storage connection and a user's files
run as a Slurm job of the user, so that it holds no server open, with its progress in the hub.

The hub records the copy, gives it a JupyterHub token of the user that can only use the
user's storage connections (``users:activity`` on them) and expires with the job's wall
time, and submits the job through the Slurm backend's account and sbatch conventions. The
job's hubdata asks the hub what to copy and for the connection's credential with that token
(as ``hub://`` does in servers: the credential is never in the script, the environment or a
command line), and reports its progress here; the token is deleted once the copy has ended.
A job that ends without saying so (cancelled, killed) is found ended in the queue and marked
failed. Records are in the hub's database, so a hub restart (``kill -9``) loses none.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Boolean, DateTime, Integer, Unicode, UnicodeText
from sqlalchemy.orm import Mapped, Session, mapped_column
from tornado import web

from hubstack.backends.base import StartFailed
from hubstack.backends.slurm import SlurmBackend
from hubstack.config import Config
from hubstack.hub import storage
from hubstack.hub.storage import StorageMixin, resolve
from hubstack.hub.tables import HubTable, utcnow
from hubstack.launch.access import Access, offered_items, pick
from hubstack.launch.profiles import LABELS
from hubstack.launch.slurm_fields import SlurmRequest, resolve_slurm
from hubstack.slurm.client import SlurmError, is_active
from hubstack.slurm.jobscript import JobScriptError, render_copy_script
from hubstack.storage.spec import NAME
from hubstack.untrusted import InvalidLaunch

ENDED = ("done", "failed", "cancelled")
NAME_RE = re.compile(NAME)
# The job's token outlives its wall time by this much: a job still queued when the token
# expires would fail, so the queue wait counts too (a day at most).
TOKEN_MARGIN = 24 * 3600


class CopyJob(HubTable):
    """One ``hubdata cp --job``: what to copy, its Slurm job and its progress."""

    __tablename__ = "hubstack_storage_copy_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(Unicode(255), index=True)
    source: Mapped[str] = mapped_column(UnicodeText)
    destination: Mapped[str] = mapped_column(UnicodeText)
    workdir: Mapped[str] = mapped_column(UnicodeText)
    recursive: Mapped[bool] = mapped_column(Boolean)
    checksum: Mapped[bool] = mapped_column(Boolean)
    slurm_job: Mapped[str | None] = mapped_column(Unicode(40), nullable=True)
    log: Mapped[str] = mapped_column(UnicodeText, default="")
    state: Mapped[str] = mapped_column(Unicode(10))  # queued, running, or one of ENDED
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bytes_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(UnicodeText, default="")
    # Where it runs: the machine type and partition (None: jobs from before the choice).
    machine: Mapped[str | None] = mapped_column(Unicode(255), nullable=True)
    partition: Mapped[str | None] = mapped_column(Unicode(255), nullable=True)
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "destination": self.destination,
            "recursive": self.recursive,
            "checksum": self.checksum,
            "workdir": self.workdir,
            "slurm_job": self.slurm_job,
            "machine": self.machine,
            "partition": self.partition,
            "log": self.log,
            "state": self.state,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "created_at": self.created_at.isoformat() + "Z",
            "updated_at": self.updated_at.isoformat() + "Z",
        }


class CopyRequest(BaseModel):
    """``POST /hub/api/storage/users/<user>/jobs``: what ``hubdata cp --job`` asks for."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=1000)
    destination: str = Field(min_length=1, max_length=1000)
    workdir: str = Field(min_length=1, max_length=1000, pattern=r"^/")
    recursive: bool = False
    checksum: bool = False
    # Where it runs, as on the spawn form; None: the default.
    machine: str | None = Field(None, min_length=1, max_length=255)
    partition: str | None = Field(None, min_length=1, max_length=255)


class Progress(BaseModel):
    """``POST /hub/api/storage/users/<user>/jobs/<id>``: what the job reports."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["running", "done", "failed"]
    files_done: int = Field(0, ge=0)
    files_total: int | None = Field(None, ge=0)
    bytes_done: int = Field(0, ge=0)
    bytes_total: int | None = Field(None, ge=0)
    error: str = Field("", max_length=1000)


def parse(model: type[BaseModel], body: object) -> Any:
    """``body`` as ``model``; HTTP 400 naming each key at fault (never echoing a value)."""
    if not isinstance(body, dict):
        raise web.HTTPError(400, "send a JSON object")
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise web.HTTPError(400, "; ".join(problems)) from None
    for key, value in parsed.model_dump().items():
        if isinstance(value, str) and not value.isprintable():
            raise web.HTTPError(400, f"{key}: may not hold control characters or line breaks")
    return parsed


def connection_side(arg: str) -> tuple[str, str] | None:
    """``(NAME, path)`` when ``arg`` names a connection as hubdata reads it (``NAME:path``,
    no ``/`` before the colon), else None (a path of the user's)."""
    name, colon, path = arg.partition(":")
    if not colon or not name or "/" in name:
        return None
    return name, path


def check_copy(db: Session, user: Any, wanted: CopyRequest) -> None:
    """Refuse (HTTP 4xx, with a message) a copy hubdata would refuse: one side must be a
    connection of the user's, without ``..``; a read-only connection is not written."""
    sides = [connection_side(wanted.source), connection_side(wanted.destination)]
    if (sides[0] is None) == (sides[1] is None):
        raise web.HTTPError(
            400, "one side of a copy must be a connection (NAME:path), the other a path of yours"
        )
    for key, side in zip(("source", "destination"), sides, strict=True):
        if side is None:
            continue
        name, path = side
        if not NAME_RE.match(name):
            raise web.HTTPError(400, f"{key}: {name[:40]!r} is not a connection name")
        if ".." in path.split("/"):
            raise web.HTTPError(400, f"{key}: paths in a storage connection may not contain '..'")
        connection = resolve(db, user, name)
        if key == "destination" and connection.mode != "rw":
            raise web.HTTPError(
                403, f"the storage connection {name!r} of group {connection.group!r} is read-only"
            )


def job_shape(config: Config, wanted: CopyRequest, access: Access) -> tuple[str, SlurmRequest]:
    """The machine type and Slurm job of a copy: what the person chose, by the spawn form's
    rules (a machine type or partition for some groups only is theirs if they are in one),
    or its defaults. HTTP 400 naming what they may choose instead."""
    options = {
        key: value
        for key, value in (("machine", wanted.machine), ("partition", wanted.partition))
        if value is not None
    }
    try:
        machine = pick(
            LABELS["machine"], options, "machine", offered_items(config.machines), access
        )
        if "partition" in options and not config.backend.slurm.fields.partition.choices:
            raise InvalidLaunch("This hub offers no choice of partition.")
        found = next(m for m in config.machines if m.id == machine)
        return machine, resolve_slurm(config, found, options, access)
    except InvalidLaunch as exc:
        raise web.HTTPError(400, exc.message) from None


def hubdata_python(config: Config) -> str:
    """The Python of the first environment with hubdata (the default environment's)."""
    for environment in config.environments:
        if (environment.prefix / "bin/hubdata").exists():
            return str(environment.prefix / "bin/python3")
    raise web.HTTPError(
        400, "no environment of this hub has hubdata (scripts/setup.sh installs it)"
    )


def end(db: Session, job: CopyJob, state: str, error: str = "") -> None:
    """Mark ``job`` ended and delete its token: nothing can use it any more."""
    job.state = state
    job.error = job.error or error
    job.updated_at = utcnow()
    if job.token_id is not None:
        token = db.query(orm.APIToken).filter_by(id=job.token_id).first()
        if token is not None:
            db.delete(token)
        job.token_id = None
    db.commit()


class CopyJobsMixin(StorageMixin):
    hubstack: Config  # ``config`` is JupyterHub's
    backend: SlurmBackend | None

    def initialize(self, data_dir: Any, config: Config) -> None:  # type: ignore[override]
        super().initialize(data_dir)
        self.hubstack = config
        # Cheap to make (no process, no query); JupyterHub copies handler arguments, which
        # the backend's locks forbid.
        self.backend = SlurmBackend(config) if config.backend.type == "slurm" else None

    def job_of(self, user: Any, job_id: str) -> CopyJob:
        """The user's copy job ``job_id``; 404 for anyone else's (not even whether it exists)."""
        db: Session = self.db  # type: ignore[attr-defined]
        found = (
            db.query(CopyJob).filter_by(id=int(job_id), owner=user.name).populate_existing().first()
            if job_id.isdigit() and len(job_id) < 10
            else None
        )
        if found is None:
            raise web.HTTPError(404, f"you have no copy job {job_id[:20]!r}")
        return found


async def refresh(db: Session, backend: SlurmBackend | None, jobs: list[CopyJob]) -> None:
    """Mark failed each queued or running job whose Slurm job has left the queue without
    reporting its end (cancelled outside the hub, killed, out of wall time)."""
    waiting = [j for j in jobs if j.state not in ENDED and j.slurm_job]
    if not waiting or backend is None:
        return
    try:
        queue = await backend.slurm.queue([j.slurm_job for j in waiting if j.slurm_job])
    except SlurmError:
        return  # no answer is not "gone": ask again next time
    for job in waiting:
        info = queue.get(str(job.slurm_job))
        if info is None or not is_active(info.state):
            db.refresh(job)  # its final report may have come in meanwhile
            if job.state not in ENDED:
                how = info.state if info is not None else "left the queue"
                end(
                    db,
                    job,
                    "failed",
                    f"the Slurm job ended ({how}) before the copy did; see {job.log}",
                )


async def jobs_of(db: Session, backend: SlurmBackend | None, user_name: str) -> list[CopyJob]:
    """The user's copy jobs, newest first, their states brought up to date."""
    jobs = (
        db.query(CopyJob)
        .filter_by(owner=user_name)
        .order_by(CopyJob.id.desc())
        .limit(50)
        .populate_existing()
        .all()
    )
    await refresh(db, backend, jobs)
    return jobs


class CopyJobsAPIHandler(CopyJobsMixin, APIHandler):
    """``/hub/api/storage/users/<user>/jobs``: the user's copy jobs (GET), start one (POST).
    A server's token may do both, as ``hubdata`` in a server does."""

    @needs_scope("users:activity")
    async def get(self, user_name: str) -> None:
        user = self.acting_user(user_name)
        jobs = await jobs_of(self.db, self.backend, user.name)
        self.write({"jobs": [j.describe() for j in jobs]})

    @needs_scope("users:activity")
    async def post(self, user_name: str) -> None:
        user = self.acting_user(user_name)
        if self.backend is None:
            raise web.HTTPError(400, "copy jobs run on a Slurm hub only (backend.type: slurm)")
        wanted: CopyRequest = parse(CopyRequest, self.get_json_body())
        check_copy(self.db, user, wanted)
        python = hubdata_python(self.hubstack)
        access = Access(frozenset(g.name for g in user.groups), bool(user.admin))
        machine, request = job_shape(self.hubstack, wanted, access)
        refusal = await self.backend.check_slurm(user.name, request)
        if refusal is not None:
            raise web.HTTPError(400, refusal)
        try:
            account = await self.backend.job_account(user.name)
        except StartFailed as exc:
            raise web.HTTPError(503, exc.message) from None
        now = utcnow()
        job = CopyJob(
            owner=user.name,
            source=wanted.source,
            destination=wanted.destination,
            workdir=wanted.workdir,
            recursive=wanted.recursive,
            checksum=wanted.checksum,
            machine=machine,
            partition=request.partition,
            state="queued",
            created_at=now,
            updated_at=now,
        )
        self.db.add(job)
        self.db.commit()
        token = user.orm_user.new_api_token(
            note=f"hubdata copy job {job.id}",
            scopes=[f"users:activity!user={user.name}"],
            expires_in=request.walltime + TOKEN_MARGIN,
        )
        job.token_id = orm.APIToken.find(self.db, token).id
        output = str(account.home / ".hubstack/jobs" / f"hubdata-{job.id}-%j.log")
        try:
            script = render_copy_script(
                f"hubdata-{account.name}-{job.id}",
                output,
                request,
                self.backend.settings.prologue,
                python,
            )
            env = {
                # As a server's job reaches the hub (launch.plan).
                "JUPYTERHUB_API_URL": self.hubstack.backend.slurm.hub_url or self.hub.api_url,
                "JUPYTERHUB_USER": user.name,
                "HUBSTACK_COPY_JOB": str(job.id),
                "HUBSTACK_COPY_TOKEN": token,
            }
            job.slurm_job = await self.backend.slurm.submit(script, account.name, env, account.home)
        except (SlurmError, JobScriptError) as exc:
            end(self.db, job, "failed", f"Slurm refused the job: {exc}")
            raise web.HTTPError(400, job.error) from None
        job.log = output.replace("%j", job.slurm_job)
        self.db.commit()
        self.log.info("%s submitted copy job %d as Slurm job %s", user.name, job.id, job.slurm_job)
        self.set_status(201)
        self.write(job.describe())


class CopyJobAPIHandler(CopyJobsMixin, APIHandler):
    """``/hub/api/storage/users/<user>/jobs/<id>``: one copy job (GET), cancel it (DELETE),
    and the job's own progress reports (POST, with the job's token only)."""

    @needs_scope("users:activity")
    async def get(self, user_name: str, job_id: str) -> None:
        user = self.acting_user(user_name)
        job = self.job_of(user, job_id)
        await refresh(self.db, self.backend, [job])
        self.write(job.describe())

    @needs_scope("users:activity")
    async def post(self, user_name: str, job_id: str) -> None:
        user = self.acting_user(user_name)
        job = self.job_of(user, job_id)
        token = orm.APIToken.find(self.db, self.get_auth_token() or "")
        if token is None or job.token_id is None or token.id != job.token_id:
            raise web.HTTPError(403, "only the copy job itself reports its progress")
        report: Progress = parse(Progress, self.get_json_body())
        for key in ("files_done", "files_total", "bytes_done", "bytes_total"):
            setattr(job, key, getattr(report, key))
        if report.state == "running":
            job.state, job.updated_at = "running", utcnow()
            self.db.commit()
        else:
            end(self.db, job, report.state, report.error)
        self.set_status(204)

    @needs_scope("users:activity")
    async def delete(self, user_name: str, job_id: str) -> None:
        user = self.acting_user(user_name)
        job = self.job_of(user, job_id)
        if job.state in ENDED:
            raise web.HTTPError(409, f"copy job {job.id} has already ended ({job.state})")
        if self.backend is not None and job.slurm_job:
            try:
                await self.backend.slurm.cancel(job.slurm_job)
            except SlurmError as exc:
                raise web.HTTPError(503, f"Slurm could not cancel the job: {exc}") from None
        end(self.db, job, "cancelled", f"cancelled by {user.name}")
        self.log.info("%s cancelled copy job %d", user.name, job.id)
        self.set_status(204)


class StoragePageHandler(CopyJobsMixin, storage.StoragePageHandler):
    """``/hub/storage`` with the person's copy jobs and their progress."""

    async def copy_jobs(self) -> list[dict[str, Any]]:
        jobs = await jobs_of(self.db, self.backend, self.current_user.name)
        return [j.describe() for j in jobs]


def handlers(data_dir: Any, config: Config) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/)."""
    kwargs = {"data_dir": data_dir, "config": config}
    return [
        (r"/api/storage/users/([^/]+)/jobs", CopyJobsAPIHandler, kwargs),
        (r"/api/storage/users/([^/]+)/jobs/([^/]+)", CopyJobAPIHandler, kwargs),
        (r"/storage", StoragePageHandler, kwargs),
    ]
