"""From a repository and a ref to a built environment, as a server start needs it.

The hub does this inside a server's start, so its progress stream is the build's event
stream (the binder service relays it with BinderHub's phase names): resolve the ref, fetch
into the hub's mirror, read the spec at that commit, compute the content key, and either
find the environment in the cache or build it. Launches that need the same environment
share one build, whoever asked first; builds of different environments queue, in a queue
bounded per account and overall (``binder.limits.queued_per_user`` and ``queued``).

A launch given up while its build waits takes the build with it, unless another launch
awaits the same environment. A build that has started runs to its end (within its limits)
even when nobody waits for it any more: its environment is cached for the next launch.

Git and tar run as the fetch account (:meth:`Builder.fetch_account`) on repositories' data:
the mirrors and the inspected trees are its own, never root's, never the build account's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hubstack.config import Config
from hubstack.envs import package_store
from hubstack.envs.builder import (
    BASE_REQUIREMENTS,
    BUILDER_VERSION,
    SERVER_OVERRIDES,
    Builder,
    BuildFailed,
    BuildJob,
    write_files,
)
from hubstack.envs.cache import LAYER_KIND, SPEC_ORIGIN, STORE_KIND, BuiltEnv, EnvCache
from hubstack.envs.conda_layer import layer_key as conda_layer_key
from hubstack.envs.conda_layer import layer_plan
from hubstack.envs.git import GitError, export, fetch, resolve_ref
from hubstack.envs.layout import ENV
from hubstack.envs.packages import Harvest
from hubstack.envs.server_layer import PTH, layer_key
from hubstack.envs.server_layer import applies as on_layer
from hubstack.envs.spec import EnvSpec, SpecError, detect, environment_key
from hubstack.errors import Explained
from hubstack.hub import metrics
from hubstack.launch.repo import RepoSource, repo_source
from hubstack.system import cgroups
from hubstack.system.accounts import Account

Phase = Callable[[str, str], None]
"""Report a step: BinderHub's phase name and a message."""
Origin = tuple[str, str]
"""What an environment is built from, as ``env list`` shows it: a repository and its ref,
or a declared spec (``spec:<environment id>`` and its definition's hash)."""

log = logging.getLogger(__name__)

LOG_REPLAY = 100
LOCK_POLL = 0.2
"""Seconds between two tries of the cache's build lock while a build waits for it."""
INSPECTED_MAX = 256
"""Commits whose spec and key the hub remembers (a few hundred bytes each)."""
PYTHON_NAME = re.compile(r"python(3\.[0-9]{1,2})")
PYTHON_DIRS = (Path("/usr/local/bin"), Path("/usr/bin"))
# What a package store entry's build is given as its spec: nothing of a repository's.
STORE_SPEC = EnvSpec("", STORE_KIND, None, (), (), False, None, None, (), False, ())
# A conda server layer's (envs/conda_layer.py), given its conda plan: nothing else.
CONDA_LAYER_SPEC = EnvSpec("", LAYER_KIND, None, (), (), False, None, None, (), False, ())


class PrepareFailed(Explained):
    """The repository cannot give an environment; ``message`` says why, for the user."""


@dataclass(frozen=True)
class Prepared:
    """A built environment and the repository content a server of it gets."""

    env: BuiltEnv
    source: RepoSource
    commit: str
    mirror: Path
    start: str | None
    notices: tuple[str, ...] = ()


@dataclass
class _Build:
    """A build under way, with the log lines seen so far for launches that join late."""

    task: asyncio.Task[BuiltEnv]
    owners: set[str] = field(default_factory=set)  # the accounts whose launches await it
    started: bool = False  # False: still in the queue
    lines: list[str] = field(default_factory=list)
    listeners: list[Callable[[str], None]] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.lines = [*self.lines[-(LOG_REPLAY - 1) :], text]
        for listener in list(self.listeners):
            listener(text)


def available_pythons(configured: dict[str, Path]) -> dict[str, Path]:
    """Python versions a build may use: the configured ones, else ``python3.X`` on the host.

    Only world-executable interpreters count, since servers run them as users' accounts.
    """
    if configured:
        return dict(configured)
    found: dict[str, Path] = {}
    for folder in PYTHON_DIRS:
        with contextlib.suppress(OSError):
            for path in folder.iterdir():
                match = PYTHON_NAME.fullmatch(path.name)
                if match and match[1] not in found and path.stat().st_mode & 0o001:
                    found[match[1]] = path
    return found


