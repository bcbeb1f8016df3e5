"""Build one environment from a repository with uv, as an unprivileged account, in limits.

A build runs arbitrary code (a ``postBuild``, any package's build backend), so it gets:

- its own account (``binder.build_account``), never a user's and never root;
- CPU, memory and process limits through the same cgroup code as servers, and a time limit;
- a size limit that is enforced by the kernel: the build writes only to a loop-mounted
  file system of ``limits.size``, mounted in a root-only folder outside ``binder.root``;
- a mount namespace of its own, where (and only where) that file system appears at the
  environment's final path (a virtualenv's scripts name their own path, so it is built in
  place) and over ``/tmp``, ``/var/tmp`` and ``/dev/shm``, so what it writes anywhere counts
  against its size limit and goes with it; the ids are dropped there with no way back
  (``no_new_privs``);
- no say in where packages come from: uv and pip read no configuration file, neither the
  repository's nor any other, only the hub's own settings from its environment;
- no shared writable state: uv's cache lives on that scratch file system and goes with it,
  so one build cannot plant anything in another's packages; builds run one at a time.

A successful build is copied out by root's own walker (:func:`copy_tree`), which creates
only folders, regular files and symbolic links, root-owned, without set-id or write bits for
others, into a root-only staging folder that becomes the cache entry when complete: nothing
the build made is ever, even for a moment, a dangerous file under ``binder.root``.

Without root (dev mode) there are no accounts, cgroups or loop mounts: the build runs as
the hub's user directly in place, and only the time limit and an after-the-fact size check
apply, as the log says.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import signal
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hubstack.config.models import BinderSettings
from hubstack.envs.cache import META, BuiltEnv, EnvCache, tree_size
from hubstack.envs.conda import INSTALLER as CONDA_INSTALLER
from hubstack.envs.conda import channel_url, installer_input
from hubstack.envs.conda import create_steps as conda_steps
from hubstack.envs.conda_packages import harvest_conda
from hubstack.envs.git import export
from hubstack.envs.layout import APT, ENV, HOME, HOME_CACHES, search_paths
from hubstack.envs.package_store import MAP as STORE_MAP
from hubstack.envs.package_store import PINS as STORE_PINS
from hubstack.envs.package_store import SEED_FILE, entry_script, use_steps, write_map
from hubstack.envs.package_store import applies as uses_store
from hubstack.envs.packages import Harvest, PackageCache, index_urls
from hubstack.envs.python_sources import uv_steps as uv_python_steps
from hubstack.envs.r_env import kernel_steps as r_kernel_steps
from hubstack.envs.r_env import setup_steps as r_setup_steps
from hubstack.envs.server_layer import CONSTRAINTS, layer_steps
from hubstack.envs.server_layer import env_steps as layered_steps
from hubstack.envs.server_packages import install_steps as server_steps
from hubstack.envs.server_packages import same_major
from hubstack.envs.spec import EnvSpec
from hubstack.errors import Explained
from hubstack.system import NO_FOLLOW_DIR, SystemOpError, cgroups, run, tool, volumes
from hubstack.system.accounts import Account, ensure_account, kill_processes_of
from hubstack.units import format_duration, format_size
from hubstack.untrusted import quote_untrusted

BASE_REQUIREMENTS = Path(__file__).with_name("base-requirements.txt")
SERVER_OVERRIDES = Path(__file__).with_name("server-overrides.txt")
# Part of every environment key: a change to how environments are built rebuilds them.
# 2: bytecode compiled at build time, base packages installed with SERVER_OVERRIDES.
# 3: no uv or pip configuration file read (earlier builds may have honoured a repository's).
# 4: pip in every environment, the build's home kept, npm's global prefix, apt.txt.
# 5: virtualenvs of a host Python on a shared server layer (envs/server_layer.py).
BUILDER_VERSION = "5"
# Passed from the hub's environment to uv and npm: a site's index, proxy and CA settings.
PASSED_ENV = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_NATIVE_TLS",
    "UV_PYTHON_INSTALL_MIRROR",
    # npm in a postBuild: the site's registry and CA
    "NODE_EXTRA_CA_CERTS",
    "NPM_CONFIG_REGISTRY",
)
LOG_TAIL = 12
CONDA_INPUT = "conda.json"
SCRATCH = ".hubstack-build"
LINE_MAX = 1000
"""Characters of one log line kept (in memory, on the launch page and in the log file)."""
LOG_MAX = 10 * 1024**2
"""Bytes of a build's log file under ``binder.root``; the rest is left out, and said so."""
# Folders every build gets as its own, on its scratch file system: (where, scratch name).
PRIVATE_TMP = (("/tmp", "tmp"), ("/var/tmp", "var-tmp"), ("/dev/shm", "shm"))
MAX_DEPTH = 128
"""Folders nested deeper than this in a built environment fail the build (see copy_tree)."""


