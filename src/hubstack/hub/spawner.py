"""The one JupyterHub spawner of hubstack, with a backend under it.

The spawner turns JupyterHub's calls into launch-layer validation and backend calls:
``options_from_form`` and ``apply_user_options`` validate what the user sent (HTTP 400 with
a readable message on refusal), ``start`` streams progress and turns a failed start into a
message naming the real cause, ``poll`` notices out-of-memory kills, and
``delete_forever`` removes a deleted server's volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from datetime import UTC, datetime
from typing import Any

from jupyterhub.spawner import Spawner, SpawnException
from jupyterhub.utils import random_port, url_escape_path, url_path_join
from sqlalchemy.orm import object_session
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Unicode, default

from hubstack.backends.base import Backend, ServerSpec, StartFailed
from hubstack.backends.local import LocalBackend
from hubstack.backends.slurm import SlurmBackend
from hubstack.config import Config
from hubstack.envs.declared import Declared
from hubstack.envs.repository import PrepareFailed, Repositories
from hubstack.hub import metrics
from hubstack.hub.usage import (
    audit,
    close_session,
    form_lines,
    meter_session,
    open_session,
    refuse_spent_budget,
)
from hubstack.launch import (
    InvalidLaunch,
    LaunchRequest,
    options_from_form,
    render_options_form,
    resolve,
)
from hubstack.launch.access import Access
from hubstack.launch.form import LinkOpensForm, link_options
from hubstack.launch.plan import BuiltRepository, Content
from hubstack.launch.policy import repository_launch_timeout
from hubstack.units import format_size

MAX_NOTICES = 10
ENV_MARK_INTERVAL = 600
RESUME_ATTEMPTS = 120


@functools.cache
def config_from_json(text: str) -> Config:
    """One parsed Config per hub (traitlets deep-copies config values per spawner)."""
    return Config.model_validate_json(text)


@functools.cache
def repositories_for(text: str) -> Repositories:
    """One cache and builder per hub: launches of one environment share its build."""
    return Repositories.of(config_from_json(text))


@functools.cache
def declared_for(text: str) -> Declared:
    """One set of declared environments per hub: the builds its start began."""
    return Declared(config_from_json(text), repositories_for(text))


@functools.cache
def backend_for(text: str) -> Backend:
    """One backend per hub, shared by every spawner (it holds the limits or the job poller)."""
    config = config_from_json(text)
    if config.backend.type == "slurm":
        return SlurmBackend(config)
    return LocalBackend(config)


def form_options(config: Config, formdata: dict[str, list[Any]]) -> dict[str, str]:
    """The ``user_options`` a posted options form asks for (HTTP 400 if malformed)."""
    try:
        return options_from_form(formdata, config)
    except InvalidLaunch as exc:
        raise web.HTTPError(400, exc.message) from None


def _refusal(exc: Exception) -> str:
    """What the hub answered to a refused request, as the user should read it."""
    response = getattr(exc, "response", None)
    if response is not None and response.body:
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(response.body)["message"])
    return str(exc)


def access_of(user: Any) -> Access:
    """What a JupyterHub user may pick: their groups as the hub's database has them now
    (so a removal counts from the next start), and whether they are an admin."""
    return Access(frozenset(group.name for group in user.groups), bool(user.admin))


async def checked_request(
    config_json: str, user: Any, user_options: dict[str, Any] | None
) -> LaunchRequest:
    """The launch ``user_options`` ask for on a server of JupyterHub ``user``, validated
    against the config, the user's groups and the backend; HTTP 400 with the reason a
    person can read when it is refused."""
    config, access = config_from_json(config_json), access_of(user)
    try:
        request = resolve(config, user_options, access)
    except InvalidLaunch as exc:
        raise web.HTTPError(400, exc.message) from None
    if refusal := declared_for(config_json).refusal(request.environment):
        raise web.HTTPError(400, refusal)
    await refuse_spent_budget(config, user.name, access.groups)
    refusal = await backend_for(config_json).check_request(user.name, request)
    if refusal:
        raise web.HTTPError(400, refusal)
    return request


async def apply_launch(spawner: HubstackSpawner, user_options: dict[str, Any] | None) -> None:
    """``Spawner.apply_user_options``: validate against the config and the backend, then apply."""
    spawner.apply_request(
        await checked_request(spawner.hubstack_config, spawner.user, user_options)
    )


class HubstackSpawner(Spawner):
    """Servers on the configured backend, with profiles, limits, storage and notices."""

    hubstack_config = Unicode(help="The validated hubstack config, as JSON.").tag(config=True)

    @property
    def hubstack(self) -> Config:
        return config_from_json(self.hubstack_config)

    @property
    def backend(self) -> Backend:
        return backend_for(self.hubstack_config)

    @property
    def repositories(self) -> Repositories:
        return repositories_for(self.hubstack_config)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend_state: dict[str, Any] = {}
        self.notices: list[dict[str, str]] = []
        self.request: LaunchRequest | None = None
        self._events: list[dict[str, Any]] = []
        self._events_changed = asyncio.Event()
        self._resuming = False
        self._building = False  # a start waiting for its environment's build
        self._resume_task: asyncio.Future[None] | None = None
        self.env_key: str | None = None  # the repository environment the server runs
        self._env_marked = 0.0
        self.usage_session: int | None = None  # the server's session in the usage ledger
        self._budget_warned = False

    # -- options --------------------------------------------------------------------------

    @default("options_form")
    def _options_form_default(self) -> Any:
        return self._render_form

    async def _render_form(self, _spawner: Spawner) -> str:
        cost = await form_lines(self.hubstack, self.user.name, access_of(self.user).groups)
        return render_options_form(
            self.hubstack,
            self.user_options,
            [*cost, *(n["message"] for n in self.notices)],
            link_options(self.handler),
            access_of(self.user),
            declared_for(self.hubstack_config).form_notes(),
        )

    def options_from_query(self, query_data: dict[str, list[str]]) -> dict[str, str]:
        """A link never starts a server: its options only fill in the form."""
        raise LinkOpensForm

    @default("options_from_form")
    def _options_from_form_default(self) -> Any:
        return self._from_form

    def _from_form(self, formdata: dict[str, list[Any]]) -> dict[str, str]:
        return form_options(self.hubstack, formdata)

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        return apply_launch

    def apply_request(self, request: LaunchRequest) -> None:
        """Record a validated request and the JupyterHub traits that describe it."""
        self._store_request(request)
        self.mem_limit = request.machine.memory
        self.cpu_limit = request.machine.cpu
        self.default_url = request.url
        if request.repo is not None:
            limit = repository_launch_timeout(self.hubstack)
            self.start_timeout = max(self.start_timeout, limit)

    def _store_request(self, request: LaunchRequest) -> None:
        """Keep ``request`` as the server's options: what a start of it again resolves."""
        self.request = request
        self.user_options = request.as_user_options()
        self.orm_spawner.user_options = self.user_options

    # -- state ------------------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.backend_state = dict(state.get("backend", {}))
        self.notices = list(state.get("notices", []))
        self._resuming = bool(state.get("resuming"))
        self._building = bool(state.get("building"))
        self.env_key = state.get("env_key")
        self.usage_session = state.get("usage_session")
        self._budget_warned = bool(state.get("budget_warned"))

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        # Copies: the database column only notices a change if the new value differs
        # from the old one, which would be the very same (since mutated) dict.
        if self.backend_state:
            state["backend"] = dict(self.backend_state)
        if self.notices:
            state["notices"] = list(self.notices)
        # Persisted, because JupyterHub replaces this object after stopping it and
        # clears the state of the new one before the start that resumes the job.
        if self._resuming:
            state["resuming"] = True
        if self._building:
            state["building"] = True
        if self.env_key:
            state["env_key"] = self.env_key
        if self.usage_session is not None:
            state["usage_session"] = self.usage_session
        if self._budget_warned:
            state["budget_warned"] = True
        return state

    def clear_state(self) -> None:
        """Forget the stopped server; notices stay so the user can read why it stopped.

        A start to be resumed after a hub restart keeps its state (its job).
        """
        super().clear_state()
        if not self._resuming:
            self.backend_state = {}
            self._building = False
            self.env_key = None
            self.usage_session = None
            self._budget_warned = False

    def _record(self, state: dict[str, Any]) -> None:
        """Save a start's state now (e.g. a job id), so a hub restart can find it again."""
        self.backend_state = state
        self._save_state()

    def _save_state(self) -> None:
        """Write the state to the database at once, not at JupyterHub's next commit.

        Through the spawner's own row's session: ``Spawner.db`` is deprecated.
        """
        if self.orm_spawner is None:
            return
        self.orm_spawner.state = self.get_state()
        session = object_session(self.orm_spawner)
        if session is not None:
            session.commit()

    def add_notice(self, message: str) -> None:
        self.notices = [
            *self.notices[-(MAX_NOTICES - 1) :],
            {"time": datetime.now(UTC).isoformat(timespec="seconds"), "message": message},
        ]
        self._save_state()

    def _server_label(self) -> str:
        return f"'{self.name}'" if self.name else "(default)"

    def check_memory(self) -> None:
        """Turn out-of-memory kills since the last check into a notice."""
        if self.backend_state and self.backend.new_oom_kills(self.backend_state):
            memory = self.backend_state.get("memory")
            limit = f" (limit {format_size(memory)})" if memory else ""
            self.add_notice(
                f"A process in your server {self._server_label()} was killed because the "
                f"server ran out of memory{limit}."
            )

    # -- lifecycle --------------------------------------------------------------------------

    def _emit(self, message: str, phase: str | None = None) -> None:
        """One progress event; ``phase`` (BinderHub's names) marks the steps of a
        repository's environment, which the binder service relays as they are."""
        step = len(self._events) + 1
        event: dict[str, Any] = {"progress": min(10 + 5 * step, 90), "message": message}
        if phase is not None:
            event["phase"] = phase
        self._events.append(event)
        self._events_changed.set()

    def _phase(self, phase: str, message: str) -> None:
        self._emit(message, phase)

    async def _prepare_repository(
        self, request: LaunchRequest
    ) -> tuple[LaunchRequest, BuiltRepository]:
        """Build (or find) the environment of the request's repository, and pin its commit
        in the server's options, so that starting this server again gives the same files."""
        assert request.repo is not None
        prepared = await self.repositories.prepare(
            request.repo, self._phase, pin=request.commit, owner=self.user.name
        )
        request = dataclasses.replace(request, commit=prepared.commit)
        self._store_request(request)
        self.env_key = prepared.env.key
        self._env_marked = time.monotonic()
        content = Content(
            name=request.repo.name,
            url=request.repo.url,
            commit=prepared.commit,
            mirror=prepared.mirror,
            snapshot=prepared.env.snapshot,
            start=prepared.start,
            home=prepared.env.home,
            allow_origins=tuple(self.hubstack.binder.cors_origins),
        )
        self._emit(f"Launching a server with the environment of {request.repo.url}", "launching")
        built = BuiltRepository(
            prepared.env.prefix,
            content,
            apt=prepared.env.apt,
            python=prepared.env.python,
            layer=prepared.env.layer_prefix,
            fork_layer=prepared.env.fork_layer_prefix,
        )
        return request, built

    def _declared_build(self, request: LaunchRequest) -> BuiltRepository:
        """The current build of a declared environment, recorded as the server's own: a
        later build of a changed definition does not change a running server's prefix."""
        declared = declared_for(self.hubstack_config)
        env = declared.built(request.environment.id)
        if env is None:
            refusal = declared.refusal(request.environment) or "The environment is not built."
            raise self._spawn_error(refusal, "environment")
        self.env_key = env.key
        self._env_marked = time.monotonic()
        self._save_state()
        return BuiltRepository(
            env.prefix,
            None,
            apt=env.apt,
            python=env.python,
            layer=env.layer_prefix,
            fork_layer=env.fork_layer_prefix,
        )

    def _spawn_error(self, message: str, reason: str) -> SpawnException:
        self.add_notice(message)
        error = SpawnException(message, reason=reason, status_code=500)
        # The spawn-pending page shows only ``jupyterhub_message`` of a failed spawn.
        error.jupyterhub_message = message
        return error

    async def progress(self) -> Any:
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            self._events_changed.clear()
            await self._events_changed.wait()

    async def start(self) -> tuple[str, int]:
        began = time.monotonic()
        ok = False
        try:
            address = await self._start()
            ok = True
            return address
        finally:
            metrics.spawn_finished(self.hubstack.backend.type, time.monotonic() - began, ok)

    async def _start(self) -> tuple[str, int]:
        request = self.request or resolve(self.hubstack, self.user_options, access_of(self.user))
        self._events = []
        resume = None
        if self._resuming and self.backend_state:
            resume = self.backend_state
            # The server in the resumed job authenticates with the token it started with.
            self.api_token = resume["api_token"]
        self._resuming = self.will_resume = False
        built = None
        if request.repo is not None and resume is None:
            # Saved, so that a hub restarted during the build starts this server again.
            self._building = True
            self._save_state()
            try:
                request, built = await self._prepare_repository(request)
            except PrepareFailed as exc:
                raise self._spawn_error(exc.message, "environment") from None
            finally:
                self._building = False
        elif request.environment.declared and resume is None:
            built = self._declared_build(request)
        # Where the backend binds the server's socket, its port is the server's from now on;
        # a port picked here (and bound by the server later) is only a job's placeholder.
        listening = self.backend.server_socket()
        self.port = random_port() if listening is None else listening.getsockname()[1]
        spec = ServerSpec(
            self.user.name,
            self.name,
            request,
            self.get_env(),
            self.port,
            built,
            # Read now, so a change of membership takes effect at the next start.
            groups=frozenset(group.name for group in self.user.groups),
            admin=bool(self.user.admin),
            listening=listening,
        )
        try:
            started = await self.backend.start(spec, self._emit, self._record, resume)
        except StartFailed as exc:
            raise self._spawn_error(exc.message, exc.reason) from None
        finally:
            if listening is not None:
                listening.close()  # the server holds its own copy
        self.backend_state = started.state
        if self.usage_session is None:
            self.usage_session = await open_session(
                self.hubstack,
                self.user.name,
                self.name,
                request,
                spec.groups,
                started.state.get("job_id"),
            )
            self._save_state()
            await audit(
                self.hubstack,
                self.handler,
                "start",
                self.user.name,
                self.name,
                options=self.user_options,
                session=self.usage_session,
            )
        return started.ip, started.port

    def address_reported(self, host: str, port: int) -> None:
        """The server of a start under way says where it listens (see hub.address)."""
        self.backend.address_reported(self.backend_state, host, port)
        self._record(self.backend_state)

    async def _resume_after_restart(self) -> None:
        """Start this server again through the hub's own API once the hub is up.

        JupyterHub checks servers before it serves requests and would stop one that is
        still starting; hubstack lets that check see it stopped, keeps its job, and starts
        it again here, where :meth:`start` takes the job back instead of submitting a new one
        (or, for a start that was waiting for its build, builds again).
        """
        client = AsyncHTTPClient()
        api = self.hub.api_url.rstrip("/")
        for _ in range(RESUME_ATTEMPTS):
            with contextlib.suppress(OSError, HTTPClientError):
                await client.fetch(f"{api}/", request_timeout=5)
                break
            await asyncio.sleep(1)
        scope = f"servers!server={self.user.name}/{self.name}"
        token = self.user.new_api_token(
            note="hubstack: resume a start", expires_in=300, scopes=[scope]
        )
        # The default server has a route of its own (an empty name under servers/ is a 404).
        server = ("servers", url_escape_path(self.name)) if self.name else ("server",)
        path = url_path_join(api, "users", self.user.escaped_name, *server)
        try:
            await client.fetch(
                path,
                method="POST",
                body=json.dumps({"user_options": self.orm_spawner.user_options or {}}),
                headers={"Authorization": f"token {token}"},
                request_timeout=60,
            )
        except (OSError, HTTPClientError) as exc:
            self.log.error("Could not resume the start of %s: %s", self._log_name, exc)
            await self._give_up_resume(
                f"Your server {self._server_label()} could not be started again after a "
                f"hub restart: {_refusal(exc)}"
            )

    async def _give_up_resume(self, notice: str) -> None:
        """End the job of a start that could not be taken back (e.g. its owner has left the
        group its machine type is for): left queued with no server in the hub, it would hold
        the scheduler's resources, and the owner's next start would take it back unasked.

        JupyterHub may have made a new spawner for this server since the restart; the
        current one holds the state (and the notices) the hub shows and the next start reads.
        """
        current = self.user.spawners[self.name]
        state = self.backend_state or current.backend_state
        for spawner in {id(self): self, id(current): current}.values():
            spawner._resuming = spawner.will_resume = False
        if state:
            await self.backend.stop(state)
        current.backend_state = {}
        current.add_notice(notice)

    async def poll(self) -> int | None:
        if self._check_pending and self._building and not self.backend_state:
            # The hub restarted while this server's environment was being built: the
            # start is made again, which builds anew what the killed build left unfinished.
            return self._resume_later()
        if not self.backend_state:
            return 0
        if self._check_pending and self.backend.is_starting(self.backend_state):
            # The hub restarted while this server was starting: see _resume_after_restart.
            return self._resume_later()
        self.check_memory()
        await self._mark_env_used()
        ended = await self.backend.poll(self.backend_state)
        if ended is None:
            return await self._meter()
        await self._close_usage(ended.ended_at, ended.used)
        if ended.reason:
            self.add_notice(f"Your server {self._server_label()} stopped: {ended.reason}.")
        return ended.status

    def _resume_later(self) -> int:
        """Let JupyterHub's check after a restart see this server stopped, and start it
        again once the hub is up."""
        self._resuming = True
        self.will_resume = True  # JupyterHub keeps the token a job's server holds
        self._resume_task = asyncio.ensure_future(self._resume_after_restart())
        return 0

    async def _meter(self) -> int | None:
        """Meter the running server in the usage ledger; warn near a budget's end, and
        stop the server (its exit status) once a spent budget's grace period is over."""
        if self.usage_session is None:
            return None
        measured = await asyncio.to_thread(self.backend.measure, self.backend_state)
        groups = frozenset(group.name for group in self.user.groups)
        verdict = await meter_session(
            self.hubstack,
            self.usage_session,
            self.user.name,
            groups,
            measured,
            self._budget_warned,
        )
        if verdict.notice is None:
            return None
        self.log.warning("Budget of %s: %s", self._log_name, verdict.notice)
        if not verdict.stop:
            self._budget_warned = True
            self.add_notice(f"Budget: {verdict.notice}")
            return None
        await self.backend.stop(self.backend_state)
        self.backend_state = {}
        await audit(
            self.hubstack,
            None,
            "stop",
            self.user.name,
            self.name,
            reason=verdict.notice,
            session=self.usage_session,
        )
        await self._close_usage()
        self.add_notice(f"Your server {self._server_label()} stopped: {verdict.notice}.")
        return 0

    async def _close_usage(
        self,
        ended_at: datetime | None = None,
        used: tuple[float | None, int | None] | None = None,
    ) -> None:
        """End the server's ledger session (once: a second end changes nothing), at
        ``ended_at`` and with what it ``used`` when the backend knows them."""
        if self.usage_session is not None:
            await close_session(self.hubstack, self.usage_session, ended_at=ended_at, used=used)
            self.usage_session = None
            self._save_state()

    async def _mark_env_used(self) -> None:
        """A running server keeps its environment "used", so ``env prune`` spares it."""
        if self.env_key and time.monotonic() - self._env_marked > ENV_MARK_INTERVAL:
            self._env_marked = time.monotonic()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.repositories.cache.touch, self.env_key)

    async def stop(self, now: bool = False) -> None:
        if not self.backend_state or self._resuming:
            return
        self.check_memory()
        await self.backend.stop(self.backend_state)
        self.backend_state = {}
        await audit(
            self.hubstack, None, "stop", self.user.name, self.name, session=self.usage_session
        )
        await self._close_usage()

    async def rename(self, old_name: str, new_name: str) -> None:
        """Refused: a server's volume, cgroup and Slurm job are named after it, and
        moving them would race with a start under either name."""
        raise web.HTTPError(
            400,
            "Renaming servers is not supported; create a server with the new name instead "
            "(a server keeps its files under the name it was created with).",
        )

    async def delete_forever(self) -> None:
        """A deleted server's volume goes with it; stopping keeps it."""
        await self.backend.delete(self.user.name, self.name)
        await audit(self.hubstack, None, "delete", self.user.name, self.name)
        self.notices = []