def _newest(versions: dict[str, Path]) -> str:
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


class Repositories:
    """One per hub: the cache, the builder and the builds under way."""

    @classmethod
    def of(cls, config: Config) -> Repositories:
        """The repositories of a hub's config, with the build limits the hub enforces: the
        configured ones as root, none in dev mode (which has no cgroups to ask for)."""
        preference = config.hub.limits if os.geteuid() == 0 else "off"
        return cls(config, cgroups.detect(preference))

    def __init__(self, config: Config, enforcer: cgroups.Enforcer) -> None:
        self.binder = config.binder
        self.cache = EnvCache.of(config)
        self.builder = Builder(self.binder, self.cache, enforcer)
        self.pythons = available_pythons(self.binder.pythons)
        self._builds: dict[str, _Build] = {}
        self._one_build = asyncio.Lock()
        self._fetches: dict[Path, asyncio.Lock] = {}
        self._resolved: dict[tuple[str, str], tuple[str, float]] = {}  # (url, ref): commit, when
        self._inspected: OrderedDict[tuple[Path, str], tuple[EnvSpec, str, str]] = OrderedDict()
        self._keeping: set[asyncio.Task[None]] = set()
        # Conda server layers (by key) being built, or whose build failed since the hub
        # started: a launch asks for a missing one once, a new build of its Python again.
        self._layers_asked: set[str] = set()

    async def prepare(
        self, source: RepoSource, phase: Phase, pin: str | None = None, owner: str | None = None
    ) -> Prepared:
        """Resolve, fetch, inspect and (if needed) build; raise :class:`PrepareFailed`.

        ``owner`` names the account launching, for its share of the build queue (None: an
        operator's rebuild, which only the overall limit counts)."""
        await asyncio.to_thread(self.cache.create)
        fetcher = await asyncio.to_thread(self.builder.fetch_account)
        try:
            commit = pin or await self._resolve(source, phase, fetcher)
            mirror = await self._fetch(source, commit, phase, fetcher)
            spec, key, python = await self._inspect(mirror, commit, fetcher)
        except (GitError, SpecError) as exc:
            # A commit that could not be fetched (the branch moved meanwhile) is not
            # launched again: the next launch asks the repository.
            self._resolved.pop((source.url, source.ref), None)
            raise PrepareFailed(exc.message) from None
        for notice in spec.notices:
            phase("fetching", f"Note: {notice}")
        env = self.cache.get(key)
        metrics.environment_found(cached=env is not None)
        if env is None:
            job = BuildJob(
                key=key, spec=spec, python=self.pythons[python], mirror=mirror, commit=commit
            )
            env = await self._build(job, (source.url, source.ref), python, phase, owner)
        else:
            phase("built", f"Found the environment {key[:12]}, built before")
            await self._layer_missing(env)
        await asyncio.to_thread(self.cache.touch, key)
        return Prepared(env, source, commit, mirror, spec.start, spec.notices)

    async def prepare_files(
        self, files: Mapping[str, str], origin: Origin, phase: Phase
    ) -> BuiltEnv:
        """Find or build the environment of a declared spec: ``files`` as a repository's
        root holds them, read, keyed and built as a repository's would be, so the same
        files share one cache entry whether declared or in a repository."""
        await asyncio.to_thread(self.cache.create)
        try:
            spec, key, python = await asyncio.to_thread(self._files_key, files)
        except SpecError as exc:
            raise PrepareFailed(exc.message) from None
        for notice in spec.notices:
            phase("fetching", f"Note: {notice}")
        env = self.cache.get(key)
        if env is None:
            job = BuildJob(
                key=key, spec=spec, python=self.pythons[python], mirror=None, commit="", files=files
            )
            env = await self._build(job, origin, python, phase, None)
        else:
            phase("built", f"Found the environment {key[:12]}, built before")
            await self._layer_missing(env)
        return env

    def _files_key(self, files: Mapping[str, str]) -> tuple[EnvSpec, str, str]:
        """The spec and key of ``files``, read from a private folder of root's."""
        work = Path(tempfile.mkdtemp(prefix="inspect-", dir=self.cache.work))
        try:
            write_files(work / "repo", files)
            return self._key(work / "repo")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def rebuild(self, env: BuiltEnv, phase: Phase) -> Prepared:
        """Build ``env`` again, from its repository at the commit it was built from (for
        champions: after a fix of the site's index, or to pick up a changed base). A
        declared spec's build has no repository: its definition in the config is built."""
        if env.repo.startswith(SPEC_ORIGIN):
            name = env.repo.removeprefix(SPEC_ORIGIN)
            raise PrepareFailed(
                f"{env.key[:12]} is the build of the declared environment {name!r}: change "
                f"its spec, or build it with `hubstack env build {name}`."
            )
        source = repo_source(env.repo, env.ref, self.binder)
        lock = await asyncio.to_thread(self.cache.acquire_build_lock)
        try:
            await asyncio.to_thread(self.cache.remove, env.key)
        finally:
            lock.close()
        prepared = await self.prepare(source, phase, pin=env.commit)
        await self.settled()  # the command exits next: its wheels are kept first
        return prepared

    async def _resolve(self, source: RepoSource, phase: Phase, fetcher: Account | None) -> str:
        """The commit of the ref; one resolved less than ``binder.ref_cache`` ago is reused
        without asking the repository again (BinderHub keeps resolved refs too, revalidated
        with GitHub's ETags, which git's protocol has no cheap equivalent of), so a launch
        costs no round trip to the forge, and a new commit on the branch is launched once
        that time has passed."""
        now = time.monotonic()
        known = self._resolved.get((source.url, source.ref))
        if known is not None and now - known[1] < self.binder.ref_cache:
            phase("fetching", f"{source.ref} is commit {known[0][:12]}, resolved just before")
            return known[0]
        phase("fetching", f"Resolving {source.ref} in {source.url}")
        commit = await resolve_ref(
            source.url, source.ref, schemes=self.binder.allowed_schemes, timeout=60, user=fetcher
        )
        for stale in [
            k for k, (_, at) in self._resolved.items() if now - at >= self.binder.ref_cache
        ]:
            del self._resolved[stale]
        self._resolved[(source.url, source.ref)] = (commit, now)
        return commit

    async def _fetch(
        self, source: RepoSource, commit: str, phase: Phase, fetcher: Account | None
    ) -> Path:
        mirror = self.cache.mirror(source.url)
        lock = self._fetches.setdefault(mirror, asyncio.Lock())
        async with lock:
            phase("fetching", f"Fetching commit {commit[:12]}")
            await asyncio.to_thread(_drop_foreign_mirror, mirror, fetcher)
            await fetch(
                source.url,
                source.ref,
                commit,
                mirror,
                schemes=self.binder.allowed_schemes,
                max_size=self.binder.limits.repository_size,
                timeout=self.binder.limits.time,
                user=fetcher,
                log=lambda line: phase("fetching", line),
            )
        return mirror

    async def _inspect(
        self, mirror: Path, commit: str, fetcher: Account | None
    ) -> tuple[EnvSpec, str, str]:
        """Read the spec at ``commit`` from a private export (the fetch account's, in a
        folder only it and root reach, so nothing a build runs can change it while it is
        read) and compute the environment's key. Both follow from the commit's files alone
        (and the hub's settings, fixed while it runs), so a commit launched before is not
        exported and hashed again."""
        if (known := self._inspected.get((mirror, commit))) is not None:
            self._inspected.move_to_end((mirror, commit))
            return known
        work = Path(tempfile.mkdtemp(prefix="inspect-", dir=self.cache.work))
        try:
            if fetcher is not None:
                os.chown(work, fetcher.uid, fetcher.gid)
            await export(mirror, commit, work / "repo", user=fetcher)
            found = await asyncio.to_thread(self._key, work / "repo")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self._inspected[(mirror, commit)] = found
        while len(self._inspected) > INSPECTED_MAX:
            self._inspected.popitem(last=False)
        return found

    def _key(self, tree: Path) -> tuple[EnvSpec, str, str]:
        if not self.pythons:
            raise SpecError("This hub has no Python interpreter for building environments.")
        spec = detect(
            tree, self.pythons, self.binder.conda, self.binder.python_sources, self.binder.r
        )
        python = spec.python or _newest(self.pythons)
        salt = f"{BUILDER_VERSION}\n{python}\n{_server_requirements()}"
        return spec, environment_key(tree, spec, salt), python

    async def _layer(self, job: BuildJob, python: str, build: _Build) -> BuildJob:
        """``job`` on its server layer, built first if the cache lacks it (the caller holds
        the build locks); ``job`` itself when its kind keeps the server packages."""
        if not on_layer(job.spec):
            return job
        key = await asyncio.to_thread(layer_key, job.python, python, _layer_salt())
        if self.cache.get(key) is None:
            build.line(f"Building the shared server layer {key[:12]} for Python {python}")
            spec = dataclasses.replace(job.spec, post_build=None)
            layer = BuildJob(key, spec, job.python, None, "", files={}, server_layer=True)
            # Part of the build that needs it (its metrics count one build).
            await self.builder.build(layer, build.line)
            meta = {
                "repo": f"server layer for Python {python}",
                "ref": "",
                "commit": "",
                "python": python,
                "kind": LAYER_KIND,
            }
            self._keep(await asyncio.to_thread(self.cache.complete, key, meta))
        return dataclasses.replace(job, layer=self.cache.path(key))

    async def _build(
        self, job: BuildJob, origin: Origin, python: str, phase: Phase, owner: str | None
    ) -> BuiltEnv:
        """Join the build of ``job.key`` if one is under way, else queue it."""
        build = self._builds.get(job.key)
        if build is None:
            self._check_queue(owner)
            build = _Build(asyncio.ensure_future(self._run(job, origin, python)))
            self._builds[job.key] = build
            metrics.build_queued(job.key)
            build.task.add_done_callback(lambda _: self._builds.pop(job.key, None))
            build.task.add_done_callback(lambda _: metrics.build_left_queue(job.key))
        else:
            phase("building", "Another launch is building this environment: following its log")
            for line in build.lines:
                phase("building", line)
        if owner is not None:
            build.owners.add(owner)

        def follow(line: str) -> None:
            phase("building", line)

        build.listeners.append(follow)
        try:
            # Shielded: a launch given up by its user must not stop a build others await.
            env = await asyncio.shield(build.task)
        except BuildFailed as exc:
            raise PrepareFailed(exc.message) from None
        finally:
            with contextlib.suppress(ValueError):
                build.listeners.remove(follow)
            if not build.listeners and not build.started:
                build.task.cancel()  # every launch waiting for it was given up
        phase("built", f"Built the environment {job.key[:12]}")
        return env

    def _check_queue(self, owner: str | None) -> None:
        """Refuse a new build when its account, or the hub, has as many waiting as allowed."""
        waiting = [build for build in self._builds.values() if not build.started]
        mine = sum(owner in build.owners for build in waiting) if owner is not None else 0
        if mine >= self.binder.limits.queued_per_user:
            raise PrepareFailed(
                f"You already have {mine} builds waiting; launch this repository again "
                "when one of them has started."
            )
        if len(waiting) >= self.binder.limits.queued:
            raise PrepareFailed(
                f"{len(waiting)} builds are waiting on this hub already, as many as it queues; "
                "launch again in a few minutes."
            )

    async def _build_lock(self, build: _Build) -> IO[str]:
        """The cache's build lock (a build from the command line may hold it), tried without
        blocking so that a build given up while it waits can stop waiting."""
        lock = self.cache.try_build_lock()
        if lock is None:
            build.line("Waiting for a build started from the command line to finish")
        while lock is None:
            await asyncio.sleep(LOCK_POLL)
            lock = self.cache.try_build_lock()
        return lock

    async def _run(self, job: BuildJob, origin: Origin, python: str) -> BuiltEnv:
        build = self._builds[job.key]
        if self._one_build.locked():
            build.line("Waiting for another environment's build to finish")
        async with self._one_build:
            lock = await self._build_lock(build)
            try:
                existing = self.cache.get(job.key)  # built meanwhile, e.g. by the CLI
                if existing is not None:
                    return existing
                build.started = True
                metrics.build_left_queue(job.key)
                build.line(f"Building the environment {job.key[:12]} for {origin[0]}")
                began = time.monotonic()
                try:
                    job = await self._layer(job, python, build)
                    job = await asyncio.to_thread(self._with_store, job)
                    await self.builder.build(job, build.line)
                except BaseException:
                    metrics.build_finished(time.monotonic() - began, ok=False)
                    raise
                metrics.build_finished(time.monotonic() - began, ok=True)
                meta = {
                    "repo": origin[0],
                    "ref": origin[1],
                    "commit": job.commit,
                    "python": python,
                    "kind": job.spec.kind,
                    "notices": list(job.spec.notices),
                }
                if job.layer is not None and await asyncio.to_thread(_uses_layer, job):
                    meta["layer"] = job.layer.name
                if job.store:
                    meta["stores"] = await asyncio.to_thread(self._stores_used, job)
                if job.spec.conda is not None:
                    prefix = self.cache.path(job.key) / ENV
                    plan = await asyncio.to_thread(layer_plan, prefix, self.binder.conda)
                    if plan is not None:
                        meta["fork_layer"] = conda_layer_key(plan, self.binder.conda, _layer_salt())
                env = await asyncio.to_thread(self.cache.complete, job.key, meta)
            finally:
                lock.close()
        self._keep(env)
        return env

    def _store_entries(self, layer: str) -> list[BuiltEnv]:
        """The package store's entries compiled by the interpreter of ``layer``."""
        return [entry for entry in self.cache.stores() if entry.layer == layer]

    def _with_store(self, job: BuildJob) -> BuildJob:
        """``job`` offered what the package store holds for its layer's interpreter, when it
        can use it (see :mod:`hubstack.envs.package_store`)."""
        if job.layer is None or self.builder.packages is None:
            return job
        if not package_store.applies(job.spec):
            return job
        entries = self._store_entries(job.layer.name)
        held = package_store.contents((entry.path, entry.packages) for entry in entries)
        return dataclasses.replace(job, store=held) if held else job

    def _stores_used(self, job: BuildJob) -> list[str]:
        """The store entries the finished build of ``job`` names (marked used now)."""
        assert job.layer is not None
        entries = {entry.key: entry.path for entry in self._store_entries(job.layer.name)}
        used = package_store.used_entries(self.cache.path(job.key) / ENV, entries)
        for key in used:
            self.cache.touch(key)
        return used

    async def _store(self, env: BuiltEnv, kept: Harvest) -> str | None:
        """Build a package store entry of the wheels just kept for ``env`` that the store
        lacks, for its layer's interpreter (the caller holds the build locks); its line
        for the build's log, or None when nothing was stored."""
        packages = self.builder.packages
        layer = self.cache.get(env.layer) if env.layer is not None else None
        if packages is None or layer is None:
            return None
        held = {pin for entry in self._store_entries(layer.key) for pin in entry.packages}
        wheels = [*kept.added, *kept.known]
        names = await asyncio.to_thread(package_store.new_wheels, wheels, held, packages.wheels)
        if not names:
            return None
        key = package_store.entry_key(layer.key, names)
        if self.cache.get(key) is None:
            python = layer.prefix / "bin/python"
            job = BuildJob(key, STORE_SPEC, python, None, "", files={}, store_wheels=tuple(names))
            await self.builder.build(job, lambda _line: None)
            meta = {
                "repo": f"package store for Python {layer.python}",
                "ref": "",
                "commit": "",
                "python": layer.python,
                "kind": STORE_KIND,
                "layer": layer.key,
                "packages": package_store.entry_meta(names),
            }
            await asyncio.to_thread(self.cache.complete, key, meta)
        return f"Package store: {len(names)} packages unpacked and compiled into {key[:12]}"

    async def _conda_layer(self, env: BuiltEnv) -> str | None:
        """Build the conda server layer of the Python of ``env`` if the cache lacks it (the
        caller holds the build locks; see :mod:`hubstack.envs.conda_layer`); its line for
        the build's log, or None."""
        key = env.fork_layer
        if key is None or self.cache.get(key) is not None:
            return None
        plan = await asyncio.to_thread(layer_plan, env.prefix, self.binder.conda)
        if plan is None or conda_layer_key(plan, self.binder.conda, _layer_salt()) != key:
            return None
        spec = dataclasses.replace(CONDA_LAYER_SPEC, conda=plan)
        host = self.pythons[_newest(self.pythons)]  # unused by a conda build
        await self.builder.build(BuildJob(key, spec, host, None, "", files={}), lambda _: None)
        meta = {
            "repo": f"conda server layer for {plan.specs[0]}",
            "ref": "",
            "commit": "",
            "python": env.python,
            "kind": LAYER_KIND,
        }
        await asyncio.to_thread(self.cache.complete, key, meta)
        return f"Conda server layer {key[:12]} built for {plan.specs[0]}"

    async def _layer_missing(self, env: BuiltEnv) -> None:
        """Build the conda server layer of ``env`` in the background if it lacks one (its
        build's was cut short by a stop of the hub, or pruned)."""
        key = env.fork_layer
        if key is None or key in self._layers_asked:
            return
        if await asyncio.to_thread(self.cache.get, key) is None:
            self._keep(env, packages=False)

    def _keep(self, env: BuiltEnv, packages: bool = True) -> None:
        """Keep the packages of ``env`` in the package cache, and build the conda server
        layer of its Python, once its launch went on."""
        if env.fork_layer is not None:
            self._layers_asked.add(env.fork_layer)
        task = asyncio.create_task(self._keep_packages(env, packages))
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    async def _keep_packages(self, env: BuiltEnv, packages: bool) -> None:
        """Add a finished build's wheels to the package cache and the package store, then
        build the conda server layer it lacks (from the packages just kept), after its launch
        went on and before the next build starts (it holds the build locks), so that build
        finds them."""
        async with self._one_build:
            lock = self.cache.try_build_lock()
            while lock is None:
                await asyncio.sleep(LOCK_POLL)
                lock = self.cache.try_build_lock()
            kept = stored = layered = None
            try:
                if packages:
                    kept = await asyncio.to_thread(self.builder.keep_packages, env)
                if kept is not None:
                    stored = await self._store(env, kept)
            except BuildFailed as exc:
                log.warning(
                    "Package store: the wheels of %s were not stored: %s", env.key[:12], exc
                )
            except Exception:
                log.exception("Package cache: the wheels of %s were not kept", env.key[:12])
            try:
                layered = await self._conda_layer(env)
            except BuildFailed as exc:
                log.warning("Conda server layer of %s not built: %s", env.key[:12], exc)
            except Exception:
                log.exception("Conda server layer of %s not built", env.key[:12])
            else:
                self._layers_asked.discard(env.fork_layer or "")
            finally:
                lock.close()
        if kept is not None:
            line = (
                f"Package cache: {len(kept.added)} wheels added, {len(kept.known)} already "
                f"kept, not kept: {', '.join(kept.skipped) or 'none'}"
            )
            for text in (stored, line):  # the cache's line after: what waits for it sees both
                if text is not None:
                    log.info("%s (%s)", text, env.key[:12])
                    await asyncio.to_thread(_append, self.cache.log(env.key), text)
        if layered is not None:
            log.info("%s (%s)", layered, env.key[:12])
            await asyncio.to_thread(_append, self.cache.log(env.key), layered)

    async def settled(self) -> None:
        """Wait until the wheels of every finished build are in the package cache (for a
        command that builds and exits, and for tests)."""
        while self._keeping:
            await asyncio.gather(*self._keeping, return_exceptions=True)