class BuildFailed(Explained):
    """A build that did not produce an environment; ``message`` says why, for the user."""


@dataclass(frozen=True)
class BuildJob:
    """One environment to build: what, from where, and into which cache entry."""

    key: str
    spec: EnvSpec
    python: Path
    mirror: Path | None  # None: a declared spec's ``files`` are the repository
    commit: str
    files: Mapping[str, str] | None = None
    layer: Path | None = None  # the server layer's entry it is built on (see server_layer)
    server_layer: bool = False  # this is a server layer itself
    store: Mapping[str, str] | None = None  # what the package store offers (package_store)
    store_wheels: tuple[str, ...] = ()  # this is a store entry of these kept wheels


def uv_binary() -> str:
    """uv as scripts/setup.sh installs it, else from PATH."""
    installed = Path("/opt/hubstack/tools/bin/uv")
    if installed.exists():
        return str(installed)
    return shutil.which("uv") or "uv"


def _pip(env: Path, uv: str, wheels: Path | None) -> str:
    """uv's install into ``env``, taking the wheels it finds in the hub's read-only package
    cache ``wheels`` (see :mod:`hubstack.envs.packages`) instead of downloading them again."""
    q = shlex.quote
    pip = f"{q(uv)} pip install --python {q(str(env / 'bin/python'))}"
    return pip if wheels is None else f"{pip} --find-links {q(str(wheels))}"


def _server_steps(pip: str, scratch: Path) -> list[str]:
    return [
        "echo 'Installing the Jupyter server and kernel'",
        *server_steps(
            pip,
            str(scratch / "server-overrides.txt"),
            str(scratch / "base-requirements.txt"),
            str(scratch / "base-requirements-same-major.txt"),
        ),
    ]


def layer_script(target: Path, python: Path, uv: str, wheels: Path | None = None) -> str:
    """The shell script of a server layer's build (see :mod:`hubstack.envs.server_layer`)."""
    q = shlex.quote
    env = target / ENV
    lines = [
        "set -eu",
        f"cd {q(str(target / 'repo'))}",
        f"echo {q(f'Building the shared server layer for {python.name}')}",
        f"{q(uv)} venv --quiet --python {q(str(python))} {q(str(env))}",
        *_server_steps(_pip(env, uv, wheels), target / SCRATCH),
        *layer_steps(env, target, uv),
        "echo 'Build finished'",
    ]
    return "\n".join(lines) + "\n"


def build_script(
    spec: EnvSpec,
    target: Path,
    python: Path,
    uv: str,
    wheels: Path | None = None,
    layer: Path | None = None,
    store: Mapping[str, str] | None = None,
) -> str:
    """The shell script of one build; every value in it is quoted.

    The base packages go in first, then the repository's own (which may override them),
    as repo2docker does; requirement files are installed from their own folder so their
    relative references (``-r other.txt``, ``-e .``) mean what their authors meant. On a
    server ``layer`` (its cache entry), the base packages are the layer's, and the
    repository's are installed with the layer's versions as constraints (see
    :mod:`hubstack.envs.server_layer`), those the package ``store`` holds referenced from it
    (see :mod:`hubstack.envs.package_store`).
    """
    q = shlex.quote
    env, repo, scratch = target / ENV, target / "repo", target / SCRATCH
    pip = _pip(env, uv, wheels)
    stored = layer is not None and bool(store) and uses_store(spec)
    lines = [
        "set -eu",
        f"cd {q(str(repo))}",
        *_create_steps(spec, env, scratch, python, uv, seed=not stored),
        *apt_steps(spec.apt_packages, env / APT, scratch / "apt", back=repo),
        *(r_setup_steps(spec.r, env) if spec.r else []),
    ]
    server = [*_server_steps(pip, scratch), *(r_kernel_steps(env) if spec.r else [])]
    if layer is None:
        lines += [*server, *_repository_steps(spec, repo, scratch, pip)]
    else:
        constrained = f"{pip} --constraint {q(str(layer / CONSTRAINTS))}"
        layered = _repository_steps(spec, repo, scratch, constrained)
        if stored:
            resolve = _compile(spec, env, repo, scratch, uv, wheels, layer / CONSTRAINTS)
            layered = [use_steps(env, layer, scratch, resolve, constrained, layered)]
        fallback = [*server, *_repository_steps(spec, repo, scratch, pip)]
        lines += layered_steps(env, layer, scratch / "layered.log", layered, fallback)
    if spec.post_build:
        # What the server will have: the environment's and the packages' paths, REPO_DIR.
        layer_prefix = None if layer is None else layer / ENV
        paths = search_paths(env, target / HOME, repo, bool(spec.apt_packages), layer_prefix)
        exports = " ".join(f"{name}={q(value)}" for name, value in paths.items())
        lines += [
            f"echo {q(f'Running {spec.post_build}')}",
            f"chmod +x {q(spec.post_build)}",
            f"{exports} REPO_DIR={q(str(repo))} ./{q(spec.post_build)}",
        ]
    lines.append("echo 'Build finished'")
    return "\n".join(lines) + "\n"


