"""Git as a subprocess: resolve a ref, fetch one commit into a mirror within limits, export it.

Repository URLs and refs come from users and the servers behind them are not ours, so every
git call is hardened: no system or global config and no prompts; only the allowed transports
(``GIT_ALLOW_PROTOCOL``, which also covers redirects, submodules and ``ext::``/``file``); no
hooks; redirects not followed (an allowed host must not lead to one that is not); objects
checked as they arrive; the URL and ref after ``--``. Git runs as the account that owns the
mirror, never as root when an account is given (the hub gives its fetch account: git parses
packs from servers that are not ours, and tar writes a tree anybody made).

A mirror is a bare repository per repository URL holding the commits fetched so far (each at
depth 1, no refs; nothing here runs ``gc``). A fetch goes into a fresh staging repository
next to the mirror, which becomes the mirror (first fetch) or whose objects are moved into it,
only once the commit is complete and within the size limit; a fetch that fails, is too large or
takes too long leaves the mirror as it was and no staging directory behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubstack.errors import Explained
from hubstack.launch.repo import COMMIT
from hubstack.system import SystemOpError, tool
from hubstack.system.accounts import Account, current_account, switch_to
from hubstack.system.userpaths import as_user
from hubstack.units import human_size
from hubstack.untrusted import quote_untrusted

SUPPORTED_SCHEMES = frozenset({"https", "http", "git"})
POLL_INTERVAL = 0.2
"""Seconds between two looks at a fetch's disk use (and its deadline)."""

