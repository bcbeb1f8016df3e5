"""repo2docker's own test repositories, launched on a hubstack hub: which pass, which cannot.

    uv run python benchmarks/repo2docker_cases.py [--only GLOB] [--known all|skip|only]

The cases are the folders with a ``verify`` script under ``tests/data/repo2docker`` (its
``venv``, ``pipfile``, ``pyproject``, ``conda``, ``r`` and ``base`` tests, BSD-3). Each is made
a git repository on a loopback git daemon, launched through the binder service's BinderHub API as
Binder clients do (benchmarks/binder.py's launcher: one ``hubstack up`` hub with hubtest's
config, one user), and its ``verify`` is run in the launched server as the user, from the
repository's directory (``$REPO_DIR``), by a kernel: so with the server's environment, after
the repository's ``start``, as repo2docker runs it in its image. Every server is deleted
after its case.

Cases that cannot pass on a hubstack site are listed in :data:`CANNOT` with the reason; they
are launched too (``--known skip`` leaves them out, ``--known only`` runs only them), and a
pass among them is reported as such. Builds run one at a time, so a whole run takes roughly
a cold build per case (about a minute each here): a benchmark, not part of the test suite.

Needs root and the default environment of scripts/setup.sh, as benchmarks/binder.py.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from binder import Launcher, LaunchFailed, binder_hub, service_answers
from gitserver import GitDaemon, make_repo
from hubbench import SINGLEUSER, catch_signals

from hubstack.config.load import validate

CASES = Path(__file__).resolve().parents[1] / "tests/data/repo2docker"
VERIFY_TIMEOUT = 600
OUTPUT_TAIL = 6
CONDA = "needs conda packages (conda-forge, defaults), which cannot be reached from here"
PY2 = "asks for Python 2.7, which no source here provides"
R_CHANNEL = (
    "needs conda-forge's r-base {} (conda builds are off here, as no public channel can be "
    "reached) and CRAN packages from packagemanager.posit.co, which cannot be reached either"
)
CANNOT = {
    "base/general": "expects the user jovyan with uid 1000 (hubstack's users are hs-<name> "
    "accounts of the site) and Node 20 from the image",
    "venv/default": "reads /tmp/appendix, written by repo2docker's --appendix Dockerfile "
    "lines; and asserts Python 3.10 (this host has 3.11, uv downloads are off)",
    "venv/numpy": "asserts Python 3.10, repo2docker's default (this host has 3.11, uv "
    "downloads are off)",
    "venv/py2": PY2,
    "venv/py2-with-kernel-requirements": PY2,
    "venv/py35": "asks for Python 3.5, which no source here provides",
    "pipfile/py2-with-server-and-kernel-req": PY2,
    "pipfile/py36": "asks for Python 3.6, which no source here provides",
    **{
        f"conda/{name}": CONDA
        for name in (
            "downgrade",
            "py-r-postbuild-file",
            "py2",
            "py310-requirements-file",
            "py312",
            "py35-binder-dir",
            "py36-postBuild",
            "r3.6-target-repo-dir-flag",
            "yaml",
        )
    },
    "r/r-rspm-apt-file": R_CHANNEL.format("4.4")
    + "; it asserts R 4.4, repo2docker's default (hubstack takes the newest r-base the "
    "channel has), and lists apt.txt's package with `apt list`, which reads the host's dpkg "
    "database, not the packages unpacked into the environment",
    "r/r-rspm-description-file": R_CHANNEL.format("(any version)"),
    "r/r3.6-rspm": R_CHANNEL.format("3.6"),
    "r/r4.3.2-rspm": R_CHANNEL.format("4.3.2"),
    "r/r4.5-rspm": R_CHANNEL.format("4.5.1"),
    "r/r4.6-rspm": R_CHANNEL.format("4.6.1"),
}
RUN_VERIFY = f"""
import os, subprocess
done = subprocess.run(
    ["./verify"], cwd=os.environ["REPO_DIR"], capture_output=True, text=True,
    timeout={VERIFY_TIMEOUT},
)
print(done.returncode)
print((done.stdout + done.stderr).strip())
"""


@dataclass
class Result:
    case: str
    passed: bool
    seconds: float
    detail: str


def cases(only: str | None, known: str) -> list[str]:
    """The cases to run: matching ``only``; with ``known`` "skip" or "only", without or only
    the cases of :data:`CANNOT`."""
    found = sorted(str(p.parent.relative_to(CASES)) for p in CASES.rglob("verify"))
    if only:
        found = [case for case in found if fnmatch.fnmatch(case, only)]
    if known == "all":
        return found
    return [case for case in found if (case in CANNOT) == (known == "only")]


def repository(git: GitDaemon, case: str) -> str:
    """The case as a git repository on the daemon (executable bits kept); its URL."""
    folder = CASES / case
    files, executable = {}, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        files[rel] = path.read_text()
        if os.access(path, os.X_OK):
            executable.append(rel)
    name = case.replace("/", "-")
    make_repo(git.base / name, files, executable=tuple(executable))
    return git.url(name)


def run_case(launcher: Launcher, git: GitDaemon, case: str) -> Result:
    url = repository(git, case)
    started = time.monotonic()
    server = launcher.repo_server(url)
    try:
        launcher.launch(url)
        run = launcher.session.run_code(RUN_VERIFY, server, timeout=VERIFY_TIMEOUT + 30)
        if run.status != "ok":
            return Result(case, False, time.monotonic() - started, f"kernel: {run}")
        status, _, output = run.stdout.partition("\n")
        passed = status.strip() == "0"
        detail = "" if passed else f"verify exited {status.strip()}: {tail(output)}"
        return Result(case, passed, time.monotonic() - started, detail)
    except LaunchFailed as exc:
        return Result(case, False, time.monotonic() - started, f"launch failed: {tail(str(exc))}")
    finally:
        if launcher.session.model(server, include_stopped=True) is not None:
            launcher.remove(server)  # a failed launch's server too: named servers are limited


def tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-OUTPUT_TAIL:])


def report(results: list[Result]) -> None:
    print(f"\n{'case':44} {'result':7} {'s':>5}  why not")
    for r in results:
        why = CANNOT.get(r.case, "")
        shown = "pass" if r.passed else ("cannot" if why else "FAIL")
        print(f"{r.case:44} {shown:7} {r.seconds:5.0f}  {why or r.detail}")
        if not r.passed and why and r.detail:
            print(f"{'':58}{r.detail}")
    passed = sum(r.passed for r in results)
    unexpected = [r.case for r in results if not r.passed and r.case not in CANNOT]
    print(f"\n{passed} of {len(results)} passed; failures not listed as impossible here: ", end="")
    print(", ".join(unexpected) or "none")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--only", help="cases matching this glob (e.g. 'venv/*')")
    parser.add_argument(
        "--known", choices=("all", "skip", "only"), default="all", help="the cases in CANNOT"
    )
    parser.add_argument("--hub-log", type=Path, help="also save the hub's log here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: servers and builds run as other accounts")
    if not SINGLEUSER.exists():
        parser.error(f"{SINGLEUSER} is missing: run scripts/setup.sh first")
    catch_signals()

    def keep_log(text: str) -> None:
        if args.hub_log:
            args.hub_log.write_text(text)

    results: list[Result] = []
    # Conda builds off: the public channels the cases name cannot be reached from here.
    with binder_hub(keep_log, None) as (hub, session), GitDaemon(hub.root / "git") as git:
        launcher = Launcher(session, validate(hub.config()), service_answers(session))
        if not launcher.via_service:
            print("the binder service does not answer", file=sys.stderr)
            return 1
        for case in cases(args.only, args.known):
            result = run_case(launcher, git, case)
            print(
                f"{case}: {'pass' if result.passed else 'fail'} ({result.seconds:.0f} s)",
                flush=True,
            )
            results.append(result)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
