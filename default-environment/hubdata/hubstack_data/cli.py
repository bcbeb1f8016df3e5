"""``hubdata``: list and copy the hub's storage connections from a server's terminal.

hubdata ls                      the connections you may use
hubdata ls NAME:path            what is in one
hubdata cp -r NAME:path ~/data  copy in (a directory's contents go into ~/data)
hubdata cp -r results NAME:out  copy out
"""

from __future__ import annotations

import argparse
import re
import sys

from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from hubstack_data import copy
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
    src, dst = side(args.source, writing=False), side(args.destination, writing=True)
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
    p_cp.set_defaults(func=cp)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except copy.CopyStopped as exc:
        print(f"hubdata: {exc}", file=sys.stderr)
        return 3
    except (ConnectionError_, PermissionError, ValueError, IsADirectoryError) as exc:
        print(f"hubdata: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        named = " or ".join(a for a in (getattr(args, k, None) for k in WHERE) if a)
        print(f"hubdata: {named or 'a path'}: not found ({describe(exc)})", file=sys.stderr)
        return 2
    except Exception as exc:  # the store's own errors: bad credential, endpoint down...
        print(f"hubdata: {describe(exc)}", file=sys.stderr)
        return 2


WHERE = ("target", "source", "destination")
SIGNATURE = re.compile(r"(sig|Signature|AccountKey|SharedAccessSignature)=[^&;\s'\"]+")


def describe(exc: BaseException) -> str:
    """One line about a store's error, with any signature or key in it blanked: Azure's
    and botocore's messages may quote a request URL."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    hidden = SIGNATURE.sub(r"\1=<hidden>", first)
    return f"{type(exc).__name__}: {hidden}"


if __name__ == "__main__":
    sys.exit(main())
