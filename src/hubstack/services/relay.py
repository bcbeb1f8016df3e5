"""One repository launch as BinderHub's build API tells it, driven through the hub's REST API.

The hub does the work (the spawner fetches, builds and starts); this module decides what
to ask of it for a user's repository server, and turns the hub's progress stream into
BinderHub's phases so Binder clients (thebe, binderhub-client) need no change. A client
that goes away only stops the relaying: the hub keeps building, and the next request
for the same repository attaches to that build.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urljoin

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from hubstack.config.models import REPOSITORY_ENVIRONMENT
from hubstack.errors import Explained
from hubstack.launch.repo import COMMIT, RepoSource
from hubstack.untrusted import quote_untrusted

# Phases the spawner may report itself; "ready" and "failed" are only ever this module's.
RELAYED_PHASES = frozenset({"waiting", "fetching", "building", "built", "launching"})
KEEPALIVE = ":keepalive\n\n"
STOP_TIMEOUT = 120.0
POLL_INTERVAL = 0.5
# While a start is being sent: the hub marks it pending within milliseconds, and every
# moment waited here is added to the launch.
PENDING_POLL_INTERVAL = 0.05
API_TIMEOUT = 60.0

Event = dict[str, Any]
Emit = Callable[[Event], Awaitable[None]]


class ClientGone(Exception):
    """The client closed the event stream; nothing more can be told to it."""


class HubError(Explained):
    """The hub refused or failed an API request; ``message`` is the hub's own sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LaunchFailed(Explained):
    """The launch cannot go on; ``message`` is shown to the user as the ``failed`` event."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sse(event: Mapping[str, Any]) -> str:
    """One event-stream message; ``json.dumps`` never emits a line break, so one line."""
    return f"data: {json.dumps(event)}\n\n"


def as_line(message: str) -> str:
    """Binder clients print messages as they come (to a terminal): one line per event."""
    return message if message.endswith("\n") else message + "\n"


def phase_event(phase: str, message: str, **extra: Any) -> Event:
    return {"phase": phase, "message": as_line(message), **extra}


def failed_event(message: str, status: int | None = None) -> Event:
    extra = {} if status is None else {"status_code": status}
    return phase_event("failed", message, **extra)


def binder_event(hub_event: Mapping[str, Any]) -> Event:
    """A hub progress event (not the final ``ready``) in BinderHub's terms: the spawner's own
    ``phase`` is kept, JupyterHub's launching steps become ``launching``."""
    message = str(hub_event.get("message") or "")
    if hub_event.get("failed"):
        return failed_event(message or "The server failed to start.")
    phase = hub_event.get("phase")
    known = isinstance(phase, str) and phase in RELAYED_PHASES
    return phase_event(phase if known else "launching", message)


class EventParser:
    """Reads an event stream as it arrives in arbitrary chunks; yields the JSON objects of
    complete ``data:`` events (comments, keepalive blank lines and non-objects skipped)."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        events = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").removesuffix("\r")
            if line:
                field, _, value = line.partition(":")
                if field == "data":
                    self._data.append(value.removeprefix(" "))
                continue
            if self._data:
                payload, self._data = "\n".join(self._data), []
                try:
                    event = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return events


def ref_page(source: RepoSource, commit: str | None) -> str | None:
    """The forge's page of the launched commit, where the forge has a known form."""
    if commit is None:
        return None
    if source.provider == "gh":
        return f"{source.url}/tree/{commit}"
    if source.provider == "gl":
        return f"{source.url.removesuffix('.git')}/-/tree/{commit}"
    return None


def ready_event(
    source: RepoSource, *, server_url: str, token: str, commit: str | None, service_url: str
) -> Event:
    """BinderHub's ``ready`` event: where the server is, a token for it, and the request
    with its ref and pinned to the commit (``binder_persistent_request``)."""
    pinned = replace(source, ref=commit) if commit else source
    event = phase_event(
        "ready",
        f"Server ready at {server_url}",
        url=server_url,
        token=token,
        repo_url=source.url,
        binder_launch_host=service_url,
        binder_request=f"v2/{source.provider}/{source.spec}",
        binder_persistent_request=f"v2/{pinned.provider}/{pinned.spec}",
    )
    ref_url = ref_page(source, commit)
    if ref_url:
        event["binder_ref_url"] = ref_url
    return event


def repository_options(source: RepoSource) -> dict[str, str]:
    return {"environment": REPOSITORY_ENVIRONMENT, "repo": source.url, "ref": source.ref}


