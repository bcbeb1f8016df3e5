"""The binder service: the launch page, BinderHub's ``/v2`` share links and ``/build`` API.

Runs as a hub-managed service (``python -m hubstack.services.binder``) behind the proxy at
``/services/binder/``. Browsers log in through the hub with OAuth; Binder API clients send
a hub API token (``Authorization: token ...`` or ``?token=``, since an EventSource cannot
send headers). The launches themselves are the hub's: see :mod:`hubstack.services.relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from pydantic import ValidationError
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.httputil import url_concat
from tornado.iostream import StreamClosedError
from tornado.log import app_log, enable_pretty_logging
from tornado.web import Application, HTTPError, RedirectHandler, RequestHandler, authenticated

from hubstack.config.models import Config
from hubstack.envs.cache import BuiltEnv
from hubstack.envs.repository import PrepareFailed, Repositories
from hubstack.exits import exit_now
from hubstack.hub.logs import redact_handlers
from hubstack.hub.status import builds_in_use
from hubstack.launch.form import REPOSITORY_WARNING, source_facts
from hubstack.launch.policy import repository_launch_timeout
from hubstack.launch.repo import (
    RepoSource,
    ShareLinks,
    repo_source,
    server_name,
    server_path,
    share_links,
    source_from_spec,
)
from hubstack.pages import html_templates
from hubstack.services.relay import (
    KEEPALIVE,
    ClientGone,
    Event,
    HubClient,
    Launch,
    failed_event,
    sse,
)
from hubstack.units import format_duration, format_size, parse_duration
from hubstack.untrusted import InvalidLaunch, choose

BADGE = (Path(__file__).with_name("static") / "badge_logo.svg").read_bytes()
KEEPALIVE_INTERVAL = 25.0
# BinderHub's answer to EventSource reconnecting by itself: keep the finished stream open
# until the client closes it, at most this long.
HOLD_OPEN = 60.0
PATH_ARGUMENTS = ("urlpath", "labpath", "filepath")
MAX_HUB_CONNECTIONS = 1000  # each launch being followed holds one progress stream
HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
PHASES = (
    ("waiting", "Waiting", "Waiting for the hub..."),
    ("fetching", "Fetching", "Fetching the repository..."),
    ("building", "Building", "Building the environment..."),
    ("built", "Built", "The environment is built."),
    ("launching", "Launching", "Starting your server..."),
    ("ready", "Ready", "Ready: opening your server..."),
)

_templates = html_templates("hubstack.services")


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


def content_security_policy(nonce: str) -> str:
    """Only this page's own inline style and script run; requests go to this origin only."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'self'"
    )


def _first(value: str | None) -> str:
    """The first of a comma-separated header (proxies append their own value)."""
    return (value or "").split(",", 1)[0].strip()


def public_origin(headers: Mapping[str, str], fallback_host: str) -> str:
    """The hub's public ``scheme://host[:port]`` as the client reached it.

    The proxy keeps the client's Host and adds X-Forwarded-*; a proxy in front of it may
    set X-Forwarded-Host/Proto. A value that is not a plain host is ignored, so nothing a
    client sends can put more than a host into the links it is shown.
    """
    proto = _first(headers.get("X-Forwarded-Proto")).lower()
    scheme = proto if proto in ("http", "https") else "http"
    for host in (_first(headers.get("X-Forwarded-Host")), headers.get("Host", "")):
        if HOST.fullmatch(host):
            return f"{scheme}://{host}"
    return f"{scheme}://{fallback_host}"


def split_spec(path: str, prefix: str) -> tuple[str, str]:
    """``<provider>/<spec>`` after ``prefix`` in a raw (still %-escaped) request path."""
    provider, _, spec = path.removeprefix(prefix).partition("/")
    return provider, spec


def _error_message(error: BaseException | None, reason: str) -> str:
    """The sentence of an HTTPError raised on purpose; for anything else, only the reason."""
    if isinstance(error, HTTPError) and error.log_message:
        return error.log_message % error.args if error.args else error.log_message
    return reason


