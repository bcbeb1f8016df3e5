"""The cache of environments built from repositories, addressed by content.

Layout under ``binder.root`` (world-readable, on Slurm a path every node sees)::

    envs/<key>/env/        the environment (a uv virtualenv), root-owned and read-only
    envs/<key>/repo/       the repository as its postBuild left it (only with a postBuild)
    envs/<key>/meta.json   written last: an entry without it is not complete and never used
    envs/<key>/            also the shared server layers (kind "server layer"), see
                           server_layer.py; an environment's meta.json names its layer
    envs/<key>/packages/   also the package store's entries (kind "packages"), see
                           package_store.py; an environment's meta.json names those it uses
    logs/<key>.log         the last build log of each environment (capped)
    used/<key>             its modification time is the environment's last launch
    locks/                 one lock for builds, so a CLI rebuild and the hub never race

Nothing under ``binder.root`` is writable by any account but root, nor ever holds a set-id
file or a special file. What builds and fetches write lives outside it, in the work folder
beside the hub's data dir (:func:`work_dir`), which others may traverse but not list::

    <key>.img              a build's size-limited scratch file system, only while it builds
    <key>/                 where it is mounted (its root: the build account's, mode 0700)
    inspect-*/             a commit's files as the fetch account wrote them, while read
    mirrors/<hash>.git     bare mirrors of the repositories, the fetch account's
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from hubstack.config.models import Config
from hubstack.envs.layout import APT, HOME

META = "meta.json"
LAYER_KIND = "server layer"
"""The ``kind`` of a server layer's entry (see :mod:`hubstack.envs.server_layer`)."""
STORE_KIND = "packages"
"""The ``kind`` of a package store's entry (see :mod:`hubstack.envs.package_store`)."""
SPEC_ORIGIN = "spec:"
"""How a declared spec's build names its origin: ``spec:<environment id>`` (see declared.py)."""


@dataclass(frozen=True)
class BuiltEnv:
    """One complete environment, as ``hubstack env list`` and the champion page show it."""

    key: str
    path: Path
    repo: str
    ref: str
    commit: str
    python: str
    kind: str
    size: int
    built_at: float
    last_used: float
    notices: list[str] = field(default_factory=list)
    layer: str | None = None  # the key of the server layer it is built on (or a store
    # entry's: the layer whose interpreter compiled it)
    stores: list[str] = field(default_factory=list)  # the store entries it uses
    # a conda environment's: the key of the conda server layer of its Python (conda_layer.py)
    fork_layer: str | None = None
    packages: dict[str, str] = field(default_factory=dict)  # a store entry's: pin: folder

    @property
    def prefix(self) -> Path:
        return self.path / "env"

    @property
    def layer_prefix(self) -> Path | None:
        """The prefix of the server layer it is built on, if any."""
        return None if self.layer is None else self.path.with_name(self.layer) / "env"

    @property
    def fork_layer_prefix(self) -> Path | None:
        """The prefix of the conda server layer of its Python, built or not."""
        return None if self.fork_layer is None else self.path.with_name(self.fork_layer) / "env"

    @property
    def home(self) -> Path | None:
        """What the build left in its home, if anything."""
        home = self.path / HOME
        return home if home.is_dir() else None

    @property
    def apt(self) -> bool:
        """Whether Debian packages were unpacked into the environment."""
        return (self.prefix / APT).is_dir()

    @property
    def snapshot(self) -> Path | None:
        """The repository as postBuild left it, if the build ran one."""
        repo = self.path / "repo"
        return repo if repo.is_dir() else None


def work_dir(config: Config) -> Path:
    """Where builds and fetches work: beside the hub's data dir, not in it (the data dir is
    root's alone, and the build and fetch accounts must reach their folders), and not under
    ``binder.root`` (which holds nothing but root's files)."""
    data = config.hub.data_dir
    return data.with_name(f"{data.name}-builds")