def _layer_salt() -> str:
    """What every server layer's key (conda ones too) depends on besides its Python."""
    return f"{BUILDER_VERSION}\n{_server_requirements()}"


def _server_requirements() -> str:
    """What the server packages are: part of every environment's and layer's key."""
    return BASE_REQUIREMENTS.read_text() + SERVER_OVERRIDES.read_text()


def _uses_layer(job: BuildJob) -> bool:
    """Whether the build of ``job`` kept its server layer (it falls back to installing the
    server packages when the repository's requirements cannot have the layer's versions)."""
    env = job.layer.with_name(job.key) / ENV if job.layer is not None else None
    return env is not None and any(env.glob(f"lib/python*/site-packages/{PTH}"))


def _append(path: Path, line: str) -> None:
    """Add ``line`` to a build's log (root's), where champions read what the build did."""
    with path.open("a") as file:
        file.write(f"{line}\n")


def _drop_foreign_mirror(mirror: Path, fetcher: Account | None) -> None:
    """Remove a mirror another account owns (after ``binder.build_account`` was renamed,
    whose name the fetch account's follows): git runs as the mirror's owner, so it is
    fetched anew as the fetch account's own."""
    owner = os.geteuid() if fetcher is None else fetcher.uid
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(mirror).st_uid != owner:
            shutil.rmtree(mirror)