def runs(model: Mapping[str, Any], source: RepoSource) -> bool:
    """Whether a server model was started for this repository at this ref."""
    options = model.get("user_options") or {}
    return all(options.get(key) == value for key, value in repository_options(source).items())


def describe(model: Mapping[str, Any]) -> str:
    """What another server of the same name runs, for the message that explains a stop."""
    options = model.get("user_options") or {}
    if options.get("environment") != REPOSITORY_ENVIRONMENT:
        return "another environment"
    return (
        f"{quote_untrusted(str(options.get('repo')))} at {quote_untrusted(str(options.get('ref')))}"
    )


def _hub_message(response: HTTPResponse) -> str:
    """The hub's error sentence from its JSON answer, else the HTTP reason."""
    try:
        message = json.loads(response.body or b"")["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return f"The hub answered {response.code} {response.reason}."


class HubClient:
    """The hub's REST API, called with the service's own token."""

    def __init__(self, api_url: str, token: str, http: AsyncHTTPClient) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.http = http

    def _request(self, method: str, parts: tuple[str, ...], **kwargs: Any) -> HTTPRequest:
        path = "/".join(quote(part, safe="") for part in parts)
        kwargs.setdefault("request_timeout", API_TIMEOUT)
        return HTTPRequest(
            f"{self.api_url}/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}", **kwargs.pop("headers", {})},
            connect_timeout=10,
            **kwargs,
        )

    async def _fetch(self, request: HTTPRequest) -> HTTPResponse:
        """The hub's answer, an error status included; no answer at all is a HubError too."""
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise HubError(502, f"The hub did not answer: {exc}.") from None
        if response.code >= 400:
            raise HubError(response.code, _hub_message(response))
        return response

    async def _call(self, method: str, *parts: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body)
        response = await self._fetch(self._request(method, parts, body=data))
        return json.loads(response.body) if response.body else None

    async def server(self, user: str, server: str) -> dict[str, Any] | None:
        """The server's model (running or stopped), None if the user has no such server."""
        try:
            return await self._call("GET", "users", user, "servers", server)
        except HubError as exc:
            if exc.status == 404:
                return None
            raise

    async def is_admin(self, user: str) -> bool:
        """Whether ``user`` is one of the hub's admins (the champions' page is theirs)."""
        return bool((await self._call("GET", "users", user)).get("admin"))

    async def start(self, user: str, server: str, options: dict[str, str]) -> None:
        await self._call("POST", "users", user, "servers", server, body={"user_options": options})

    async def stop(self, user: str, server: str) -> None:
        await self._call("DELETE", "users", user, "servers", server)

    async def new_token(self, user: str, scopes: list[str], expires_in: int, note: str) -> str:
        body = {"scopes": scopes, "expires_in": expires_in, "note": note}
        return (await self._call("POST", "users", user, "tokens", body=body))["token"]

    async def progress(
        self, user: str, server: str, on_chunk: Callable[[bytes], None], timeout: float
    ) -> None:
        """Stream the server's progress into ``on_chunk``; an exception raised there ends it."""
        request = self._request(
            "GET",
            ("users", user, "servers", server, "progress"),
            headers={"Accept": "text/event-stream"},
            streaming_callback=on_chunk,
            request_timeout=timeout,
        )
        await self._fetch(request)


# One decision at a time per server, so two launches of the same repository start it once.
_server_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


# Starts whose answer nobody waits for any more; kept so that they run to their end.
_unattended: set[asyncio.Future[None]] = set()


def _forget(future: asyncio.Future[None]) -> None:
    _unattended.discard(future)
    if not future.cancelled():
        future.exception()  # the outcome reaches the user through the progress stream


def _server_lock(user: str, server: str) -> asyncio.Lock:
    lock = _server_locks.get((user, server))
    if lock is None:
        lock = _server_locks[(user, server)] = asyncio.Lock()
    return lock