@dataclass(frozen=True)
class Service:
    """What every handler needs: the config, where the service lives, and the hub."""

    config: Config
    prefix: str  # JUPYTERHUB_SERVICE_PREFIX: /<hub base>services/binder/
    hub: HubClient
    page_auth: HubOAuth
    api_auth: HubOAuth
    environments: Repositories
    rebuilding: dict[str, str] = field(default_factory=dict)
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def rebuild(self, env: BuiltEnv) -> None:
        """Rebuild in the background; the build lock makes it wait for the hub's builds."""
        if env.key in self.rebuilding:
            return
        self.rebuilding[env.key] = f"{env.key[:12]} {env.repo} at {env.commit[:10]}"

        async def run() -> None:
            try:
                await self.environments.rebuild(env, lambda _phase, _line: None)
            except PrepareFailed as exc:
                app_log.warning("The rebuild of %s failed: %s", env.key[:12], exc.message)
            finally:
                self.rebuilding.pop(env.key, None)

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def relay_timeout(self) -> float:
        """Longest the service follows a launch: a little longer than the hub lets it take,
        so the hub's own verdict on a launch that runs out of time reaches the client."""
        return float(repository_launch_timeout(self.config) + 60)


class ServiceHandler(HubOAuthenticated, RequestHandler):
    """Pages of the service, for users logged in to the hub."""

    def initialize(self, service: Service) -> None:
        self.service = service
        self.hub_auth = service.page_auth
        self.nonce = secrets.token_urlsafe(16)

    async def prepare(self) -> None:
        """Identify the user here, asynchronously: the mixin's own lookup blocks the loop."""
        self.current_user = None  # also for error pages, should the lookup fail
        model = await self.hub_auth.get_user(self, sync=False)
        if model is None:
            return
        try:
            self.current_user = self.check_hub_user(model)
        except UserNotAllowed:
            raise HTTPError(403, "Your account may not use the launch service.") from None

    def origin(self) -> str:
        return public_origin(self.request.headers, self.service.config.hub.bind)

    def service_url(self) -> str:
        return self.origin() + self.service.prefix

    def server_for(self, source: RepoSource) -> str:
        return server_name(source, self.service.config.policy.named_servers.name_max_length)

    def page(self, template: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", content_security_policy(self.nonce))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        user = self.current_user
        self.finish(
            render(
                template,
                nonce=self.nonce,
                prefix=self.service.prefix,
                hub_home=f"{self.service.config.hub.base_url}hub/home",
                user=user["name"] if user else "",
                **context,
            )
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A short page with the reason, never a traceback."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = _error_message(error, self._reason)
        self.page("error.html", status_code, title=self._reason, message=message)


class LaunchPageHandler(ServiceHandler):
    """The form: repository, ref and path in; share link, badges and a Launch button out."""

    @authenticated
    async def get(self) -> None:
        form = {name: self.get_argument(name, "") for name in ("repo", "ref", "path", "pathtype")}
        form["pathtype"] = form["pathtype"] or "file"
        if not form["repo"]:
            self.page("launch.html", form=form, error=None, links=None)
            return
        try:
            source = repo_source(form["repo"], form["ref"] or None, self.service.config.binder)
            kind = choose("path type", form["pathtype"], ("file", "url"))
            path = form["path"] or None
            urlpath = server_path(
                path if kind == "url" else None, path if kind == "file" else None, None
            )
            links = share_links(self.service_url(), source, urlpath)
        except InvalidLaunch as exc:
            self.page("launch.html", 400, form=form, error=exc.message, links=None)
            return
        self.page(
            "launch.html",
            form=form,
            error=None,
            links=links,
            source=source,
            facts=source_facts(source),
            warning=REPOSITORY_WARNING,
            launch_url=links.url.removeprefix(self.origin()),
            xsrf=self.xsrf_token.decode(),
            server=self.server_for(source),
        )


class ShareLinkHandler(ServiceHandler):
    """``/v2/<provider>/<spec>``: what the link launches and a Launch button (GET); the
    launch followed live, then the server opened (POST, the button).

    Opening a link starts nothing: a link anyone can send would otherwise run a
    repository of the sender's choice in the account of whoever opens it.
    """

    @authenticated
    async def get(self) -> None:
        launch = self.launch()
        if launch is None:
            return
        source, _, links = launch
        self.page(
            "confirm.html",
            source=source,
            facts=source_facts(source),
            warning=REPOSITORY_WARNING,
            server=self.server_for(source),
            xsrf=self.xsrf_token.decode(),
            links=links,
        )

    @authenticated
    async def post(self) -> None:
        self.check_xsrf_cookie()
        launch = self.launch()
        if launch is None:
            return
        source, urlpath, links = launch
        build = f"{self.service.prefix}build/{source.provider}/{source.spec}"
        self.page(
            "v2.html",
            source=source,
            server=self.server_for(source),
            phases=PHASES,
            build_url=url_concat(build, {"_xsrf": self.xsrf_token.decode()}),
            urlpath=urlpath,
            links=links,
        )

    def launch(self) -> tuple[RepoSource, str, ShareLinks] | None:
        """The link's repository, the path to open and the share links; None once a page
        has said why the link cannot be used."""
        provider, spec = split_spec(self.request.path, self.service.prefix + "v2/")
        try:
            source = source_from_spec(provider, spec, self.service.config.binder)
            urlpath = server_path(*(self.get_argument(name, None) for name in PATH_ARGUMENTS))
            links = share_links(self.service_url(), source, urlpath)
        except InvalidLaunch as exc:
            self.page(
                "error.html", 400, title="This launch link cannot be used", message=exc.message
            )
            return None
        return source, urlpath, links


class BuildHandler(ServiceHandler):
    """BinderHub's build API: ``GET build/<provider>/<spec>`` as a stream of JSON events."""

    def initialize(self, service: Service) -> None:
        super().initialize(service)
        self.hub_auth = service.api_auth
        self.gone = asyncio.Event()
        self.write_lock = asyncio.Lock()

    def on_connection_close(self) -> None:
        self.gone.set()

    def allow_origin(self) -> bool:
        """Let a page of a site the config lists (a Binder client such as thebe) read the
        stream; browsers keep every other site's pages from reading it."""
        origin = self.request.headers.get("Origin", "")
        self.set_header("Vary", "Origin")
        if origin not in self.service.config.binder.cors_origins:
            return False
        self.set_header("Access-Control-Allow-Origin", origin)
        return True

    async def options(self) -> None:
        """The browser's preflight of a cross-site request with a token header."""
        if not self.allow_origin():
            raise HTTPError(403, "Pages of this site may not launch servers here.")
        self.set_header("Access-Control-Allow-Methods", "GET")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Accept, Cache-Control")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    async def get(self) -> None:
        self.allow_origin()
        if "text/event-stream" not in self.request.headers.get("Accept", ""):
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish("This is an event stream: request it with 'Accept: text/event-stream'.\n")
            return
        user = self.current_user
        if user is None:
            self.refuse(403, "Log in to the hub, or send a hub API token of yours.")
            return
        if user.get("kind", "user") != "user":
            self.refuse(403, "A launch starts a user's server: use a user's token.")
            return
        if not self.intended():
            self.refuse(
                403,
                "A launch with the hub's login cookie starts only from the Launch button of "
                "a launch page; open the launch link and press Launch.",
            )
            return
        provider, spec = split_spec(self.request.path, self.service.prefix + "build/")
        config = self.service.config
        try:
            source = source_from_spec(provider, spec, config.binder)
        except InvalidLaunch as exc:
            self.refuse(400, exc.message)
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        launch = Launch(
            hub=self.service.hub,
            user=user["name"],
            server=self.server_for(source),
            source=source,
            hub_origin=self.origin(),
            service_url=self.service_url(),
            token_lifetime=config.binder.token_lifetime,
            relay_timeout=self.service.relay_timeout,
            emit=self.emit,
            gone=self.gone,
        )
        keepalive = asyncio.ensure_future(self.keepalive())
        try:
            with contextlib.suppress(ClientGone):
                try:
                    await launch.run()
                except Exception:
                    app_log.exception("The launch of %s for %s failed", source.url, user["name"])
                    await self.emit(failed_event("The launch service failed; see its log.", 500))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), HOLD_OPEN)
        finally:
            keepalive.cancel()

    def intended(self) -> bool:
        """Whether the user asked for this launch: a request with a token of theirs, or one
        with the login cookie that carries the XSRF token of the page whose Launch button
        was pressed. JupyterHub checks that token only where the browser marks a request as
        cross-site, and a browser reaching the hub over plain HTTP marks none."""
        if getattr(self, "_token_authenticated", False):
            return True
        given = self.get_argument("_xsrf", "").encode()
        return bool(given) and hmac.compare_digest(given, self.xsrf_token)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors before the stream started (e.g. the hub cannot check the token) as an event."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        self.refuse(status_code, _error_message(error, self._reason))

    def refuse(self, status: int, message: str) -> None:
        """Refuse before anything was streamed: the HTTP status says it, and the body too."""
        self.allow_origin()
        self.set_status(status)
        self.set_header("Content-Type", "text/event-stream")
        self.finish(sse(failed_event(message, status)))

    async def emit(self, event: Event) -> None:
        await self.send(sse(event))

    async def send(self, text: str) -> None:
        if self.gone.is_set():
            raise ClientGone
        async with self.write_lock:
            try:
                self.write(text)
                await self.flush()
            except StreamClosedError:
                self.gone.set()
                raise ClientGone from None

    async def keepalive(self) -> None:
        """A comment now and then, so that proxies keep a quiet stream open."""
        while not self.gone.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), KEEPALIVE_INTERVAL)
                return
            with contextlib.suppress(ClientGone):
                await self.send(KEEPALIVE)


