"""Binder-style launches on the local backend: cold build, warm launch and plain spawn.

    uv run python benchmarks/binder.py [--builds N] [--launches N] [--hub-log PATH] [--warm-only]

One ``hubstack up`` hub (tests/hubtest.py: local backend, its default machine of 1 CPU and
1G, builds in the default limits of 2 CPUs, 4G and 15 min), one user of it, and a git daemon
on loopback serving the test repositories (tests/gitserver.py). A repository's
``requirements.txt`` asks for ``numpy``, ``pandas`` and ``matplotlib``, unpinned, so a build
gets their newest releases. These are timed:

1. Cold build: a repository whose environment is not in the cache is launched, and built.
   Nothing is cached: the hub's environment cache is new (it lives under the hub's own test
   root), its package cache (``<binder.root>/packages``), its package store (see
   src/hubstack/envs/package_store.py) and its shared server layer (see
   src/hubstack/envs/server_layer.py) are removed before each cold build, and uv's download
   cache lives on each build's scratch file system, so every build downloads all its
   packages (the Jupyter server and kernel into the layer, then the repository's) from the
   package index. The ``--builds`` repositories differ only in a comment line of their
   requirements.txt, which is enough for a key of their own: each is built. After each
   build the run waits until the hub has put its wheels in the package cache and unpacked
   them into the package store (its log says ``Package cache:`` in its build log). Also
   timed cold: a uv build of three small packages (``SMALL_REQUIREMENTS``: with Python and
   pip, as many packages as the conda build) and,
   when the machine has the pyenv CPython 3.10.13 that tests/condachannel.py repackages, a
   conda ``environment.yml`` of Python 3.10, pip and two small packages (one with a
   compiled library) solved and installed from that local channel, served on loopback as
   the hub's ``binder.conda.mirror``. Timed from
   opening the event stream until the first ``built`` event and until ``ready``, and split
   by when the first event of each phase arrived: wait (until the hub's first event),
   fetch (until the first build log line: mirror the repository, resolve the ref, read the
   spec), build (until ``built``: uv, one event per log line) and launch (``built`` until
   ``ready``: check out the repository, start the server). The service follows the hub's
   progress only once the hub calls the server pending, which it polls for every 0.5 s; the
   hub's events from before then arrive together, so a fetch done by then shows as 0.
2. Known packages: ``--builds`` new repositories asking for numpy, pandas and matplotlib
   plus termcolor, after the cold builds left their wheels in the package cache and the
   last one its server layer: the Jupyter server is the layer's, the three packages and
   their dependencies are the package store's (unpacked and compiled after the last cold
   build), termcolor comes from the index (then from the store, for the next ones).
3. Warm launch: the first repository again, its environment now in the cache, from opening
   the event stream until ``ready``; split the same way (fetch: until the environment was
   found); the conda repository's warm launch too.
4. Plain spawn: a server of the hub's default environment (``{"environment": "python"}``),
   from sending ``POST /hub/api/users/<user>/servers/<name>`` until the progress stream
   reports ``ready``, as spawn_local.py times its spawns.

``--warm-only`` builds only the small uv repository and the conda one (steps 1's small
builds), then times warm launches of them against plain spawns (steps 3 and 4): the
comparison of a warm launch with a plain spawn in a few minutes, without the large builds.

Repository launches use the binder service's BinderHub API, as Binder clients do: ``GET
<hub>/services/binder/build/git/<quoted clone URL>/main`` with ``Accept: text/event-stream``
and the user's hub API token; the service starts the user's named server for the repository
through the hub and relays its progress. Should the service not answer, they go through the
hub's REST API instead (``POST`` with the repository's ``user_options``, then the progress
stream; timed from the ``POST``, which the hub answers once the server is up or after 10 s,
so phases before that are seen late; ``built`` of a cold build, which takes longer, is not).
The header says which was used.

Every launch gets a new server: afterwards the server is stopped and deleted (untimed), a
repository's and a plain one alike, so each launch creates the server's volume and a
repository launch checks the repository out into it. Warm launches and plain spawns take
turns (A, B, A, B, ...) after one uncounted warm-up each; the plain warm-up comes before the
cold builds, so that the first build does not include the user's first-time setup (the
account and its home).

Needs root (servers and builds run as other accounts), the default environment from
scripts/setup.sh, and access to the package index (PyPI, unless UV_INDEX_URL or UV_DEFAULT_INDEX
says otherwise). Everything the run creates (the hub, its accounts, servers, builds and
mounts, the git daemon, the test root) is removed at the end, also on errors and Ctrl-C.

Reading the result: a cold build is almost all download and install time, so it depends on
the network and on the load of the machine as much as on hubstack; the split shows how much.
A warm launch does what a plain spawn does, plus what a repository adds: a ``git fetch`` of
the mirror to resolve the ref, the cache lookup, the checkout into the server's volume and,
through the service, its wait for the hub to report the server pending (polled every 0.5 s)
and the token it creates for the ``ready`` event.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jupyterhub
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from condachannel import PYENV, basic_packages, serve, write_channel
from gitserver import GitDaemon, make_repo
from hubbench import (
    CGROUP_ROOT,
    HUBSTACK_USER,
    SINGLEUSER,
    catch_signals,
    cgroup_mode,
    env_versions,
    load,
    p95,
    remove_leftovers,
)
from hubtest import Hub, Session, free_port_block, new_test_root, running_hub, wait_for

from hubstack.config.load import validate
from hubstack.config.models import Config
from hubstack.envs.builder import build_unit, uv_binary
from hubstack.envs.cache import EnvCache
from hubstack.envs.packages import PackageCache
from hubstack.launch.repo import repo_source, server_name
from hubstack.system import cgroups

REQUIREMENTS = "numpy\npandas\nmatplotlib\n"
PACKAGES = ("numpy", "pandas", "matplotlib")
KNOWN_EXTRA = "termcolor"
"""The small package a new repository adds to the ones the hub has seen."""
SMALL_REQUIREMENTS = "tabulate\nsix\nidna\n"
"""A uv build the size of the conda one: Python, pip and three small packages."""
CONDA_PYTHON = "3.10.13"
"""The pyenv CPython the local test channel repackages (tests/condachannel.py)."""
CONDA_ENVIRONMENT = """channels: [conda-forge]
dependencies:
  - python=3.10
  - pip
  - hello-conda=1.0
  - pygreet
