"""Environments the config declares (``repository`` or ``spec``) instead of a hand-built
``prefix``: built by the repository builder (same account, sandbox, limits and cache) when
the hub starts, in the background, or by ``hubstack env build``.

The cache is addressed by content, so the definition names its build: a changed spec (or a
repository whose ref moved to other environment files) is a new key, built beside the old
one. New starts get the new build once it is complete; running servers keep the prefix they
started with (the spawner records its key); ``env prune`` removes the old one once no
running server uses it and it is no declared environment's current build.

Each environment's current build is recorded in ``<binder.root>/declared/<id>`` (root's),
written only once the build is complete: a hub killed during a build finds its record
still naming the previous build, builds again (the builder clears what the killed build
left) and never uses anything half-built, as the cache gives out only complete entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hubstack.config.models import Config, Environment
from hubstack.envs.cache import SPEC_ORIGIN, BuiltEnv
from hubstack.envs.repository import Phase, PrepareFailed, Repositories
from hubstack.launch.repo import repo_source
from hubstack.untrusted import InvalidLaunch

RECORDS = "declared"


def definition_hash(spec: Mapping[str, str]) -> str:
    """A short hash of a spec's files (shown in ``env list`` as the ref of its build)."""
    return hashlib.sha256(json.dumps(dict(spec), sort_keys=True).encode()).hexdigest()[:12]


def origin_of(environment: Environment) -> tuple[str, str]:
    """What ``env list`` shows as the repository and ref of a declared environment's build."""
    if environment.repository is not None:
        return environment.repository.url, environment.repository.ref
    return f"{SPEC_ORIGIN}{environment.id}", definition_hash(environment.spec or {})


@dataclass
class State:
    """Where one declared environment's build is: under way, complete, or failed."""

    built: BuiltEnv | None = None
    failed: str | None = None


class Declared:
    """The declared environments of one hub, and their builds."""

    def __init__(self, config: Config, repositories: Repositories) -> None:
        self.config = config
        self.repositories = repositories
        self.environments = [e for e in config.environments if e.declared]
        self.states = {e.id: State() for e in self.environments}
        self.records = config.binder.root / RECORDS
        self._task: asyncio.Future[dict[str, str | None]] | None = None

    def start(self, log: logging.Logger) -> None:
        """Build every declared environment in the background (the hub's start), with the
        builds' lines and failures in ``log`` (the hub's)."""

        def phase_for(env_id: str) -> Phase:
            def phase(name: str, line: str) -> None:
                level = logging.ERROR if name == "failed" else logging.INFO
                log.log(level, "environment %s: %s", env_id, line)

            return phase

        if self.environments and self._task is None:
            self._task = asyncio.ensure_future(self.build_all(phase_for))

    async def build_all(
        self, phase_for: Callable[[str], Phase], only: str | None = None
    ) -> dict[str, str | None]:
        """Build (or find) each declared environment, one after the other (the builder
        runs one build at a time anyway); what failed, by id, with why."""
        failures: dict[str, str | None] = {}
        for environment in self.environments:
            if only is None or environment.id == only:
                failures[environment.id] = await self.build(environment, phase_for(environment.id))
        return failures

    async def build(self, environment: Environment, phase: Phase) -> str | None:
        """Build one; None when it is ready, else why it failed."""
        state = self.states[environment.id]
        state.failed = None
        try:
            built = await self._prepare(environment, phase)
        except PrepareFailed as exc:
            state.failed = exc.message
            phase("failed", exc.message)
            return exc.message
        await asyncio.to_thread(self._record, environment.id, built.key)
        state.built = built
        return None

    async def _prepare(self, environment: Environment, phase: Phase) -> BuiltEnv:
        repositories = self.repositories
        if environment.spec is not None:
            return await repositories.prepare_files(environment.spec, origin_of(environment), phase)
        assert environment.repository is not None
        declared = environment.repository
        try:
            source = repo_source(declared.url, declared.ref, self.config.binder)
        except InvalidLaunch as exc:
            raise PrepareFailed(exc.message) from None
        return (await repositories.prepare(source, phase)).env

    def _record(self, env_id: str, key: str) -> None:
        """Name ``key`` as ``env_id``'s current build, atomically."""
        self.records.mkdir(mode=0o700, exist_ok=True)
        tmp = self.records / f".{env_id}.tmp"
        tmp.write_text(key + "\n")
        tmp.rename(self.records / env_id)

    def built(self, env_id: str) -> BuiltEnv | None:
        """The build new starts of ``env_id`` get, once complete in this hub's run."""
        state = self.states.get(env_id)
        return None if state is None else state.built

    def refusal(self, environment: Environment) -> str | None:
        """Why a server of ``environment`` cannot start now (None: it can)."""
        state = self.states.get(environment.id)
        if state is None or state.built is not None:
            return None
        if state.failed is not None:
            return (
                f"The environment {environment.display} could not be built (the hub's log "
                "says why); choose another environment."
            )
        return (
            f"The environment {environment.display} is being built; choose it again in a "
            "few minutes, when the form no longer says so."
        )

    def form_notes(self) -> dict[str, str]:
        """What the spawn form says of the environments not ready (by id)."""
        notes = {}
        for environment in self.environments:
            state = self.states[environment.id]
            if state.built is None:
                notes[environment.id] = (
                    "Could not be built" if state.failed else "Being built; not ready yet"
                )
        return notes


def in_use(states: list[dict[str, object]]) -> set[str]:
    """The builds running servers use, from their saved states (a server's spawner records
    its build's key and forgets it when the server stops), so it holds after a restart."""
    return {str(state["env_key"]) for state in states if state.get("env_key")}


def current_keys(config: Config) -> set[str]:
    """The builds the records of the config's declared environments name: what new starts
    get, kept by ``env prune`` however long unused."""
    keys = set()
    for environment in config.environments:
        if environment.declared:
            with contextlib.suppress(OSError):
                keys.add((config.binder.root / RECORDS / environment.id).read_text().strip())
    return keys