class EnvironmentsHandler(ServiceHandler):
    """The champions' page: the built environments, their size and last use; rebuild one,
    remove one, or remove those nobody launched for a while. Admins only."""

    async def prepare(self) -> None:
        await super().prepare()
        user = self.current_user
        if user is not None and not await self.service.hub.is_admin(user["name"]):
            raise HTTPError(403, "Only the hub's admins manage the built environments.")

    @authenticated
    async def get(self) -> None:
        cache = self.service.environments.cache
        envs = await asyncio.to_thread(cache.list)
        self.page(
            "environments.html",
            envs=[
                {
                    "key": env.key,
                    "repo": env.repo,
                    "ref": env.ref,
                    "commit": env.commit,
                    "python": env.python,
                    "size": format_size(env.size),
                    "built": _when(env.built_at),
                    "last_used": _when(env.last_used),
                }
                for env in envs
            ],
            total=format_size(sum(env.size for env in envs)),
            root=cache.root,
            notice=self.get_argument("notice", ""),
            rebuilding=sorted(self.service.rebuilding.values()),
            xsrf=self.xsrf_token.decode(),
        )

    @authenticated
    async def post(self) -> None:
        self.check_xsrf_cookie()
        cache = self.service.environments.cache
        action = self.get_argument("action", "")
        try:
            if action == "prune":
                unused_for = parse_duration(self.get_argument("unused_for", ""))
                keep = await asyncio.to_thread(builds_in_use, self.service.config)
                removed = await asyncio.to_thread(cache.prune, unused_for, keep=keep)
                unused = format_duration(unused_for)
                notice = f"Removed {len(removed)} environment(s) unused for {unused}."
            elif action in ("rebuild", "remove"):
                env = await asyncio.to_thread(cache.find, self.get_argument("key", ""))
                notice = await self._act(action, env)
            else:
                raise HTTPError(400, "Choose rebuild, remove or prune.")
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        self.redirect(url_concat(f"{self.service.prefix}environments", {"notice": notice}))

    async def _act(self, action: str, env: BuiltEnv) -> str:
        if action == "remove":
            if env.key in await asyncio.to_thread(builds_in_use, self.service.config):
                raise HTTPError(
                    400,
                    f"{env.key[:12]} is in use by a running server or is a declared "
                    "environment's current build; it can be removed once neither.",
                )
            await asyncio.to_thread(self.service.environments.cache.remove, env.key)
            return f"Removed {env.key[:12]} ({env.repo})."
        self.service.rebuild(env)
        return f"Rebuilding {env.key[:12]} ({env.repo}); its log is in the hub's build logs."


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")