"""
"""Five conda packages: Python, pip, a pure-Python one, and one with its compiled library."""
HARVEST_WAIT = 600.0
"""Seconds to wait for the hub to put a finished build's wheels in its package cache."""
TARGET_CONDA = 1.5
TARGET_KNOWN = 5.0
REF = "main"
SERVICE = "/services/binder/"
SERVICE_WAIT = 30.0
"""Seconds to wait for the binder service to answer after the hub is up."""
REST_REPO_SERVER = "repo"
PLAIN_SERVER = "plain"
PLAIN_OPTIONS = {"environment": "python"}
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
"""Longest silence on an event stream: a build logs often, the service keeps it alive."""
POST_TIMEOUT = 120.0
TARGET_COLD = 60.0
TARGET_RATIO = 1.2
HUB = "hub"
"""Not a phase: when the first event from the hub came (the service says ``waiting`` first)."""
SPLIT = (
    ("wait", "start", HUB),
    ("fetch", HUB, "building"),
    ("build", "building", "built"),
    ("launch", "built", "ready"),
)
"""Parts of a launch: (name, from, to), between first arrivals of phases."""


# -- one launch -------------------------------------------------------------------------------


@dataclass
class Timing:
    """One launch: seconds from its start until each phase was first seen, and in all."""

    total: float
    at: dict[str, float]
    log_lines: int = 0

    def between(self, start: str, end: str) -> float | None:
        """Seconds from phase ``start`` (or the launch's start) to phase ``end``."""
        begin = 0.0 if start == "start" else self.at.get(start)
        if begin is None or end not in self.at:
            return None
        return self.at[end] - begin

    def split(self) -> list[float | None]:
        """The launch in the parts of :data:`SPLIT`; a warm launch has no build (None)."""
        if "building" not in self.at:
            fetch = self.between(HUB, "built")  # resolve the ref, find the environment
            return [self.between("start", HUB), fetch, None, self.between("built", "ready")]
        return [self.between(start, end) for _, start, end in SPLIT]


class LaunchFailed(RuntimeError):
    pass


