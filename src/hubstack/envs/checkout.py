"""Put a repository's files into a server's volume, as the server's own account.

Each launch gets the repository at the launched commit: from the hub's mirror, or, when a
``postBuild`` changed the repository, as the build left it (as repo2docker's image would
have it). Files a user already has there are never lost: the checkout of the same commit
is kept as the user left it, and one of another commit is moved to ``<name>.previous``.

What the build left in its home (a ``postBuild``'s ``~/.jupyter`` settings, its files) is
copied into the user's home on the first launch of each environment, as the user and
without replacing any file the user has: in repo2docker's image that home is the user's.
"""

from __future__ import annotations

from pathlib import Path

from hubstack.envs.git import export
from hubstack.launch.plan import Content
from hubstack.system import SystemOpError
from hubstack.system.accounts import Account, current_account
from hubstack.system.userpaths import AS_USER_TIMEOUT, as_user

MARKS = ".hubstack/checkouts"
HOME_MARKS = ".hubstack/homes"


# Run as the user, in their name: the checkout's state is whatever their files say, and a
# link, FIFO or device there can only mislead or stall that user's own start.
_IS_CURRENT = (
    '[ -d "$1" ] && [ ! -L "$1" ] && [ -f "$2" ] && [ ! -L "$2" ] && '
    '[ "$(head -c 64 -- "$2")" = "$3" ]'
)
_MOVE_ASIDE = 'if [ -e "$1" ] || [ -L "$1" ]; then rm -rf -- "$2" && mv -T -- "$1" "$2"; fi'
_WRITE_MARK = 'mkdir -p -- "${2%/*}" && rm -f -- "$2" && printf "%s\\n" "$1" > "$2"'
# Copy the build's home ($1) into the user's ($2) once ($3 marks it), keeping every file the
# user has (-n) and copying links as links (-P).
_COPY_HOME = (
    '[ -e "$3" ] || { cp -R -n -P --preserve=mode,timestamps -- "$1/." "$2/" && '
    'mkdir -p -- "${3%/*}" && : > "$3"; }'
)
# A checkout of a big repository is a copy of many files; the rest are single operations.
_COPY_TIMEOUT_S = 600.0


def _mark(volume: Path, name: str) -> Path:
    return volume / MARKS / name


async def _as_user(account: Account | None, *argv: str, timeout: float = AS_USER_TIMEOUT) -> None:
    """A file operation in the user's own name (never root's, in their files)."""
    await as_user(account or current_account(), *argv, timeout=timeout)


async def check_out(content: Content, volume: Path, account: Account | None) -> None:
    """Give the repository's directory in ``volume`` the content of ``content.commit``.

    Root reads and tests nothing here itself: every look at the user's files runs as the
    user, with a time limit, so a FIFO or a link to /dev/zero cannot stall or exhaust the hub.
    """
    workdir = content.directory(volume)
    mark = _mark(volume, content.name)
    try:
        await _as_user(
            account, "sh", "-c", _IS_CURRENT, "sh", str(workdir), str(mark), content.commit
        )
    except SystemOpError:
        pass  # not the launched commit, or not readable as a mark: check it out again
    else:
        return
    previous = volume / f"{content.name}.previous"
    await _as_user(account, "sh", "-c", _MOVE_ASIDE, "sh", str(workdir), str(previous))
    if content.snapshot is not None:
        await _as_user(
            account,
            "cp",
            "-R",
            "--preserve=mode,timestamps",
            "--",
            str(content.snapshot),
            str(workdir),
            timeout=_COPY_TIMEOUT_S,
        )
    else:
        await export(content.mirror, content.commit, workdir, user=account)
    await _as_user(account, "sh", "-c", _WRITE_MARK, "sh", content.commit, str(mark))


async def copy_home(content: Content, account: Account | None) -> None:
    """Give the user's home what the build left in its own, once per environment."""
    if content.home is None:
        return
    user = account or current_account()
    mark = user.home / HOME_MARKS / content.home.parent.name
    await _as_user(
        account,
        "sh",
        "-c",
        _COPY_HOME,
        "sh",
        str(content.home),
        str(user.home),
        str(mark),
        timeout=_COPY_TIMEOUT_S,
    )