_URL = re.compile(r"([a-z]+)://[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_LINE = 300
_MAX_OUTPUT = 32 * 1024**2  # ls-remote of the largest real repositories is a few MB
_KEPT_LINES = 20
# Exported files get these modes whatever the hub's umask (0644, 0755 for executables).
_UMASK = 0o022
# Wins over the tree's .gitattributes: export the files as they are in the commit (as a
# checkout would), not as `git archive` would prepare a release tarball.
_ATTRIBUTES = "* -export-ignore -export-subst\n"
_OPTIONS = (
    "protocol.file.allow=never",
    "http.followRedirects=false",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "transfer.fsckObjects=true",
    "gc.auto=0",
    "maintenance.auto=false",
    f"tar.umask={_UMASK:04o}",
)
_FETCH = (
    "fetch",
    "--depth=1",
    "--no-tags",
    "--progress",
    "--no-write-fetch-head",
    "--no-recurse-submodules",
)


class GitError(Explained):
    """A repository could not be resolved, fetched or exported; ``message`` is for the user."""


@dataclass
class _Outcome:
    """How a git run ended: its exit code, or why it was killed."""

    returncode: int | None = None
    killed: str | None = None  # "timeout", "size" or "output"
    stdout: bytes = b""
    lines: list[str] = field(default_factory=list)  # the last lines of stderr

    @property
    def ok(self) -> bool:
        return self.killed is None and self.returncode == 0

    def error(self) -> str:
        """Git's own explanation: its last fatal/error line, else its last line."""
        for line in reversed(self.lines):
            for prefix in ("fatal: ", "error: "):
                if line.startswith(prefix):
                    return line.removeprefix(prefix)
        return self.lines[-1] if self.lines else f"git exited with code {self.returncode}"


def check_url(url: str, schemes: Collection[str]) -> None:
    """Refuse any URL but ``<allowed scheme>://...``, before git can interpret it.

    Git alone would refuse other transports too (``GIT_ALLOW_PROTOCOL``); this also keeps
    local paths, ``<helper>::<address>`` forms and option-looking values from reaching it.
    """
    unknown = set(schemes) - SUPPORTED_SCHEMES
    if unknown:
        raise ValueError(f"unsupported git transports {sorted(unknown)}")
    match = _URL.fullmatch(url)
    if not match or match[1] not in schemes:
        allowed = ", ".join(f"{scheme}://" for scheme in sorted(schemes))
        raise GitError(
            f"The repository address {quote_untrusted(url)} is not allowed: "
            f"only {allowed} addresses can be used."
        )


def check_ref(ref: str) -> None:
    """Refuse a ref git could read as an option (validation proper is done before)."""
    if not ref or ref.startswith("-") or _CONTROL.search(ref) or " " in ref:
        raise GitError(f"{quote_untrusted(ref)} is not a branch, tag or commit name.")


def _check_commit(commit: str) -> None:
    if not COMMIT.fullmatch(commit):
        raise ValueError(f"not a full commit id: {commit!r}")


def _env(schemes: Collection[str]) -> dict[str, str]:
    """The whole environment of a git call: nothing inherited from the hub.

    HOME does not exist, so no per-user file (attributes, credentials) is ever read.
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ":".join(sorted(schemes)),
    }


def _as_user(user: Account | None) -> list[str]:
    """The command prefix that runs git or tar as ``user`` with its groups (as initgroups)."""
    if user is None or user.uid == os.geteuid():
        return []
    return switch_to(user, init_groups=True)


def _config() -> list[str]:
    return [arg for option in _OPTIONS for arg in ("-c", option)]


def _owner(repo: Path) -> Account | None:
    """The account owning ``repo``, to run git as: git refuses (rightly) to read another
    account's repository, whose config could make it run commands."""
    info = os.stat(repo)
    if info.st_uid == os.geteuid():
        return None
    try:
        entry = pwd.getpwuid(info.st_uid)
    except KeyError:
        return Account(str(info.st_uid), info.st_uid, info.st_gid, Path("/nonexistent"))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _chown(path: Path, user: Account | None) -> None:
    if user is not None and user.uid != os.geteuid():
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


def _clean(text: str) -> str:
    """A line of git's output fit for a log or a web page: no control characters, cut."""
    return _CONTROL.sub("", text).strip()[:_MAX_LINE]


def _disk_use(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # git renames its temporary files
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill git and its helpers (remote-http, index-pack): they share its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _run(
    args: Sequence[str],
    *,
    schemes: Collection[str],
    user: Account | None,
    timeout: float,
    log: Callable[[str], None] | None = None,
    watch: Path | None = None,
    max_size: int | None = None,
) -> _Outcome:
    """Run git with ``args``, hardened, and stop it at ``timeout`` or when ``watch`` outgrows
    ``max_size``. stderr is split into lines (progress updates end in CR) and passed to ``log``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    proc = await asyncio.create_subprocess_exec(
        *_as_user(user),
        tool("git"),
        *_config(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(schemes),
        cwd="/",
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    outcome = _Outcome()

    def stop(reason: str) -> None:
        if outcome.killed is None:
            outcome.killed = reason
            _kill(proc)

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        chunks: list[bytes] = []
        size = 0
        while chunk := await stream.read(65536):
            size += len(chunk)
            if size > _MAX_OUTPUT:
                stop("output")
                return
            chunks.append(chunk)
        outcome.stdout = b"".join(chunks)

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        pending = ""
        while chunk := await stream.read(4096):
            *lines, pending = re.split(r"[\r\n]", pending + chunk.decode(errors="replace"))
            pending = pending[-4096:]
            for line in filter(None, map(_clean, lines)):
                outcome.lines = [*outcome.lines[-_KEPT_LINES + 1 :], line]
                if log is not None:
                    log(line)

    async def watchdog() -> None:
        while loop.time() < deadline:
            if (
                watch is not None
                and max_size is not None
                and await asyncio.to_thread(_disk_use, watch) > max_size
            ):
                stop("size")
                return
            await asyncio.sleep(min(POLL_INTERVAL, max(deadline - loop.time(), 0)))
        stop("timeout")

    guard = asyncio.create_task(watchdog())
    try:
        await asyncio.gather(read_stdout(proc.stdout), read_stderr(proc.stderr))
        outcome.returncode = await proc.wait()
    finally:
        guard.cancel()
        if proc.returncode is None:  # cancelled, or stopped while its output was still open
            _kill(proc)
            await proc.wait()
    return outcome


async def resolve_ref(
    url: str,
    ref: str,
    *,
    schemes: Collection[str],
    timeout: float,
    user: Account | None = None,
) -> str:
    """The commit ``ref`` names in the repository at ``url``, as 40 hex digits.

    Branches win over tags of the same name, as with ``git checkout``; an annotated tag
    gives the commit it points at. A full commit id is returned as is: :func:`fetch` checks
    that it exists.
    """
    check_url(url, schemes)
    check_ref(ref)
    if COMMIT.fullmatch(ref.lower()):
        return ref.lower()
    outcome = await _run(["ls-remote", "--", url], schemes=schemes, user=user, timeout=timeout)
    if not outcome.ok:
        raise GitError(_failure("read", url, outcome, timeout))
    refs: dict[str, str] = {}
    for line in outcome.stdout.decode(errors="replace").splitlines():
        sha, _, name = line.partition("\t")
        if COMMIT.fullmatch(sha):
            refs[name] = sha
    candidates = ["HEAD"] if ref == "HEAD" else []
    candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref]
    for name in candidates:
        if name in refs:
            return refs[name]
    raise GitError(
        f"Could not resolve {quote_untrusted(ref)} in {quote_untrusted(url)}: "
        "no such branch or tag."
    )


def _failure(action: str, url: str, outcome: _Outcome, timeout: float) -> str:
    """A sentence saying why git could not ``action`` the repository at ``url``."""
    shown = quote_untrusted(url)
    if outcome.killed == "timeout":
        return (
            f"Could not {action} the repository {shown} within {timeout:g} s: "
            "the server is too slow or does not answer."
        )
    if outcome.killed == "output":
        return f"Could not {action} the repository {shown}: the server lists too many refs."
    error = outcome.error()
    if "terminal prompts disabled" in error:
        return (
            f"The repository {shown} does not exist or asks for a password: "
            "only public repositories can be used."
        )
    if re.search(r"returned error: 30[0-9]", error):
        return (
            f"The server redirects {shown} elsewhere, which is not followed: use the "
            "repository's exact clone address (on some forges it ends in .git)."
        )
    return f"Could not {action} the repository {shown}: {error}"


async def _has_commit(repo: Path, commit: str, user: Account | None) -> bool:
    outcome = await _run(
        [f"--git-dir={repo}", "cat-file", "-e", f"{commit}^{{commit}}"],
        schemes=(),
        user=user,
        timeout=60,
    )
    return outcome.ok


async def fetch(
    url: str,
    ref: str,
    commit: str,
    mirror: Path,
    *,
    schemes: Collection[str],
    max_size: int,
    timeout: float,
    user: Account | None,
    log: Callable[[str], None],
) -> None:
    """Make ``commit`` (found at ``ref``) of ``url`` available in the bare mirror ``mirror``.

    Only the commit is fetched (depth 1). A server that refuses a commit no ref points at
    (protocol v0) gets a second fetch of ``ref``, which must still contain the commit. A
    fetch over ``max_size`` bytes or taking over ``timeout`` seconds is killed and leaves the
    mirror unchanged. Git's progress is passed to ``log`` line by line. Every call on a
    mirror must give the same ``user``.
    """
    check_url(url, schemes)
    check_ref(ref)
    _check_commit(commit)
    if mirror.exists() and await _has_commit(mirror, commit, user):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    mirror.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{mirror.name}.", suffix=".fetch", dir=mirror.parent))
    try:
        _chown(staging, user)
        init = await _run(
            ["init", "--quiet", "--bare", "--template=", "--", str(staging)],
            schemes=(),
            user=user,
            timeout=60,
        )
        if not init.ok:
            raise RuntimeError(f"git init {staging} failed: {init.error()}")
        (staging / "info").mkdir()
        (staging / "info/attributes").write_text(_ATTRIBUTES)
        _chown(staging / "info", user)
        _chown(staging / "info/attributes", user)

        async def get(want: str) -> _Outcome:
            return await _run(
                [f"--git-dir={staging}", *_FETCH, "--", url, want],
                schemes=schemes,
                user=user,
                timeout=max(deadline - loop.time(), 0),
                log=log,
                watch=staging,
                max_size=max_size,
            )

        outcome = await get(commit)
        refused = not outcome.ok and outcome.killed is None and commit in outcome.error()
        if refused and ref != commit:
            log(f"The server does not send commits by id; fetching {quote_untrusted(ref)} instead")
            outcome = await get(ref)
        if outcome.killed == "size" or await asyncio.to_thread(_disk_use, staging) > max_size:
            raise GitError(f"The repository is larger than the limit of {human_size(max_size)}.")
        if refused and ref == commit:
            raise GitError(f"Commit {commit[:12]} is not in the repository {quote_untrusted(url)}.")
        if not outcome.ok:
            raise GitError(_failure("fetch", url, outcome, timeout))
        if not await _has_commit(staging, commit, user):
            raise GitError(
                f"{quote_untrusted(ref)} of {quote_untrusted(url)} no longer points at commit "
                f"{commit[:12]} (it changed meanwhile, or the commit does not exist); "
                "launch again."
            )
        await asyncio.to_thread(_install, staging, mirror, user)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _install(staging: Path, mirror: Path, user: Account | None) -> None:
    """Make the fetched objects part of the mirror, under a lock on the mirrors' directory.

    Objects are only ever added (never rewritten), so readers of the mirror are not disturbed;
    pack indexes are moved after their packs so that git never sees an index without its pack.
    """
    fd = os.open(mirror.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not mirror.exists():
            staging.rename(mirror)
            return
        source, target = staging / "objects", mirror / "objects"
        for root, dirs, files in os.walk(source):
            dirs[:] = [name for name in dirs if name != "info"]
            destination = target / Path(root).relative_to(source)
            if not destination.exists():
                destination.mkdir()
                _chown(destination, user)
            for name in sorted(files, key=lambda name: name.endswith(".idx")):
                if not (destination / name).exists():
                    os.rename(os.path.join(root, name), destination / name)
        _merge_shallow(staging / "shallow", mirror / "shallow", user)
    finally:
        os.close(fd)


def _merge_shallow(new: Path, existing: Path, user: Account | None) -> None:
    """Record the new shallow boundary too: the mirror stays a valid shallow repository."""
    commits = set(new.read_text().split()) if new.exists() else set()
    if existing.exists():
        commits |= set(existing.read_text().split())
    replacement = existing.with_name("shallow.new")
    replacement.write_text("".join(f"{commit}\n" for commit in sorted(commits)))
    _chown(replacement, user)
    replacement.rename(existing)


async def export(
    mirror: Path,
    commit: str,
    dest: Path,
    *,
    user: Account | None,
    max_size: int | None = None,
    timeout: float = 600,
) -> None:
    """Write the files of ``commit`` into the new directory ``dest``, owned by ``user``.

    No ``.git``: the checkout is the repository's content, not a clone. Executable bits and
    symlinks are kept (symlinks are created, never followed). A tree whose files add up to
    more than ``max_size`` bytes is refused before anything is written; on any failure
    ``dest`` is removed. Git reads the mirror as the account owning it; only the files are
    written as ``user``.
    """
    _check_commit(commit)
    owner = await asyncio.to_thread(_owner, mirror)
    listing = await _run(
        [f"--git-dir={mirror}", "ls-tree", "-r", "-l", "-z", commit],
        schemes=(),
        user=owner,
        timeout=timeout,
    )
    if listing.killed == "output":
        raise GitError(f"The repository has too many files at commit {commit[:12]}.")
    if not listing.ok:
        raise GitError(f"Commit {commit[:12]} has not been fetched: {listing.error()}")
    if max_size is not None:
        total = 0
        for entry in listing.stdout.split(b"\0"):
            fields = entry.split(b"\t", 1)[0].split()
            if len(fields) == 4 and fields[1] == b"blob":
                total += int(fields[3])
        if total > max_size:
            raise GitError(
                f"The repository's files take {human_size(total)}, more than the limit "
                f"of {human_size(max_size)}."
            )
    # dest may lie in ``user``'s storage: made and removed in their name, not through root.
    writer = user or current_account()
    await as_user(writer, "mkdir", "-m", "0755", "--", str(dest))
    try:
        await _archive(mirror, commit, dest, owner, user, timeout)
    except BaseException:
        with contextlib.suppress(SystemOpError):
            await asyncio.shield(as_user(writer, "rm", "-rf", "--", str(dest)))
        raise


async def _archive(
    mirror: Path,
    commit: str,
    dest: Path,
    owner: Account | None,
    user: Account | None,
    timeout: float,
) -> None:
    """``git archive`` as the mirror's ``owner`` piped into ``tar --extract`` as ``user``."""
    common: dict[str, Any] = {
        "env": _env(()),
        "cwd": "/",
        "stderr": asyncio.subprocess.PIPE,
        "start_new_session": True,
    }
    archive = [tool("git"), *_config(), f"--git-dir={mirror}", "archive", "--format=tar", commit]
    extract = [tool("tar"), "--extract", "--no-same-owner", "--no-same-permissions"]
    extract += [f"--directory={dest}", "--file=-"]
    read_end, write_end = os.pipe()
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(
            await asyncio.create_subprocess_exec(
                *_as_user(owner),
                *archive,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                **common,
            )
        )
        procs.append(
            await asyncio.create_subprocess_exec(
                *_as_user(user),
                *extract,
                stdin=read_end,
                stdout=asyncio.subprocess.DEVNULL,
                umask=_UMASK,
                **common,
            )
        )
        os.close(read_end)
        os.close(write_end)
        read_end = write_end = -1
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*(proc.communicate() for proc in procs))
    except TimeoutError:
        raise GitError(
            f"Writing out commit {commit[:12]} took longer than {timeout:g} s."
        ) from None
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        for proc in procs:
            if proc.returncode is None:
                _kill(proc)
                await proc.wait()
    # tar first: when it fails, git only reports the pipe it closed.
    for proc, (_out, err) in reversed(list(zip(procs, results, strict=True))):
        if proc.returncode != 0:
            lines = [_clean(line) for line in err.decode(errors="replace").splitlines()]
            detail = next(
                (line for line in reversed(lines) if line), f"exit code {proc.returncode}"
            )
            raise GitError(f"Could not write out commit {commit[:12]}: {detail}")