class BadgeHandler(RequestHandler):
    """The badge for READMEs: public, since forges fetch it without anyone's login."""

    def get(self) -> None:
        self.set_header("Content-Type", "image/svg+xml")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(BADGE)

    head = get


class NotFoundHandler(ServiceHandler):
    async def prepare(self) -> None:
        self.current_user = None
        raise HTTPError(404, "There is no such page in the launch service.")


def make_app(service: Service) -> Application:
    prefix = re.escape(service.prefix)
    kwargs = {"service": service}
    return Application(
        [
            (prefix, LaunchPageHandler, kwargs),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "v2/.*", ShareLinkHandler, kwargs),
            (prefix + "build/.*", BuildHandler, kwargs),
            (prefix + r"badge(?:_logo)?\.svg", BadgeHandler),
            (prefix + "environments", EnvironmentsHandler, kwargs),
            (prefix.removesuffix("/"), RedirectHandler, {"url": service.prefix}),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=kwargs,
        # OAuth cookies last as long as this process; after a restart, users pass through
        # the hub's OAuth again without noticing.
        cookie_secret=secrets.token_bytes(32),
        log_function=_log_request,
    )


def _log_request(handler: RequestHandler) -> None:
    """Access log without query strings: ``?token=`` must not end up in the log."""
    status = handler.get_status()
    log = app_log.warning if status >= 400 else app_log.info
    request = handler.request
    log("%d %s %s %.0fms", status, request.method, request.path, 1000 * request.request_time())