@dataclass
class Launch:
    """A user's request to run ``source`` in their named server ``server``."""

    hub: HubClient
    user: str
    server: str
    source: RepoSource
    hub_origin: str  # the hub's public scheme://host[:port], for the server's absolute URL
    service_url: str  # this service's public URL, ending in '/'
    token_lifetime: int
    relay_timeout: float
    emit: Emit
    gone: asyncio.Event

    async def run(self) -> None:
        """Emit the launch's events up to ``ready`` or ``failed``; raises ClientGone."""
        try:
            await self.emit(
                phase_event(
                    "waiting",
                    f"Resolving {self.source.ref} of {self.source.url} "
                    f"for your server {self.server}",
                )
            )
            async with _server_lock(self.user, self.server):
                running = await self._prepare()
            if running is not None:
                await self._ready(running["url"], running)
            else:
                await self._relay()
        except (LaunchFailed, HubError) as exc:
            await self.emit(failed_event(exc.message, exc.status))

    async def _prepare(self) -> dict[str, Any] | None:
        """Bring the server to a state whose progress can be followed: started with this
        repository and ref (stopping it first if it runs something else). Returns its model
        instead when it already runs them."""
        model = await self.hub.server(self.user, self.server)
        if model is not None and model.get("pending") == "spawn":
            if runs(model, self.source):
                return None
            raise LaunchFailed(
                409,
                f"Your server {self.server} is starting {describe(model)} right now; "
                "launch again once it has started.",
            )
        if model is not None and model.get("pending"):
            await self.emit(
                phase_event("waiting", f"Waiting for your server {self.server} to settle")
            )
            model = await self._wait_stopped()
        if model is not None and not model.get("stopped"):
            if model.get("ready") and runs(model, self.source):
                return model
            await self.emit(
                phase_event(
                    "waiting", f"Stopping your server {self.server}, which runs {describe(model)}"
                )
            )
            await self.hub.stop(self.user, self.server)
            await self._wait_stopped()
        await self._start()
        return None

    async def _start(self) -> None:
        """Ask the hub to start the server; return as soon as the start is under way.

        The hub answers a start only once the server is up or after its slow-spawn timeout
        (10 s), while fetching and building have long begun: the progress is followed from
        the moment the server is pending instead. The request itself goes on regardless.
        """
        start = asyncio.ensure_future(
            self.hub.start(self.user, self.server, repository_options(self.source))
        )
        _unattended.add(start)
        start.add_done_callback(_forget)
        while not start.done():
            model = await self.hub.server(self.user, self.server)
            if model is not None and model.get("pending") == "spawn":
                return
            await asyncio.wait({start}, timeout=PENDING_POLL_INTERVAL)
        try:
            start.result()
        except HubError as exc:
            if exc.status < 500:
                raise LaunchFailed(exc.status, exc.message) from None
            raise

    async def _wait_stopped(self) -> dict[str, Any] | None:
        """Wait until the server has no pending action and is stopped (or gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while True:
            model = await self.hub.server(self.user, self.server)
            if model is None or (model.get("stopped") and not model.get("pending")):
                return model
            if loop.time() > deadline:
                raise LaunchFailed(
                    504,
                    f"Your server {self.server} did not stop within {STOP_TIMEOUT:.0f} seconds; "
                    "stop it from the hub's home page and launch again.",
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _relay(self) -> None:
        """Follow the hub's progress stream of the server to its end."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        parser = EventParser()

        def on_chunk(chunk: bytes) -> None:
            if self.gone.is_set():
                raise ClientGone  # closes the hub connection; the start itself goes on
            for item in parser.feed(chunk):
                queue.put_nowait(item)

        def ended(future: asyncio.Future[None]) -> None:
            if not future.cancelled():
                future.exception()  # looked at below, or dropped when the client left
            queue.put_nowait(None)

        fetch = asyncio.ensure_future(
            self.hub.progress(self.user, self.server, on_chunk, self.relay_timeout)
        )
        fetch.add_done_callback(ended)
        while (hub_event := await self._unless_gone(queue.get())) is not None:
            if hub_event.get("ready"):
                await self._ready(str(hub_event.get("url") or ""), None)
                return
            event = binder_event(hub_event)
            await self.emit(event)
            if event["phase"] == "failed":
                return
        error = fetch.exception()
        if isinstance(error, HubError):
            raise LaunchFailed(
                error.status, f"The hub cannot report the progress of your server: {error.message}"
            )
        raise LaunchFailed(502, "The hub stopped reporting progress before your server was ready.")

    async def _unless_gone(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable``, or raise ClientGone as soon as the client leaves."""
        task = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            raise ClientGone
        return task.result()

    async def _ready(self, url_path: str, model: dict[str, Any] | None) -> None:
        """Emit ``ready`` with a token that opens only this server."""
        if model is None:
            model = await self.hub.server(self.user, self.server) or {}
        commit = (model.get("user_options") or {}).get("commit")
        token = await self.hub.new_token(
            self.user,
            [f"access:servers!server={self.user}/{self.server}"],
            self.token_lifetime,
            f"binder launch of {self.source.url}",
        )
        await self.emit(
            ready_event(
                self.source,
                server_url=urljoin(self.hub_origin + "/", url_path or model.get("url", "")),
                token=token,
                commit=commit if isinstance(commit, str) and COMMIT.fullmatch(commit) else None,
                service_url=self.service_url,
            )
        )