def follow(resp: requests.Response, started: float) -> Timing:
    """Read an event stream until ``ready`` or ``failed``, noting when each phase first came.

    Both streams are understood: the service's (every event has a ``phase``, the last one
    is ``ready``) and the hub's (the spawner's events have a ``phase``, JupyterHub's own
    ones none, and the last one says ``"ready": true``).
    """
    at: dict[str, float] = {}
    lines = 0
    for line in resp.iter_lines(decode_unicode=True):
        if not (line and line.startswith("data:")):
            continue
        now = time.perf_counter() - started
        event = json.loads(line[5:])
        if event.get("ready"):
            phase = "ready"
        elif event.get("failed"):
            phase = "failed"
        else:
            phase = str(event.get("phase") or "launching")
        at.setdefault(phase, now)
        if phase != "waiting":
            at.setdefault(HUB, now)
        lines += phase == "building"
        if phase == "failed":
            raise LaunchFailed(str(event.get("message") or event))
        if phase == "ready":
            return Timing(now, at, lines)
    raise LaunchFailed(f"the event stream ended before ready; phases seen: {list(at)}")


@dataclass
class Launcher:
    """Launches one user's servers, through the binder service or the hub's REST API."""

    session: Session
    config: Config
    via_service: bool
    versions: str = ""
    warm: list[Timing] = field(default_factory=list)
    conda_warm: list[Timing] = field(default_factory=list)
    plain: list[Timing] = field(default_factory=list)

    def repo_server(self, url: str) -> str:
        """The named server a launch of ``url`` runs in (the service's own choice)."""
        if not self.via_service:
            return REST_REPO_SERVER
        source = repo_source(url, REF, self.config.binder)
        return server_name(source, self.config.policy.named_servers.name_max_length)

    def launch(self, url: str) -> Timing:
        """Launch the repository at ``url`` in a new server; from opening the stream to ready."""
        if not self.via_service:
            options = {"environment": "repository", "repo": url, "ref": REF}
            return self.spawn(REST_REPO_SERVER, options)
        build = f"{self.session.hub.url}{SERVICE}build/git/{quote(url, safe='')}/{REF}"
        headers = {"Accept": "text/event-stream", "Authorization": f"token {self.session.token}"}
        started = time.perf_counter()
        with requests.get(
            build, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        ) as resp:
            if resp.status_code != 200:
                refused = f"{resp.status_code} {resp.text}"
                raise LaunchFailed(f"the service refused the launch: {refused}")
            timing = follow(resp, started)
        server = self.repo_server(url)
        if self.session.model(server) is None:
            raise LaunchFailed(f"ready, but the hub has no server {server!r} of the user")
        return timing

    def spawn(self, server: str, options: dict[str, Any]) -> Timing:
        """Start a server with ``options`` through the REST API; from the POST to ready."""
        started = time.perf_counter()
        resp = self.session.api(
            "POST",
            self.session.server_path(server),
            json={"user_options": options},
            timeout=POST_TIMEOUT,
        )
        if resp.status_code not in (201, 202):
            raise LaunchFailed(f"start refused: {resp.status_code} {resp.text}")
        with self.session.api(
            "GET",
            f"{self.session.server_path(server)}/progress",
            stream=True,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        ) as progress:
            progress.raise_for_status()
            return follow(progress, started)

    def spawn_plain(self) -> Timing:
        return self.spawn(PLAIN_SERVER, PLAIN_OPTIONS)

    def remove(self, server: str) -> None:
        """Stop and delete the server (untimed), so that the next launch makes a new one."""
        self.session.stop(server, remove=True)

    def check_packages(self, server: str) -> str:
        """The versions of the requested packages, imported in a kernel of ``server``."""
        versions = ", ".join(f"{name}.__version__" for name in PACKAGES)
        code = f"import sys, {', '.join(PACKAGES)}\nprint(sys.version.split()[0], {versions})\n"
        run = self.session.run_code(code, server)
        if run.status != "ok":
            raise LaunchFailed(f"the built environment cannot import {PACKAGES}: {run}")
        python, *versions = run.stdout.split()
        named = ", ".join(f"{n} {v}" for n, v in zip(PACKAGES, versions, strict=True))
        return f"{named} (Python {python})"