def _repository_steps(spec: EnvSpec, repo: Path, scratch: Path, pip: str) -> list[str]:
    """The installs of the repository's own packages: single commands, one a line."""
    q = shlex.quote
    lines: list[str] = []
    for path in spec.requirement_files:
        folder, name = os.path.split(path)
        lines += [
            f"echo {q(f'Installing {path}')}",
            f"(cd {q(str(repo / folder))} && {pip} -r {q(name)})",
        ]
    if spec.requirements:
        lines += [
            f"echo {q(f'Installing the packages of {spec.kind}')}",
            f"{pip} -r {q(str(scratch / 'requirements.txt'))}",
        ]
    if spec.install_project:
        lines += ["echo 'Installing the repository as a package'", f"{pip} ."]
    return lines


def _compile(
    spec: EnvSpec, env: Path, repo: Path, scratch: Path, uv: str, wheels: Path | None, pins: Path
) -> str:
    """The command that resolves the repository's requirements to exact pins for ``env``,
    with the layer's ``pins`` as constraints (from the repository's root, as the spec names
    its requirement files)."""
    q = shlex.quote
    files = [*spec.requirement_files, str(scratch / SEED_FILE)]
    if spec.requirements:
        files.append(str(scratch / "requirements.txt"))
    links = f" --find-links {q(str(wheels))}" if wheels is not None else ""
    return (
        f"(cd {q(str(repo))} && {q(uv)} pip compile --quiet --no-header --no-annotate "
        f"--python {q(str(env / 'bin/python'))} --constraint {q(str(pins))}{links} "
        + " ".join(["--", *map(q, files)])
        + ")"
    )


def _create_steps(
    spec: EnvSpec, env: Path, scratch: Path, python: Path, uv: str, seed: bool = True
) -> list[str]:
    """The environment itself: conda packages (their own Python), else a virtualenv of a hub
    Python; either way with pip, for postBuild scripts and users (`pip install`). Not
    ``seed``: a virtualenv whose pip the package store gives (see package_store.SEED)."""
    q = shlex.quote
    if spec.conda is not None:
        # conda's pip only when the file asks for it; PyPI's otherwise, as for virtualenvs.
        seed_pip = f"{q(uv)} pip install --quiet --python {q(str(env / 'bin/python'))} pip"
        has_pip = f"{q(str(env / 'bin/python'))} -c 'import pip' 2>/dev/null"
        return [*conda_steps(spec.conda, scratch / CONDA_INPUT), f"{has_pip} || {seed_pip}"]
    if spec.uv_python is not None:
        return uv_python_steps(spec.uv_python, env.parent, env, uv)
    return [
        f"echo {q(f'Creating the environment with {python.name}')}",
        f"{q(uv)} venv --quiet{' --seed' if seed else ''} --python {q(str(python))} {q(str(env))}",
    ]