async def serve(config: Config, environ: Mapping[str, str]) -> None:
    url = urlparse(environ["JUPYTERHUB_SERVICE_URL"])
    page_auth = HubOAuth.instance()
    service = Service(
        config=config,
        prefix=environ["JUPYTERHUB_SERVICE_PREFIX"],
        hub=HubClient(
            environ["JUPYTERHUB_API_URL"],
            environ["JUPYTERHUB_API_TOKEN"],
            AsyncHTTPClient(force_instance=True, max_clients=MAX_HUB_CONNECTIONS),
        ),
        page_auth=page_auth,
        # Binder clients open the stream with EventSource, which cannot send headers.
        api_auth=HubOAuth(allow_token_in_url=True),
        environments=Repositories.of(config),
    )
    server = HTTPServer(make_app(service))
    server.listen(url.port or 80, url.hostname or "127.0.0.1")
    app_log.info(
        "binder service listening on %s%s", environ["JUPYTERHUB_SERVICE_URL"], service.prefix
    )
    # The hub stops its services with SIGINT, then SIGTERM: both end the service quietly.
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()
    app_log.info("binder service stopped")
    # At once: neither open event streams nor worker threads hold the hub's shutdown.
    exit_now(0)


def main() -> None:
    enable_pretty_logging()
    redact_handlers(logging.getLogger())
    app_log.setLevel(logging.INFO)
    try:
        config = Config.model_validate_json(os.environ["HUBSTACK_CONFIG_JSON"])
    except KeyError:
        sys.exit("HUBSTACK_CONFIG_JSON is not set: the hub starts this service with its config")
    except ValidationError as exc:
        sys.exit(f"HUBSTACK_CONFIG_JSON is not a valid hubstack config:\n{exc}")
    asyncio.run(serve(config, os.environ))


if __name__ == "__main__":
    main()