# -- the hub ----------------------------------------------------------------------------------


@contextlib.contextmanager
def binder_hub(
    keep_log: Callable[[str], None], channel: str | None
) -> Iterator[tuple[Hub, Session]]:
    """A ``hubstack up`` hub with hubtest's config and one user, with conda builds from
    ``channel`` (as the site's mirror) if there is one; on exit, also what an interrupted
    launch leaves behind is removed (a build's processes and cgroup)."""
    conda = {"enabled": True, "mirror": channel} if channel else {"enabled": False}
    with running_hub({"binder": {"conda": conda}}) as hub:
        try:
            yield hub, hub.new_user(HUBSTACK_USER)
        finally:
            keep_log(hub.log())
            hub.stop()
            accounts = [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(hub.prefix)]
            # The build account is one of the hub's accounts too.
            remove_leftovers(accounts)
            remove_build_groups(EnvCache.of(validate(hub.config())))


@contextlib.contextmanager
def conda_channel() -> Iterator[str | None]:
    """The tests' local conda channel over HTTP on loopback (tests/condachannel.py), or None
    without the pyenv CPython it repackages."""
    if not (PYENV / CONDA_PYTHON).is_dir():
        yield None
        return
    root = new_test_root()
    try:
        packages = basic_packages(root / "compile", CONDA_PYTHON)
        write_channel(root / "channels/conda-forge", packages)
        with serve(root / "channels", free_port_block(1)) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Packages:
    """The hub's package cache, package store and shared server layers: emptied before a
    cold build, and awaited after each build (the hub adds a build's wheels to the cache
    and the store after its launch went on, before the next build)."""

    hub: Hub
    cache: PackageCache
    envs: EnvCache
    builds: int = 0

    def empty(self) -> None:
        shutil.rmtree(self.cache.wheels, ignore_errors=True)
        # Built again, at the same place, by the next build; not the conda server layers,
        # which no build uses (the hub builds one after a conda build; see conda_layer.py).
        forked = {env.fork_layer for env in self.envs.list()}
        for layer in self.envs.layers():
            if layer.key not in forked:
                self.envs.remove(layer.key)
        for entry in self.envs.stores():  # the package store's, unpacked from those wheels
            self.envs.remove(entry.key)

    def kept(self, logs: Path) -> None:
        """Wait until the hub has noted in the build logs that it kept this build's wheels
        (the layers' logs say so too, and do not count)."""
        self.builds += 1

        def noted() -> bool:
            layers = {f"{layer.key}.log" for layer in self.envs.layers()}
            envs = [log for log in logs.glob("*.log") if log.name not in layers]
            return sum("Package cache:" in log.read_text() for log in envs) >= self.builds

        wait_for(noted, HARVEST_WAIT, "the hub to keep the build's wheels", interval=0.5)


def remove_build_groups(cache: EnvCache) -> None:
    """Drop the cgroups of this hub's builds, found by their keys (other hubs' are spared)."""
    keys = {path.stem for path in (*cache.work.glob("*.img"), *cache.logs.glob("*.log"))}
    for key in keys:
        unit = build_unit(cache.root, key)
        for pattern in (f"*/hubstack/{unit}", f"hubstack/{unit}"):
            for group in CGROUP_ROOT.glob(pattern):
                with contextlib.suppress(OSError):
                    group.rmdir()


def service_answers(session: Session) -> bool:
    """Whether the binder service serves its launch page to the user (given some time to
    start: the hub starts its services as it starts)."""

    def page() -> bool:
        resp = requests.get(
            f"{session.hub.url}{SERVICE}",
            headers={"Authorization": f"token {session.token}"},
            allow_redirects=False,
            timeout=CONNECT_TIMEOUT,
        )
        return resp.status_code == 200

    try:
        return wait_for(page, SERVICE_WAIT, "the binder service", interval=0.5)
    except TimeoutError:
        return False


def make_repositories(
    git: GitDaemon, count: int, prefix: str = "plots", requirements: str = REQUIREMENTS
) -> list[str]:
    """``count`` repositories asking for the same packages, each with its own cache key."""
    urls = []
    for i in range(1, count + 1):
        name = f"{prefix}{i}"
        make_repo(git.base / name, {"requirements.txt": f"# repository {i}\n{requirements}"})
        urls.append(git.url(name))
    return urls