def apt_steps(packages: tuple[str, ...], root: Path, work: Path, back: Path) -> list[str]:
    """Shell lines that unpack the Debian ``packages`` and what they need that the host
    lacks into ``root``, as the unprivileged build account, from the host's apt sources,
    working in ``work`` and then going ``back``.

    Nothing here needs root: ``apt-get -s install`` resolves the dependencies against what the
    host has installed (the same answer a real install would give), ``apt-get download``
    fetches exactly those versions (apt checks them against the signed package lists the
    site's ``apt-get update`` keeps) and ``dpkg-deb -x`` unpacks them. Maintainer scripts
    are not run (they would need root, and act on the host): the log names the packages
    that have some, as what they set up (alternatives, users, caches) is missing.
    """
    if not packages:
        return []
    q = shlex.quote
    apt_get, dpkg_deb = q(tool("apt-get")), q(tool("dpkg-deb"))
    names = " ".join(q(name) for name in packages)
    return [
        f"echo {q('Installing system packages: ' + ', '.join(packages))}",
        f"mkdir -p {q(str(work))} {q(str(root))}",
        f"cd {q(str(work))}",
        f"if ! {apt_get} -s -q --no-install-recommends install -- {names} > plan 2>&1; then",
        "  grep -E '^E: ' plan || tail -n 5 plan",
        '  echo "apt.txt asks for packages that cannot be installed from the Debian sources '
        'of this site (see above)."',
        "  exit 1",
        "fi",
        # "Inst name (version origin [arch])": download exactly the versions apt chose.
        r"sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' plan > wanted",
        f"xargs -r {apt_get} download -q < wanted",
        "with_scripts=''",
        ": > alternatives",
        "for deb in *.deb; do",
        '  [ -e "$deb" ] || continue',
        f'  {dpkg_deb} -x "$deb" {q(str(root))}',
        f'  {dpkg_deb} --ctrl-tarfile "$deb" > control.tar',
        r'  if tar -tf control.tar | grep -qE "^\./(pre|post)inst$"; then',
        '    with_scripts="$with_scripts ${deb%%_*}"',
        "  fi",
        # The one thing most postinst scripts do that a user notices: the command named by
        # an alternative (figlet, editors, compilers). Recorded with its priority...
        "  tar -xOf control.tar ./postinst 2>/dev/null "
        "| sed -e ':a' -e '/\\\\$/N; s/\\\\\\n//; ta' "
        '| awk \'{for (i = 2; i + 4 <= NF; i++) if ($i == "--install" && $(i-1) ~ '
        "/update-alternatives$/) print $(i+4), $(i+1), $(i+3)}' >> alternatives",
        "done",
        # ...and linked, the highest priority first, where the package left nothing.
        "sort -rn alternatives | while read -r _ link path; do",
        f'  target={q(str(root))}"$path" name={q(str(root))}"$link"',
        '  case "$link$path" in *..*) continue ;; esac',
        '  if [ -e "$target" ] && [ ! -e "$name" ] && [ ! -L "$name" ]; then',
        '    mkdir -p "${name%/*}" && ln -s "$target" "$name"',
        "  fi",
        "done",
        'echo "Unpacked $(wc -l < wanted) Debian packages into the environment"',
        'if [ -n "$with_scripts" ]; then',
        '  echo "Note: the installation scripts of these packages were not run:$with_scripts"',
        "fi",
        f"cd {q(str(back))}",
    ]


