"""``hubdata``: list and copy the hub's storage connections from a server's terminal.

hubdata ls                      the connections you may use
hubdata ls NAME:path            what is in one
hubdata cp -r NAME:path ~/data  copy in (a directory's contents go into ~/data)
hubdata cp -r results NAME:out  copy out
hubdata cp --job ...            the same copy as a Slurm job (a Slurm hub), not in this server
hubdata jobs / status ID / cancel ID   copy jobs and their progress
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from hubstack_data import copy, jobs
from hubstack_data.connection import ConnectionError_, clean_path, connections, open_connection


def side(arg: str, writing: bool) -> copy.Side:
    """``NAME:path`` (a connection) or a local path."""
    name, colon, path = arg.partition(":")
    if colon and "/" not in name and name:
        connection = open_connection(name)
        if writing:
            connection.check_writable()
        return copy.Side(connection.fs, clean_path(path), arg)
    local = LocalFileSystem()
    return copy.Side(local, local._strip_protocol(arg) + ("/" if arg.endswith("/") else ""), arg)


def ls(args: argparse.Namespace) -> int:
    if not args.target:
        for c in connections():
            owner = f"group {c['group']}" if c["group"] else "yours"
            access = "read-only" if c["mode"] == "ro" else "read-write"
            print(f"{c['name']}\t{c['kind']}\t{c['container']}/{c['prefix']}\t{owner}\t{access}")
        return 0
    where = side(args.target if ":" in args.target else args.target + ":", writing=False)
    for entry in where.fs.ls(where.path, detail=True):
        kind = "dir" if entry["type"] == "directory" else str(entry.get("size", ""))
        print(f"{kind:>12}  {entry['name']}")
    return 0


def cp(args: argparse.Namespace) -> int:
    if args.job:
        if args.dry_run:
            raise ValueError("--dry-run shows a copy here; leave out --job to see it")
        job = jobs.submit(
            args.source,
            args.destination,
            args.recursive,
            args.checksum,
            args.machine,
            args.partition,
        )
        print(
            f"copy job {job['id']} submitted as Slurm job {job['slurm_job']}: "
            f"see hubdata status {job['id']}, or the hub's Storage page"
        )
        return 0
    src, dst = side(args.source, writing=False), side(args.destination, writing=True)
    if args.machine or args.partition:
        raise ValueError("--machine and --partition choose where a copy job runs: add --job")
    if src.local == dst.local:
        raise ValueError("one side of a copy must be a connection (NAME:path), the other not")
    items = copy.plan(src, dst, args.recursive, args.checksum)
    total = sum(i.size for i in items)
    if args.dry_run:
        for item in items:
            print(f"would copy {item.src} -> {item.dst} ({item.size} bytes, {item.reason})")
        print(f"{len(items)} files, {total} bytes to copy")
        return 0
    for item in items:
        if item.reason != "missing":
            print(f"{item.reason}: {item.dst}", file=sys.stderr)
    with tqdm(total=total, unit="B", unit_scale=True, disable=args.quiet, file=sys.stderr) as bar:
        done = copy.run(src, dst, items, bar.update)
    print(f"copied {done} files ({total} bytes), checksums verified")
    return 0


def jobs_list(args: argparse.Namespace) -> int:
    for job in jobs.listed():
        print(jobs.line(job))
    return 0


def job_status(args: argparse.Namespace) -> int:
    job = jobs.status(args.id)
    print(jobs.line(job))
    if job["log"]:
        print(f"log: {job['log']}")
    return {"failed": 1, "cancelled": 1}.get(job["state"], 0)


def job_cancel(args: argparse.Namespace) -> int:
    jobs.cancel(args.id)
    print(f"copy job {args.id} cancelled")
    return 0


def run_job(args: argparse.Namespace) -> int:
    """In a copy job's Slurm job: the copy the hub recorded, its progress reported."""

    def copy_with(spec: dict[str, Any], reporter: jobs.Reporter) -> int:
        try:
            os.chdir(spec["workdir"])
            src, dst = side(spec["source"], False), side(spec["destination"], True)
            items = copy.plan(src, dst, spec["recursive"], spec["checksum"])
            reporter.start(items)
            done = copy.run(src, dst, items, reporter.add_bytes, reporter.add_file)
        except Exception as exc:
            code, message = failure(exc, (spec["source"], spec["destination"]))
            reporter.end("failed", message)
            print(f"hubdata: {message}", file=sys.stderr)
            return code
        reporter.end("done")
        print(f"copied {done} files ({sum(i.size for i in items)} bytes), checksums verified")
        return 0

    return jobs.run_job(copy_with)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hubdata", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_ls = commands.add_parser("ls", help="list connections, or what is in one")
    p_ls.add_argument("target", nargs="?", help="NAME or NAME:path")
    p_ls.set_defaults(func=ls)
    p_cp = commands.add_parser("cp", help="copy between a connection and your files")
    p_cp.add_argument("source")
    p_cp.add_argument("destination")
    p_cp.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p_cp.add_argument("-n", "--dry-run", action="store_true", help="only say what would be copied")
    p_cp.add_argument(
        "--checksum", action="store_true", help="also recopy files whose content differs"
    )
    p_cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p_cp.add_argument(
        "--job", action="store_true", help="run the copy as a Slurm job (on a Slurm hub)"
    )
    p_cp.add_argument(
        "--machine", help="with --job: the machine type to run on (as when starting a server)"
    )
    p_cp.add_argument("--partition", help="with --job: the Slurm partition to run on")
    p_cp.set_defaults(func=cp)
    commands.add_parser("jobs", help="your copy jobs and their progress").set_defaults(
        func=jobs_list
    )
    for name, func, what in (("status", job_status, "one"), ("cancel", job_cancel, "stop one")):
        p_job = commands.add_parser(name, help=f"{what} copy job")
        p_job.add_argument("id", type=int)
        p_job.set_defaults(func=func)
    # What a copy job's Slurm job runs (the hub's job script): not for people.
    commands.add_parser("run-job").set_defaults(func=run_job)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        code, message = failure(exc, tuple(getattr(args, k, None) or "" for k in WHERE))
        print(f"hubdata: {message}", file=sys.stderr)
        return code


WHERE = ("target", "source", "destination")


def failure(exc: Exception, where: tuple[str, ...]) -> tuple[int, str]:
    """The exit status and one-line message of a command that failed; ``where`` are the
    paths it was given, named when one is not found."""
    if isinstance(exc, copy.CopyStopped):
        return 3, str(exc)
    if isinstance(exc, ConnectionError_ | PermissionError | ValueError | IsADirectoryError):
        return 2, str(exc)
    if isinstance(exc, FileNotFoundError):
        named = " or ".join(a for a in where if a)
        return 2, f"{named or 'a path'}: not found ({describe(exc)})"
    # The store's own errors: bad credential, endpoint down...
    return 2, describe(exc)


SIGNATURE = re.compile(r"(sig|Signature|AccountKey|SharedAccessSignature)=[^&;\s'\"]+")


def describe(exc: BaseException) -> str:
    """One line about a store's error, with any signature or key in it blanked: Azure's
    and botocore's messages may quote a request URL."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    hidden = SIGNATURE.sub(r"\1=<hidden>", first)
    return f"{type(exc).__name__}: {hidden}"


if __name__ == "__main__":
    sys.exit(main())