def tree_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (not following links)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class EnvCache:
    """Paths, metadata and clean-up of the cache; building is :mod:`hubstack.envs.builder`."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.envs = root / "envs"
        self.mirrors = work / "mirrors"
        self.logs = root / "logs"
        self.used = root / "used"
        self.locks = root / "locks"

    @classmethod
    def of(cls, config: Config) -> EnvCache:
        """The cache of a hub's config."""
        return cls(config.binder.root, work_dir(config))

    def create(self) -> None:
        """Make the directories: the ones users' servers read are world-readable."""
        for path, mode in (
            (self.root, 0o755),
            (self.envs, 0o755),
            # Traversable, not listable: the build and fetch accounts reach their own folders.
            (self.work, 0o711),
            (self.mirrors, 0o711),
            (self.logs, 0o700),
            (self.used, 0o700),
            (self.locks, 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)

    def path(self, key: str) -> Path:
        return self.envs / key

    def mirror(self, url: str) -> Path:
        return self.mirrors / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.git"

    def log(self, key: str) -> Path:
        return self.logs / f"{key}.log"

    def get(self, key: str) -> BuiltEnv | None:
        """The complete environment ``key``, or None (absent, or a build that never finished)."""
        path = self.path(key)
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        try:
            last_used = (self.used / key).stat().st_mtime
        except OSError:
            last_used = meta.get("built_at", 0.0)
        return BuiltEnv(
            key=key,
            path=path,
            repo=meta["repo"],
            ref=meta["ref"],
            commit=meta["commit"],
            python=meta["python"],
            kind=meta["kind"],
            size=meta["size"],
            built_at=meta["built_at"],
            last_used=last_used,
            notices=list(meta.get("notices", [])),
            layer=meta.get("layer"),
            stores=list(meta.get("stores", [])),
            fork_layer=meta.get("fork_layer"),
            packages=dict(meta.get("packages", {})),
        )

    def complete(self, key: str, meta: dict[str, Any]) -> BuiltEnv:
        """Mark ``key`` complete: its metadata is written last, atomically."""
        path = self.path(key)
        meta = {**meta, "size": tree_size(path), "built_at": time.time()}
        tmp = path / f".{META}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o644)
        tmp.rename(path / META)
        self.touch(key)
        env = self.get(key)
        assert env is not None
        return env

    def touch(self, key: str) -> None:
        """Record a launch of ``key`` (for ``env list`` and ``env prune``)."""
        mark = self.used / key
        mark.touch()
        os.utime(mark)

    def list(self) -> list[BuiltEnv]:
        """Every complete environment, most recently used first (not the server layers
        nor the package store's entries)."""
        return [env for env in self._entries() if env.kind not in (LAYER_KIND, STORE_KIND)]

    def layers(self) -> list[BuiltEnv]:
        """Every complete server layer."""
        return [env for env in self._entries() if env.kind == LAYER_KIND]

    def stores(self) -> list[BuiltEnv]:
        """Every complete entry of the package store."""
        return [env for env in self._entries() if env.kind == STORE_KIND]

    def _entries(self) -> list[BuiltEnv]:
        if not self.envs.is_dir():
            return []
        found = [self.get(p.name) for p in self.envs.iterdir() if not p.name.startswith(".")]
        return sorted((e for e in found if e), key=lambda e: e.last_used, reverse=True)

    def incomplete(self) -> list[Path]:
        """Entries without metadata: builds that failed or a crash interrupted."""
        if not self.envs.is_dir():
            return []
        return [p for p in self.envs.iterdir() if not (p / META).is_file()]

    def remove(self, key: str) -> None:
        """Delete one environment (its metadata first, so it is never half-used)."""
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            (path / META).unlink()
        shutil.rmtree(path, ignore_errors=True)
        (self.used / key).unlink(missing_ok=True)

    def find(self, prefix: str) -> BuiltEnv:
        """The one environment whose key starts with ``prefix`` (as ``env list`` shows it)."""
        matches = [env for env in self.list() if env.key.startswith(prefix)] if prefix else []
        if len(matches) != 1:
            found = "no environment" if not matches else f"{len(matches)} environments"
            raise ValueError(
                f"{found} with a key starting with {prefix!r}; see `hubstack env list`"
            )
        return matches[0]

    def prune(
        self, unused_for: float, *, dry_run: bool = False, keep: Collection[str] = ()
    ) -> list[BuiltEnv]:
        """Remove the environments nobody launched for ``unused_for`` seconds (a running
        server counts as a launch: the hub marks its environment used while it runs), the
        mirrors only they came from, the server layers (conda ones too) only they used, the
        package store's entries no environment uses that were not used for as long, and
        what failed builds left; never those in ``keep`` (the builds running servers and declared
        environments use). Waits for a build under way, so none is cut short."""
        cutoff = time.time() - unused_for
        old = [env for env in self.list() if env.last_used < cutoff and env.key not in keep]
        if dry_run:
            return old
        lock = self.acquire_build_lock()
        try:
            for env in old:
                self.remove(env.key)
            used = {key for env in self.list() for key in (env.layer, env.fork_layer)}
            for layer in self.layers():
                if layer.key not in used:
                    self.remove(layer.key)
            referenced = {key for env in self.list() for key in env.stores}
            for entry in self.stores():
                if entry.key not in referenced and entry.last_used < cutoff:
                    self.remove(entry.key)
            kept = {self.mirror(env.repo) for env in self.list()}
            for leftover in [*self.incomplete(), *self._stale_work(kept, cutoff)]:
                shutil.rmtree(leftover, ignore_errors=True)
        finally:
            lock.close()
        return old

    def _stale_work(self, kept: set[Path], cutoff: float) -> list[Path]:
        """Mirrors no environment comes from any more, and what interrupted fetches and
        inspections left (the hub's fetch works beside the mirror, as ``.<name>.*.fetch``)."""
        stale = [p for p in self.work.glob("inspect-*") if p.stat().st_mtime < cutoff]
        if self.mirrors.is_dir():
            for path in self.mirrors.iterdir():
                unused = path.name.startswith(".") or path not in kept
                if unused and path.stat().st_mtime < cutoff:
                    stale.append(path)
        return stale

    def acquire_build_lock(self) -> IO[str]:
        """Wait for the cache's build lock; closing the returned file releases it.

        Builds run one at a time on a hub: they share one unprivileged account, and one
        build must never be able to touch another's files. The lock is a file lock, so a
        rebuild from the command line waits for the hub's build and the other way round.
        """
        lock = self._lock_file()
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def try_build_lock(self) -> IO[str] | None:
        """The build lock if it is free now, else None (for waiting without a thread)."""
        lock = self._lock_file()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def _lock_file(self) -> IO[str]:
        self.locks.mkdir(parents=True, exist_ok=True)
        return (self.locks / "build.lock").open("a")


def describe(env: BuiltEnv) -> dict[str, Any]:
    """A JSON-able summary (CLI ``--json`` and the champion page)."""
    data = asdict(env)
    data["path"] = str(env.path)
    return data