class Builder:
    """Runs builds into an :class:`EnvCache` under the limits of ``binder``."""

    def __init__(self, binder: BinderSettings, cache: EnvCache, enforcer: cgroups.Enforcer) -> None:
        self.binder = binder
        self.limits = binder.limits
        self.cache = cache
        self.root = os.geteuid() == 0
        self.enforcer = enforcer if self.root else cgroups.NoLimits()
        self.uv = uv_binary()
        settings = binder.package_cache
        self.packages = PackageCache(cache.root, settings.size) if settings.enabled else None

    def account(self) -> Account | None:
        """The build account (created on first use); None in dev mode."""
        return self._service_account(self.binder.build_account)

    def fetch_account(self) -> Account | None:
        """The account git and tar run as on repositories' data before any build (created on
        first use); None in dev mode. Not the build account: a build runs the repository's
        code, which must not reach another repository's fetch running at the same time."""
        return self._service_account(fetch_account_name(self.binder.build_account))

    def _service_account(self, name: str) -> Account | None:
        if not self.root:
            return None
        return ensure_account(name, Path("/nonexistent"), shell="/usr/sbin/nologin", group=None)

    async def build(self, job: BuildJob, log: Callable[[str], None]) -> None:
        """Build ``job`` into the cache, or raise :class:`BuildFailed` leaving nothing behind."""
        target = self.cache.path(job.key)
        work = self._work(job.key)
        account = await asyncio.to_thread(self.account)
        if account is not None:
            # Builds run one at a time: a process of the build account now is one a hub
            # killed during a build left running, still writing where this build will.
            await asyncio.to_thread(kill_processes_of, account.uid)
        await asyncio.to_thread(self._clear, job.key)
        try:
            with self.cache.log(job.key).open("w") as log_file:
                write = CappedLog(log_file, log).write
                await asyncio.to_thread(self._mount, account, job.key)
                if job.mirror is not None:
                    await export(job.mirror, job.commit, work / "repo", user=account)
                await asyncio.to_thread(self._inputs, job, account, work)
                await self._run(job, account, work, write)
                dropped = await asyncio.to_thread(self._finish, job, work, target)
                if dropped:
                    shown = ", ".join(quote_untrusted(path) for path in dropped[:10])
                    more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
                    write(f"Left out what is neither a file, a folder nor a link: {shown}{more}")
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._clear, job.key))
            raise

    # -- steps ------------------------------------------------------------------------------

    def _work(self, key: str) -> Path:
        """Where the build's file system is mounted for root (dev mode: the entry itself)."""
        return self.cache.work / key if self.root else self.cache.path(key)

    def _mount(self, account: Account | None, key: str) -> None:
        """The build's own size-limited file system in root's work folder, and the empty,
        root-owned folder its mount namespace mounts it on; dev mode: only the folder."""
        target = self.cache.path(key)
        if account is None:
            target.mkdir(parents=True)
            return
        work = self._work(key)
        volumes.create_image(self._image(key), self.limits.size, account.uid, account.gid)
        volumes.mount(self._image(key), work, account.uid, account.gid, mode=0o700)
        shutil.rmtree(work / "lost+found", ignore_errors=True)
        target.mkdir(mode=0o755)

    def _inputs(self, job: BuildJob, account: Account | None, work: Path) -> None:
        """The build's own files beside the repository: its requirements, home, caches and
        temporary folders."""
        scratch = work / SCRATCH
        scratch.mkdir()
        if job.files is not None:
            write_files(work / "repo", job.files)
        shutil.copyfile(BASE_REQUIREMENTS, scratch / "base-requirements.txt")
        relaxed = same_major(BASE_REQUIREMENTS.read_text())
        (scratch / "base-requirements-same-major.txt").write_text(relaxed)
        shutil.copyfile(SERVER_OVERRIDES, scratch / "server-overrides.txt")
        (scratch / "requirements.txt").write_text("\n".join(job.spec.requirements) + "\n")
        if job.spec.conda is not None:
            target = self.cache.path(job.key)  # where the build sees its scratch folder
            instructions = installer_input(
                job.spec.conda,
                self.binder.conda,
                target / ENV,
                target / SCRATCH / "rattler",
                self.packages.conda if self.packages is not None else None,
            )
            (scratch / CONDA_INPUT).write_text(instructions)
            shutil.copyfile(CONDA_INSTALLER, scratch / CONDA_INSTALLER.name)
        if job.store:
            write_map(scratch / STORE_MAP, job.store)
            shutil.copyfile(STORE_PINS, scratch / STORE_PINS.name)
        for name in (name for _, name in PRIVATE_TMP):
            (scratch / name).mkdir(mode=0o700)
        (work / HOME).mkdir(mode=0o700)
        if account is not None:
            owner = f"{account.uid}:{account.gid}"
            ours = [scratch, work / HOME, *([work / "repo"] if job.files is not None else [])]
            run(["chown", "-R", "-h", owner, *map(str, ours)])

    def _environ(self, target: Path) -> dict[str, str]:
        """The build's whole environment: the hub's index and proxy settings, nothing else of
        the hub's, and no configuration file of uv or pip (a repository's ``uv.toml`` or
        ``[tool.uv]`` would choose the packages for everyone sharing its key)."""
        scratch = target / SCRATCH
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
        env.update(
            PATH="/usr/local/bin:/usr/bin:/bin",
            # Kept with the environment, for users' homes (see checkout.copy_home).
            HOME=str(target / HOME),
            # `npm install -g` installs into the environment, whose bin is on PATH.
            NPM_CONFIG_PREFIX=str(target / ENV),
            NPM_CONFIG_CACHE=str(scratch / "npm-cache"),
            LANG="C.UTF-8",
            UV_CACHE_DIR=str(scratch / "uv-cache"),
            UV_NO_CONFIG="1",
            UV_PYTHON_DOWNLOADS="never",
            UV_LINK_MODE="copy",
            # The result is read-only to the users who run it: compile now, not per start.
            UV_COMPILE_BYTECODE="1",
            UV_NO_PROGRESS="1",
            TMPDIR="/tmp" if self.root else str(scratch),
            PIP_CONFIG_FILE=os.devnull,
            PIP_NO_CACHE_DIR="1",
        )
        return env

    def _isolated(self, account: Account, work: Path, target: Path, script: str) -> list[str]:
        """``script`` in a private mount namespace: the scratch file system appears at
        ``target`` and over the temporary folders there only; then the ids are dropped."""
        q = shlex.quote
        mount, scratch = q(tool("mount")), target / SCRATCH
        steps = ["set -eu", f"{mount} --bind {q(str(work))} {q(str(target))}"]
        steps += [
            f"{mount} --bind {q(str(scratch / name))} {q(folder)}" for folder, name in PRIVATE_TMP
        ]
        steps += [
            f"cd {q(str(target))}",
            f"exec {q(tool('setpriv'))} --reuid={account.uid} --regid={account.gid} "
            '--clear-groups --no-new-privs -- /bin/bash -c "$1"',
        ]
        # A slave of the hub's namespace, as a server's: the build's binds stay in it, and
        # users' homes and volumes that the hub unmounts during the build leave it too. A
        # private copy would hold every file system mounted when the build began until it
        # ends, and a user's server stopped meanwhile could not start again until then.
        namespace = [tool("unshare"), "--mount", "--propagation", "slave", "--"]
        return [*namespace, "/bin/sh", "-c", "\n".join(steps), "build", script]

    async def _run(
        self, job: BuildJob, account: Account | None, work: Path, log: Callable[[str], None]
    ) -> None:
        """Run the build script in its cgroup; stream its output; enforce the time limit."""
        target = self.cache.path(job.key)
        wheels = None
        if self.packages is not None:
            await asyncio.to_thread(self.packages.create)
            wheels = self.packages.wheels
        if job.server_layer:
            script = layer_script(target, job.python, self.uv, wheels)
        elif job.store_wheels:
            assert wheels is not None
            script = entry_script(target, job.python, self.uv, wheels, list(job.store_wheels))
        else:
            script = build_script(
                job.spec, target, job.python, self.uv, wheels, job.layer, job.store
            )
        unit = build_unit(self.cache.root, job.key)
        limits = cgroups.Limits(
            cpu=self.limits.cpu, memory=self.limits.memory, pids=self.limits.processes
        )
        group = await asyncio.to_thread(self.enforcer.prepare, unit, limits)
        if account is None:
            log("Dev mode: the build runs as the hub's own user, without CPU or memory limits.")
            command, cwd = ["/bin/bash", "-c", script], str(target)
        else:
            command, cwd = self._isolated(account, work, target, script), "/"
        proc = await asyncio.create_subprocess_exec(
            *self.enforcer.wrap_command(unit, limits, command),
            cwd=cwd,
            env=self._environ(target),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=group.attach_self,
            start_new_session=True,
        )
        tail: list[str] = []

        async def relay() -> None:
            assert proc.stdout is not None
            async for line in lines_of(proc.stdout):
                if line.strip():
                    tail[:] = [*tail[-(LOG_TAIL - 1) :], line]
                    log(line)

        timed_out = False
        try:
            await asyncio.wait_for(asyncio.gather(relay(), proc.wait()), self.limits.time)
        except TimeoutError:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            oom = group.oom_kills()
            await asyncio.to_thread(self._end_processes, group, account)
            if proc.returncode is None:
                await proc.wait()
        if timed_out or proc.returncode != 0:
            raise BuildFailed(self._why(None if timed_out else proc.returncode, oom, tail))

    def keep_packages(self, env: BuiltEnv) -> Harvest | None:
        """Add the wheels and conda packages of a finished build to the package cache (root's
        copy of the environment names them; the index's and the channels' hashes vouch for
        them), within its size; None when it is off."""
        if self.packages is None:
            return None
        wheels = self.packages.harvest(env.prefix, index_urls(dict(os.environ)))
        channels = [channel_url(name, self.binder.conda) for name in self.binder.conda.channels]
        conda = harvest_conda(self.packages, env.prefix, channels)
        self.packages.trim(self.packages.limit)
        return Harvest(
            [*wheels.added, *conda.added],
            [*wheels.known, *conda.known],
            [*wheels.skipped, *conda.skipped],
        )

    def _end_processes(self, group: cgroups.Cgroup, account: Account | None) -> None:
        """Nothing a build started may outlive it (a daemon left by postBuild, a fork bomb):
        the build account runs nothing but builds, so all of its processes go."""
        with contextlib.suppress(SystemOpError):
            group.remove()
        if account is not None:
            kill_processes_of(account.uid)
        group.remove()

    def _why(self, status: int | None, oom: int, tail: list[str]) -> str:
        """Why a build failed (``status`` None: it was stopped at the time limit)."""
        text = "\n".join(tail)
        if oom:
            cause = f"ran out of memory (limit {format_size(self.limits.memory)})"
        elif "No space left on device" in text or "Disk quota exceeded" in text:
            cause = f"outgrew the size limit of {format_size(self.limits.size)}"
        elif "Resource temporarily unavailable" in text or "retry: fork" in text:
            cause = f"tried to start more than {self.limits.processes} processes"
        elif status is None:
            cause = f"took longer than the limit of {format_duration(self.limits.time)}"
        else:
            cause = f"failed (exit status {status})"
        stopped = " and was stopped" if status is None else ""
        return f"The build {cause}{stopped}. The end of its log:\n{text}"

    def _finish(self, job: BuildJob, work: Path, target: Path) -> list[str]:
        """Make the build the cache entry: copied out of its scratch file system, without
        the build's working files, owned by root and read-only for everyone else. Returns
        what was left out (see :func:`copy_tree`). The build's processes are all gone."""
        shutil.rmtree(work / SCRATCH)
        if not job.spec.post_build:
            shutil.rmtree(work / "repo")
        for cache in HOME_CACHES:
            shutil.rmtree(work / HOME / cache, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: kept
            (work / HOME).rmdir()
        if not self.root:
            if tree_size(target) > self.limits.size:
                raise BuildFailed(self._outgrown())
            return []
        staging = self._staging(job.key)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            dropped = copy_tree(work, staging, self.limits.size)
        except _TooLarge:
            raise BuildFailed(self._outgrown()) from None
        volumes.remove_image(self._image(job.key), work)
        work.rmdir()
        os.chmod(staging, 0o755)
        os.rename(staging, target)  # replaces the empty folder the build's namespace used
        return dropped

    def _outgrown(self) -> str:
        return f"The build outgrew the size limit of {format_size(self.limits.size)}."

    def _clear(self, key: str) -> None:
        """Remove whatever a failed or interrupted build of ``key`` left."""
        target = self.cache.path(key)
        if self.root:
            work = self._work(key)
            volumes.remove_image(self._image(key), work)  # unmounts it first
            with contextlib.suppress(FileNotFoundError):
                work.rmdir()
        shutil.rmtree(self._staging(key), ignore_errors=True)
        if not (target / META).exists():
            shutil.rmtree(target, ignore_errors=True)

    def _staging(self, key: str) -> Path:
        return self.cache.path(key).with_name(f".{key}.staging")

    def _image(self, key: str) -> Path:
        """The build's scratch file system image."""
        return self.cache.work / f"{key}.img"


def build_unit(root: Path, key: str) -> str:
    """The cgroup unit of the build of ``key`` into the cache at ``root``, named for both: two
    hubs on one machine building the same key (a server layer is the same for every cache of
    one interpreter) must not share a group, as the end of one build kills what is in it."""
    digest = hashlib.sha256(f"{root}\n{key}".encode()).hexdigest()
    return f"hubstack-build-{digest[:16]}"


def write_files(folder: Path, files: Mapping[str, str]) -> None:
    """A declared spec's files (names the config checked: no paths) as a repository's root,
    in a new folder. Written before the build starts, so nothing of the build account's
    runs yet; each file is new (``O_EXCL``), never through a link in its place. ``postBuild``
    is executable, as in a repository that works on Binder (the key counts the mode)."""
    folder.mkdir(mode=0o700)
    for name, text in files.items():
        mode = 0o755 if name == "postBuild" else 0o644
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as file:
            file.write(text)


def fetch_account_name(build_account: str) -> str:
    """The fetch account's name: the build account's, shortened to fit, with ``-git``."""
    return f"{build_account[:28]}-git"


def _cut(line: str) -> str:
    return line if len(line) <= LINE_MAX else f"{line[:LINE_MAX]} [line cut]"


async def lines_of(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """The lines of a build's output (a CR ends one too: progress bars), each cut to
    :data:`LINE_MAX` characters; a line without end never grows the hub's memory."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending, skipping = "", False
    while chunk := await stream.read(65536):
        *lines, pending = re.split(r"[\r\n]", pending + decoder.decode(chunk))
        for line in lines:
            if not skipping:
                yield _cut(line)
            skipping = False
        if skipping:
            pending = ""
        elif len(pending) > LINE_MAX:
            yield _cut(pending)
            pending, skipping = "", True
    if pending and not skipping:
        yield _cut(pending)


class CappedLog:
    """A build's log file, which stops at :data:`LOG_MAX` bytes with a line saying so (a
    build that prints without end must not fill the disk), and the live log of its launches."""

    def __init__(self, file: IO[str], live: Callable[[str], None]) -> None:
        self.file = file
        self.live = live
        self.written = 0

    def write(self, line: str) -> None:
        self.live(line)
        if self.written > LOG_MAX:
            return
        data = line + "\n"
        self.written += len(data.encode())
        if self.written > LOG_MAX:
            data = f"(log truncated: only the first {format_size(LOG_MAX)} are kept)\n"
        self.file.write(data)
        self.file.flush()


class _TooLarge(Exception):
    """The copy would write more than the build's size limit (sparse or hard-linked files)."""


def copy_tree(source: Path, dest: Path, budget: int) -> list[str]:
    """Copy what a build made at ``source`` into root's empty folder ``dest``, safely.

    ``cp -a`` as root would recreate set-id files, devices and FIFOs as root's; this creates
    only folders (0755), regular files (0644, or 0755 when executable) and symbolic links
    (never followed), all root's, keeping modification times (compiled bytecode checks
    them) and hard links. Each entry is opened without following links and checked with
    ``fstat``. Anything else is left out; the relative paths of what was are returned.
    More than ``budget`` bytes of files (a sparse file is as large as it claims), or
    folders nested deeper than :data:`MAX_DEPTH`, raise :class:`_TooLarge`.
    """
    state = _Copy(budget, {}, [])
    src = os.open(source, NO_FOLLOW_DIR)
    try:
        dst = os.open(dest, NO_FOLLOW_DIR)
        try:
            state.folder(src, dst, str(dest), "", 0)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return state.dropped


@dataclass
class _Copy:
    budget: int
    links: dict[tuple[int, int], str]  # (device, inode) of a file with several names: its copy
    dropped: list[str]

    def folder(self, src: int, dst: int, dst_path: str, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _TooLarge(rel)
        for name in sorted(os.listdir(src)):
            info = os.stat(name, dir_fd=src, follow_symlinks=False)
            path = posixpath.join(rel, name)
            times = (info.st_atime_ns, info.st_mtime_ns)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
                os.utime(name, ns=times, dir_fd=dst, follow_symlinks=False)
            elif stat.S_ISDIR(info.st_mode):
                inner_src = os.open(name, NO_FOLLOW_DIR, dir_fd=src)
                try:
                    os.mkdir(name, 0o700, dir_fd=dst)
                    inner_dst = os.open(name, NO_FOLLOW_DIR, dir_fd=dst)
                    try:
                        inner = posixpath.join(dst_path, name)
                        self.folder(inner_src, inner_dst, inner, path, depth + 1)
                        os.fchmod(inner_dst, 0o755)
                        os.utime(inner_dst, ns=times)
                    finally:
                        os.close(inner_dst)
                finally:
                    os.close(inner_src)
            elif not (stat.S_ISREG(info.st_mode) and self.file(src, dst, dst_path, name)):
                self.dropped.append(path)

    def file(self, src: int, dst: int, dst_path: str, name: str) -> bool:
        """Copy one regular file; False if it is not one once opened."""
        fd_in = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src)
        try:
            info = os.fstat(fd_in)
            if not stat.S_ISREG(info.st_mode):
                return False
            identity = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and identity in self.links:
                os.link(self.links[identity], name, dst_dir_fd=dst, follow_symlinks=False)
                return True
            self.budget -= info.st_size
            if self.budget < 0:
                raise _TooLarge(name)
            mode = 0o755 if info.st_mode & 0o111 else 0o644
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd_out = os.open(name, flags, 0o600, dir_fd=dst)
            try:
                offset = 0
                while offset < info.st_size:
                    sent = os.sendfile(fd_out, fd_in, offset, info.st_size - offset)
                    if sent == 0:
                        break  # shorter than it was: what is there is copied
                    offset += sent
                os.fchmod(fd_out, mode)
                os.utime(fd_out, ns=(info.st_atime_ns, info.st_mtime_ns))
            finally:
                os.close(fd_out)
            if info.st_nlink > 1:
                self.links[identity] = posixpath.join(dst_path, name)
            return True
        finally:
            os.close(fd_in)
