"""Build one environment from a repository with uv, as an unprivileged account, in limits.

A build runs arbitrary code (a ``postBuild``, any package's build backend), so it gets:

- its own account (``binder.build_account``), never a user's and never root;
- CPU, memory and process limits through the same cgroup code as servers, and a time limit;
- a size limit that is enforced by the kernel: the build writes only to a loop-mounted
  file system of ``limits.size`` mounted where the environment will live (a virtualenv's
  scripts name their own path, so it is built in place), which is copied out, root-owned
  and read-only, when the build succeeds;
- no shared writable state: uv's cache lives on that scratch file system and goes with it,
  so one build cannot plant anything in another's packages; builds run one at a time.

Without root (dev mode) there are no accounts, cgroups or loop mounts: the build runs as
the hub's user directly in place, and only the time limit and an after-the-fact size check
apply, as the log says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jupyterhub.spawner import set_user_setuid

from hubstack.config.models import Binder
from hubstack.config.units import format_duration, format_size
from hubstack.envs.cache import META, EnvCache, tree_size
from hubstack.envs.git import export
from hubstack.envs.spec import EnvSpec
from hubstack.errors import Explained
from hubstack.system import SystemOpError, cgroups, run, volumes
from hubstack.system.accounts import Account, ensure_account, kill_processes_of

BASE_REQUIREMENTS = Path(__file__).with_name("base-requirements.txt")
SERVER_OVERRIDES = Path(__file__).with_name("server-overrides.txt")
# Part of every environment key: a change to how environments are built rebuilds them.
# 2: bytecode compiled at build time, base packages installed with SERVER_OVERRIDES.
BUILDER_VERSION = "2"
# Passed from the hub's environment to uv, so a site's index, proxy and CA settings apply.
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
)
LOG_TAIL = 12
SCRATCH = ".hubstack-build"


class BuildFailed(Explained):
    """A build that did not produce an environment; ``message`` says why, for the user."""


@dataclass(frozen=True)
class BuildJob:
    """One environment to build: what, from where, and into which cache entry."""

    key: str
    spec: EnvSpec
    python: Path
    mirror: Path
    commit: str


def uv_binary() -> str:
    """uv as scripts/setup.sh installs it, else from PATH."""
    installed = Path("/opt/hubstack/tools/bin/uv")
    if installed.exists():
        return str(installed)
    return shutil.which("uv") or "uv"


def build_script(spec: EnvSpec, target: Path, python: Path, uv: str) -> str:
    """The shell script of one build; every value in it is quoted.

    The base packages go in first, then the repository's own (which may override them),
    as repo2docker does; requirement files are installed from their own folder so their
    relative references (``-r other.txt``, ``-e .``) mean what their authors meant.
    """
    q = shlex.quote
    env, repo, scratch = target / "env", target / "repo", target / SCRATCH
    pip = f"{q(uv)} pip install --python {q(str(env / 'bin/python'))}"
    lines = [
        "set -eu",
        f"cd {q(str(repo))}",
        f"echo {q(f'Creating the environment with {python.name}')}",
        f"{q(uv)} venv --quiet --python {q(str(python))} {q(str(env))}",
        "echo 'Installing the Jupyter server and kernel'",
        f"{pip} --override {q(str(scratch / 'server-overrides.txt'))} "
        f"-r {q(str(scratch / 'base-requirements.txt'))}",
    ]
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
    if spec.post_build:
        lines += [
            f"echo {q(f'Running {spec.post_build}')}",
            f"chmod +x {q(spec.post_build)}",
            f"PATH={q(str(env / 'bin'))}:$PATH ./{q(spec.post_build)}",
        ]
    lines.append("echo 'Build finished'")
    return "\n".join(lines) + "\n"


class Builder:
    """Runs builds into an :class:`EnvCache` under the limits of ``binder``."""

    def __init__(self, binder: Binder, cache: EnvCache, enforcer: cgroups.Enforcer) -> None:
        self.binder = binder
        self.limits = binder.limits
        self.cache = cache
        self.root = os.geteuid() == 0
        self.enforcer = enforcer if self.root else cgroups.NoLimits()
        self.uv = uv_binary()

    def account(self) -> Account | None:
        """The build account (created on first use); None in dev mode."""
        if not self.root:
            return None
        return ensure_account(
            self.binder.build_account, Path("/nonexistent"), shell="/usr/sbin/nologin", group=None
        )

    async def build(self, job: BuildJob, log: Callable[[str], None]) -> None:
        """Build ``job`` into the cache, or raise :class:`BuildFailed` leaving nothing behind."""
        target = self.cache.path(job.key)
        image = self._image(job.key)
        account = await asyncio.to_thread(self.account)
        await asyncio.to_thread(self._clear, job.key)
        log_path = self.cache.log(job.key)
        try:
            with log_path.open("w") as log_file:

                def write(line: str) -> None:
                    log_file.write(line + "\n")
                    log_file.flush()
                    log(line)

                await asyncio.to_thread(self._mount, account, image, target)
                await export(job.mirror, job.commit, target / "repo", user=account)
                await asyncio.to_thread(self._inputs, job, account, target)
                await self._run(job, account, target, write)
                await asyncio.to_thread(self._finish, job, image, target)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._clear, job.key))
            raise

    # -- steps ------------------------------------------------------------------------------

    def _mount(self, account: Account | None, image: Path, target: Path) -> None:
        """The build's own file system at ``target`` (size-limited when root)."""
        if account is None:
            target.mkdir(parents=True)
            return
        volumes.create_image(image, self.limits.size, account.uid, account.gid)
        volumes.mount(image, target, account.uid, account.gid, mode=0o755)
        shutil.rmtree(target / "lost+found", ignore_errors=True)

    def _inputs(self, job: BuildJob, account: Account | None, target: Path) -> None:
        """The build's own files beside the repository: its requirements, home and caches."""
        scratch = target / SCRATCH
        scratch.mkdir()
        shutil.copyfile(BASE_REQUIREMENTS, scratch / "base-requirements.txt")
        shutil.copyfile(SERVER_OVERRIDES, scratch / "server-overrides.txt")
        (scratch / "requirements.txt").write_text("\n".join(job.spec.requirements) + "\n")
        (scratch / "home").mkdir()
        if account is not None:
            run(["chown", "-R", "-h", f"{account.uid}:{account.gid}", str(scratch)])

    def _environ(self, target: Path) -> dict[str, str]:
        scratch = target / SCRATCH
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
        env.update(
            PATH="/usr/local/bin:/usr/bin:/bin",
            HOME=str(scratch / "home"),
            LANG="C.UTF-8",
            UV_CACHE_DIR=str(scratch / "uv-cache"),
            UV_PYTHON_DOWNLOADS="never",
            UV_LINK_MODE="copy",
            # The result is read-only to the users who run it: compile now, not per start.
            UV_COMPILE_BYTECODE="1",
            UV_NO_PROGRESS="1",
            TMPDIR=str(scratch),
            PIP_NO_CACHE_DIR="1",
        )
        return env

    async def _run(
        self, job: BuildJob, account: Account | None, target: Path, log: Callable[[str], None]
    ) -> None:
        """Run the build script in its cgroup; stream its output; enforce the time limit."""
        script = build_script(job.spec, target, job.python, self.uv)
        unit = f"hubstack-build-{job.key[:16]}"
        limits = cgroups.Limits(
            cpu=self.limits.cpu, memory=self.limits.memory, pids=self.limits.processes
        )
        group = await asyncio.to_thread(self.enforcer.prepare, unit, limits)
        setuid = set_user_setuid(account.name, chdir=False) if account is not None else None

        def preexec() -> None:
            group.attach_self()
            if setuid is not None:
                setuid()

        if not self.root:
            log("Dev mode: the build runs as the hub's own user, without CPU or memory limits.")
        proc = await asyncio.create_subprocess_exec(
            *self.enforcer.wrap_command(unit, limits, ["/bin/bash", "-c", script]),
            cwd=str(target),
            env=self._environ(target),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=preexec,
            start_new_session=True,
        )
        tail: list[str] = []

        async def relay() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                for line in raw.decode("utf-8", "replace").replace("\r", "\n").splitlines():
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

    def _finish(self, job: BuildJob, image: Path, target: Path) -> None:
        """Make the build the cache entry: copied out of its scratch file system, without
        the build's working files, owned by root and read-only for everyone else."""
        shutil.rmtree(target / SCRATCH)
        if not job.spec.post_build:
            shutil.rmtree(target / "repo")
        if not self.root:
            if tree_size(target) > self.limits.size:
                raise BuildFailed(
                    f"The build outgrew the size limit of {format_size(self.limits.size)}."
                )
            return
        staging = target.with_name(f".{job.key}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        for part in sorted(p.name for p in target.iterdir()):
            run(["cp", "-a", "--no-preserve=ownership", str(target / part), str(staging)])
        volumes.remove_image(image, target)
        target.rmdir()
        # Nothing built by the unprivileged account may become set-id once root owns it.
        run(["chmod", "-R", "a+rX,go-w,ug-s", str(staging)])
        staging.rename(target)

    def _clear(self, key: str) -> None:
        """Remove whatever a failed or interrupted build of ``key`` left."""
        target = self.cache.path(key)
        if self.root:
            volumes.remove_image(self._image(key), target)  # unmounts it first
        shutil.rmtree(target.with_name(f".{key}.staging"), ignore_errors=True)
        if not (target / META).exists():
            shutil.rmtree(target, ignore_errors=True)

    def _image(self, key: str) -> Path:
        """The build's scratch file system image."""
        return self.cache.builds / f"{key}.img"