def make_conda_repository(git: GitDaemon) -> str:
    make_repo(git.base / "conda", {"environment.yml": CONDA_ENVIRONMENT})
    return git.url("conda")


# -- measuring --------------------------------------------------------------------------------


def builds_of(
    launcher: Launcher, urls: list[str], packages: Packages, label: str, *, cold: bool
) -> list[Timing]:
    """Launch each new repository (``cold``: with the package cache emptied first)."""
    builds = []
    for i, url in enumerate(urls, 1):
        if cold:
            packages.empty()
        timing = launcher.launch(url)
        server = launcher.repo_server(url)
        if "built" not in timing.at:
            raise LaunchFailed(f"{url} was not built: its environment was in the cache already")
        if i == 1 and label == "cold build":
            launcher.versions = launcher.check_packages(server)
        launcher.remove(server)
        packages.kept(EnvCache.of(launcher.config).logs)
        builds.append(timing)
        print(
            f"  {label} {i}  to built {timing.at['built']:6.1f} s, to ready "
            f"{timing.total:6.1f} s  ({timing.log_lines} log lines)",
            flush=True,
        )
    return builds


def warm_and_plain(launcher: Launcher, url: str, launches: int, conda: str | None) -> None:
    """One uncounted warm launch (of each repository), then warm launches (and of the conda
    repository) and plain spawns taking turns."""
    repos = [(url, launcher.warm), *([(conda, launcher.conda_warm)] if conda else [])]
    for repo, _ in repos:
        launcher.launch(repo)
        launcher.remove(launcher.repo_server(repo))
    for round_ in range(1, launches + 1):
        shown = []
        for repo, timings in repos:
            warm = launcher.launch(repo)
            launcher.remove(launcher.repo_server(repo))
            if "building" in warm.at:
                raise LaunchFailed(f"launch {round_} of {repo} built again, not from the cache")
            timings.append(warm)
            shown.append(f"{warm.total:6.3f} s")
        plain = launcher.spawn_plain()
        launcher.remove(PLAIN_SERVER)
        launcher.plain.append(plain)
        print(
            f"  launch {round_:2d}  warm {' / '.join(shown)}   plain {plain.total:6.3f} s",
            flush=True,
        )
    print()


# -- reporting --------------------------------------------------------------------------------


def index_url() -> str:
    return os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or "PyPI"


def uv_version() -> str:
    out = subprocess.run([uv_binary(), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "uv (version unknown)"


def print_header(builds: int, launches: int) -> None:
    enforcer = cgroups.detect("auto").name
    print("Binder-style launches: cold build, warm launch, plain spawn (local backend)")
    print(f"  machine:    {os.cpu_count()} CPUs, kernel {platform.release()}, load {load()}")
    print(f"  cgroups:    {cgroup_mode()}; hubstack limits via {enforcer}")
    print(f"  hub:        jupyterhub {jupyterhub.__version__} (Python {platform.python_version()})")
    print(f"  plain:      {SINGLEUSER} ({env_versions()})")
    print(f"  builds:     {uv_version()}, packages from {index_url()}; the hub's package")
    print("              cache emptied before each cold build, kept for the known ones")
    print(f"              requirements.txt: {', '.join(PACKAGES)} (unpinned)")
    print(f"  runs:       a small uv and a conda cold build, {builds} cold builds, {builds} new")
    print(f"              repositories adding {KNOWN_EXTRA} to known packages, then {launches}")
    print("              warm launches (uv, conda) and plain spawns interleaved, after 1")
    print("              uncounted warm-up each; a new server each time")


def describe_path(via_service: bool) -> str:
    if via_service:
        return f"GET {SERVICE}build/git/<url>/{REF} (event stream) until phase ready"
    return "the binder service did not answer: POST .../servers/<name> + progress stream"


def seconds(value: float | None, digits: int = 1) -> str:
    return f"{value:8.{digits}f}" if value is not None else f"{'-':>8s}"


def median_split(timings: list[Timing]) -> list[float | None]:
    """The median of each part of the split over the launches that have that part."""
    medians: list[float | None] = []
    for values in zip(*(t.split() for t in timings), strict=True):
        present = [v for v in values if v is not None]
        medians.append(statistics.median(present) if present else None)
    return medians


SPLIT_COLUMNS = "".join(f"{name:>8s}" for name, _, _ in SPLIT)


def print_cold(builds: list[Timing], title: str = "Cold build") -> None:
    print(f"{title}, seconds from opening the stream (or sending the POST)")
    print(f"{'':10s}{'to built':>8s} {'to ready':>8s}  |{SPLIT_COLUMNS}")
    for i, timing in enumerate(builds, 1):
        split = "".join(seconds(p) for p in timing.split())
        print(
            f"{f'build {i}':10s}{seconds(timing.at.get('built'))} {seconds(timing.total)}  |"
            f"{split}   ({timing.log_lines} log lines)"
        )
    built = statistics.median(t.at["built"] for t in builds)
    ready = statistics.median(t.total for t in builds)
    split = "".join(seconds(p) for p in median_split(builds))
    print(f"{'median':10s}{seconds(built)} {seconds(ready)}  |{split}")


def print_launches(launcher: Launcher) -> None:
    print("Launch latency (warm: stream opened until ready; plain: POST until ready)")
    print(f"{'':14s} {'n':>3s} {'p50 (s)':>9s} {'p95 (s)':>9s} {'mean (s)':>9s} {'max (s)':>9s}")
    rows = (
        ("warm launch", launcher.warm),
        ("warm conda", launcher.conda_warm),
        ("plain spawn", launcher.plain),
    )
    for label, timings in rows:
        if not timings:
            continue
        s = [t.total for t in timings]
        print(
            f"{label:14s} {len(s):3d} {statistics.median(s):9.3f} {p95(s):9.3f} "
            f"{statistics.fmean(s):9.3f} {max(s):9.3f}"
        )
    warm = [t.total for t in launcher.warm]
    plain = [t.total for t in launcher.plain]
    ratio_p50 = statistics.median(warm) / statistics.median(plain)
    ratio_p95 = p95(warm) / p95(plain)
    print(f"{'ratio':14s} {'':3s} {ratio_p50:9.2f} {ratio_p95:9.2f}   (warm / plain)")
    if launcher.conda_warm:
        conda = [t.total for t in launcher.conda_warm]
        ratios = statistics.median(conda) / statistics.median(plain), p95(conda) / p95(plain)
        print(f"{'ratio conda':14s} {'':3s} {ratios[0]:9.2f} {ratios[1]:9.2f}   (warm / plain)")
    print()
    split = "".join(seconds(p, digits=3) for p in median_split(launcher.warm))
    print(f"{'':30s}|{SPLIT_COLUMNS}")
    print(f"{'warm launch split, p50 (s)':30s}|{split}")


def print_split_legend(via_service: bool) -> None:
    wait = (
        "the service polls every 0.5 s until the server is pending"
        if via_service
        else "the POST, answered once the server is up or after 10 s"
    )
    print(f"wait:   until the hub's first event ({wait});")
    print("        the hub's events from before then arrive together with it")
    print("fetch:  until the first build log line (warm: until the environment was found)")
    print("build:  until built;  launch: built until ready (check out, start the server)")


@dataclass
class Results:
    """Every group of builds of one run."""

    cold: list[Timing]
    small: list[Timing]
    conda: list[Timing]
    known: list[Timing]


def print_targets(results: Results, launcher: Launcher) -> None:
    builds = results.cold
    ready = statistics.median(t.total for t in builds)
    built = statistics.median(t.at["built"] for t in builds)
    ratio = statistics.median(t.total for t in launcher.warm) / statistics.median(
        t.total for t in launcher.plain
    )
    cold = "met" if ready < TARGET_COLD else "NOT met"
    warm = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"target: cold build under {TARGET_COLD:.0f} s (median, until ready {ready:.1f} s, "
        f"until built {built:.1f} s): {cold}"
    )
    print(f"target: warm launch p50 at most {TARGET_RATIO} x plain spawn p50 ({ratio:.2f}): {warm}")
    if launcher.conda_warm:
        conda_ratio = statistics.median(t.total for t in launcher.conda_warm) / statistics.median(
            t.total for t in launcher.plain
        )
        met = "met" if conda_ratio <= TARGET_RATIO else "NOT met"
        print(
            f"target: warm conda launch p50 at most {TARGET_RATIO} x plain spawn p50 "
            f"({conda_ratio:.2f}): {met}"
        )
    if results.conda:
        conda, small = results.conda[0].at["built"], results.small[0].at["built"]
        met = "met" if conda <= TARGET_CONDA * small else "NOT met"
        print(
            f"target: conda cold build at most {TARGET_CONDA} x the uv build of as many packages "
            f"(until built {conda:.1f} s against {small:.1f} s, {conda / small:.2f}): {met}"
        )
    known = statistics.median(t.total for t in results.known)
    met = "met" if known < TARGET_KNOWN else "NOT met"
    print(
        f"target: a new repository of known packages ready in under {TARGET_KNOWN:.0f} s "
        f"(median {known:.1f} s, until built "
        f"{statistics.median(t.at['built'] for t in results.known):.1f} s): {met}"
    )
    print("(for scale: repo2docker's own base build ~300 s; mybinder's median cached launch ~15 s)")


def print_report(results: Results, launcher: Launcher, runtime: float) -> None:
    print(f"launches:   {describe_path(launcher.via_service)}")
    print(f"built:      {launcher.versions}")
    print(f"load now:   {load()}; runtime {runtime:.0f} s")
    print()
    print_cold(results.cold)
    print()
    print_cold(
        results.small, f"Cold uv build of {', '.join(SMALL_REQUIREMENTS.split())} (5 packages)"
    )
    print()
    if results.conda:
        print_cold(results.conda, "Cold conda build (local channel: python 3.10, 4 packages)")
        print()
    print_cold(results.known, f"New repository of known packages plus {KNOWN_EXTRA}")
    print()
    print_launches(launcher)
    print_split_legend(launcher.via_service)
    print()
    print_targets(results, launcher)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--builds", type=int, default=3, help="cold builds (distinct repos)")
    parser.add_argument("--launches", type=int, default=10, help="warm launches and plain spawns")
    parser.add_argument("--hub-log", type=Path, help="also save the hub's log here")
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="build only the small uv (and the conda) repository, then time warm launches",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: servers and builds run as other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    if args.builds < 1 or args.launches < 1:
        parser.error("--builds and --launches must be at least 1")
    catch_signals()

    def keep_log(text: str) -> None:
        if args.hub_log:
            args.hub_log.write_text(text)

    print_header(args.builds, args.launches)
    started = time.monotonic()
    try:
        with (
            conda_channel() as channel,
            binder_hub(keep_log, channel) as (hub, session),
            GitDaemon(hub.root / "git") as git,
        ):
            config = validate(hub.config())
            size = config.binder.package_cache.size
            packages = Packages(hub, PackageCache(config.binder.root, size), EnvCache.of(config))
            launcher = Launcher(session, config, service_answers(session))
            print(f"  launches:   {describe_path(launcher.via_service)}\n", flush=True)
            urls = make_repositories(git, args.builds)
            small = make_repositories(git, 1, "small", SMALL_REQUIREMENTS)
            conda = make_conda_repository(git) if channel else None
            known_urls = make_repositories(
                git, args.builds, "known", f"{REQUIREMENTS}{KNOWN_EXTRA}\n"
            )
            launcher.spawn_plain()
            launcher.remove(PLAIN_SERVER)
            # The conda build first: a cold build removes the server layer, which a conda
            # environment does not use and so would not build again for the uv one's launches.
            conda_builds = (
                builds_of(launcher, [conda], packages, "conda build", cold=True) if conda else []
            )
            small_builds = builds_of(launcher, small, packages, "small uv build", cold=True)
            if args.warm_only:
                warm_and_plain(launcher, small[0], args.launches, conda)
                print_launches(launcher)
                print_split_legend(launcher.via_service)
                print(f"load now:   {load()}; runtime {time.monotonic() - started:.0f} s")
                return 0
            builds = builds_of(launcher, urls, packages, "cold build", cold=True)
            known = builds_of(launcher, known_urls, packages, "known packages", cold=False)
            results = Results(builds, small_builds, conda_builds, known)
            warm_and_plain(launcher, urls[0], args.launches, conda)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the run started has been cleaned up", file=sys.stderr)
        return 130
    print_report(results, launcher, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
