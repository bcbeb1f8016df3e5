"""The ``hubstack`` command: thin parsing and printing over the other rooms."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from hubstack.config import Config, ConfigError, dump, load
from hubstack.config.interfaces import interface_warnings
from hubstack.config.safety import unsafe_settings
from hubstack.config.secrets import unreadable_secrets
from hubstack.units import format_duration, format_size, parse_duration
from hubstack.untrusted import InvalidLaunch

if TYPE_CHECKING:
    from hubstack.envs.cache import EnvCache
    from hubstack.envs.packages import PackageCache
    from hubstack.hub.group_admin import GroupAdmin
    from hubstack.slurm.client import AccountedJob
    from hubstack.usage.report import Window


def _load(args: argparse.Namespace) -> Config:
    config, source = load(args.config)
    if args.verbose_source:
        print(f"# config: {source or 'embedded defaults'}", file=sys.stderr)
    return config


def cmd_init(args: argparse.Namespace) -> int:
    path: Path = args.config or Path("hubstack.yaml")
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    path.write_text(files("hubstack.config").joinpath("starter.yaml").read_text())
    print(f"wrote {path}; edit it, then run `hubstack check` and `hubstack up`")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Print the effective config; warn on stderr about unsafe settings; a secret that
    cannot be read is an error (status 1)."""
    config = _load(args)
    print(dump(config), end="")
    for warning in [*unsafe_settings(config), *interface_warnings(config)]:
        print(f"hubstack: warning: {warning}", file=sys.stderr)
    problems = unreadable_secrets(config)
    for problem in problems:
        print(f"hubstack: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _prepare_data_dir(config: Config) -> None:
    config.hub.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.hub.data_dir, 0o700)


def cmd_up(args: argparse.Namespace) -> int:
    config = _load(args)
    if problems := unreadable_secrets(config):
        raise ConfigError(str(args.config or "hubstack.yaml"), problems)
    _prepare_data_dir(config)
    from hubstack.hub.run import run

    return run(config, stop_servers=args.stop_servers)


def _accounts_db(args: argparse.Namespace) -> str:
    from hubstack.hub.database import db_url

    config = _load(args)
    if config.auth.type != "native":
        where = "the machine" if config.auth.type == "pam" else f"the {config.auth.type} login"
        raise SystemExit(
            f"hubstack: accounts are managed by {where} (auth.type is {config.auth.type})"
        )
    _prepare_data_dir(config)
    return db_url(config)


def _password_arg(args: argparse.Namespace) -> str | None:
    return sys.stdin.readline().rstrip("\n") if args.password_stdin else None


def cmd_users_add(args: argparse.Namespace) -> int:
    from hubstack.hub import builtin_accounts

    with builtin_accounts.session(_accounts_db(args)) as db:
        password = builtin_accounts.add(db, args.name, _password_arg(args))
    print(f"created account {args.name!r}" + ("" if args.password_stdin else f": {password}"))
    return 0


def cmd_reset_password(args: argparse.Namespace) -> int:
    from hubstack.hub import builtin_accounts

    with builtin_accounts.session(_accounts_db(args)) as db:
        password = builtin_accounts.reset_password(db, args.name, _password_arg(args))
    print(f"new password for {args.name!r}" + ("" if args.password_stdin else f": {password}"))
    return 0


def _group_admin(args: argparse.Namespace) -> GroupAdmin:
    from hubstack.hub.database import db_url
    from hubstack.hub.group_admin import GroupAdmin

    config = _load(args)
    return GroupAdmin(config, db_url(config))


def cmd_group_list(args: argparse.Namespace) -> int:
    admin = _group_admin(args)
    for group in admin.groups():
        print(f"{group['name']}  {len(group['users'])} member(s)")
    return 0


def cmd_group_show(args: argparse.Namespace) -> int:
    shown = _group_admin(args).show(args.group)
    if args.json:
        print(json.dumps(shown, indent=1))
        return 0
    print(f"group {shown['name']} (members kept by the {shown['source']})")
    print("champions: " + (", ".join(shown["champions"]) or "none"))
    print("members: " + (", ".join(shown["members"]) or "none"))
    return 0


def cmd_group_change(args: argparse.Namespace) -> int:
    _group_admin(args).change(args.group, args.user, args.add, args.champion)
    role = "champion" if args.champion else "member"
    print(f"{args.user} {'is now' if args.add else 'is no longer'} a {role} of {args.group}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hubstack.hub.database import db_url
    from hubstack.hub.status import status

    config = _load(args)
    print(status(config, db_url(config)))
    return 0


def _environments(args: argparse.Namespace) -> tuple[Config, EnvCache]:
    from hubstack.envs.cache import EnvCache

    config = _load(args)
    return config, EnvCache.of(config)


def cmd_env_list(args: argparse.Namespace) -> int:
    from hubstack.envs.cache import describe

    config, cache = _environments(args)
    envs = cache.list()
    if args.json:
        print(json.dumps([describe(env) for env in envs], indent=1))
        return 0
    if not envs:
        print(f"no environments built from repositories in {cache.root}")
        print(_packages(config).summary())
        return 0
    rows = [("KEY", "REPOSITORY", "REF", "COMMIT", "PYTHON", "SIZE", "BUILT", "LAST USED")]
    for env in envs:
        rows.append(
            (
                env.key[:12],
                env.repo,
                env.ref,
                env.commit[:10],
                env.python,
                format_size(env.size),
                _when(env.built_at),
                _when(env.last_used),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(_packages(config).summary())
    return 0


def _packages(config: Config) -> PackageCache:
    from hubstack.envs.packages import PackageCache

    return PackageCache(config.binder.root, config.binder.package_cache.size)


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")


def cmd_env_rebuild(args: argparse.Namespace) -> int:
    """Build one environment again from its repository at the commit it was built from."""
    import asyncio

    from hubstack.envs.repository import PrepareFailed, Repositories

    config, cache = _environments(args)
    env = cache.find(args.key)
    repositories = Repositories.of(config)
    print(f"rebuilding {env.key[:12]} from {env.repo} at {env.commit}")
    try:
        built = asyncio.run(repositories.rebuild(env, lambda _phase, line: print(line)))
    except PrepareFailed as exc:
        print(f"hubstack: {exc.message}", file=sys.stderr)
        return 1
    print(f"built {built.env.key[:12]} ({format_size(built.env.size)})")
    return 0


def cmd_env_build(args: argparse.Namespace) -> int:
    """Build the declared environments (or one), showing each build's progress."""
    import asyncio

    from hubstack.envs.declared import Declared
    from hubstack.envs.repository import Repositories

    config = _load(args)
    declared = Declared(config, Repositories.of(config))
    names = [e.id for e in declared.environments]
    if not names:
        print("no declared environments in the config: nothing to build")
        return 0
    if args.name is not None and args.name not in names:
        shown = ", ".join(names) or "none"
        print(
            f"hubstack: no declared environment {args.name!r}; declared: {shown}", file=sys.stderr
        )
        return 1
    chosen = [name for name in names if args.name in (None, name)]

    def phase_for(env_id: str) -> Callable[[str, str], None]:
        print(f"==> environment {env_id} ({chosen.index(env_id) + 1} of {len(chosen)})", flush=True)
        return lambda _phase, line: print(f"  {env_id} | {line}", flush=True)

    failed = asyncio.run(declared.build_all(phase_for, only=args.name))
    for env_id in chosen:
        built = declared.built(env_id)
        if built is not None:
            print(f"{env_id}: ready, {built.key[:12]} ({format_size(built.size)})")
        else:
            print(f"{env_id}: failed: {failed[env_id]}", file=sys.stderr)
    return 1 if any(failed.values()) else 0


def cmd_env_prune(args: argparse.Namespace) -> int:
    from hubstack.hub.status import builds_in_use

    config, cache = _environments(args)
    removed = cache.prune(args.unused_for, dry_run=args.dry_run, keep=builds_in_use(config))
    verb = "would remove" if args.dry_run else "removed"
    for env in removed:
        print(
            f"{verb} {env.key[:12]} {env.repo} ({format_size(env.size)}, last used "
            f"{_when(env.last_used)})"
        )
    print(f"{verb} {len(removed)} environment(s) unused for {format_duration(args.unused_for)}")
    # Wheels no build installed for as long, and the least recently used beyond the size.
    packages = _packages(config)
    lock = cache.acquire_build_lock()
    try:
        wheels = packages.trim(packages.limit, args.unused_for, dry_run=args.dry_run)
    finally:
        lock.close()
    print(f"{verb} {len(wheels)} wheel(s) from the package cache; {packages.summary()}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """Spending and use per user and machine type from the usage ledger."""
    from hubstack.usage.ledger import Ledger, ledger_url
    from hubstack.usage.report import Window, as_csv, as_json, as_table, usage_report

    config = _load(args)
    window = Window.of(config.usage, datetime.now(UTC), args.since)
    if args.reconcile:
        if args.csv or args.group:
            print(
                "hubstack: usage --reconcile takes --since, --user, --tolerance and --json, "
                "not --csv or --group",
                file=sys.stderr,
            )
            return 2
        return _reconcile(config, window, args)
    users = [args.user] if args.user else None
    groups = [args.group] if args.group else None
    lines = usage_report(Ledger(ledger_url(config)), config.usage, window, users, groups)
    if args.csv:
        print(as_csv(lines), end="")
    elif args.json:
        print(json.dumps(as_json(lines, config.usage, window)))
    else:
        print(f"# {window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M} UTC")
        print(as_table(lines, config.usage.currency))
    return 0


def _reconcile(config: Config, window: Window, args: argparse.Namespace) -> int:
    """The ledger's Slurm sessions of ``window`` against Slurm's accounting: 0 if they
    agree, 1 if not (each difference printed), 2 if accounting cannot say."""
    import asyncio

    from hubstack.slurm.client import Slurm, SlurmError
    from hubstack.usage import reconcile
    from hubstack.usage.ledger import Ledger, ledger_url

    if config.backend.type != "slurm":
        print(
            "hubstack: usage --reconcile: backend.type is 'local'; it compares the ledger "
            "with Slurm's accounting (backend.type: slurm)",
            file=sys.stderr,
        )
        return 2
    sessions = [
        row
        for row in Ledger(ledger_url(config)).sessions(window.since, window.until)
        if row.backend == "slurm" and row.job_id and (args.user is None or row.user == args.user)
    ]
    slurm = Slurm(config.backend.slurm.bin_dir, config.backend.slurm.submit_as)

    async def accounted() -> dict[str, AccountedJob] | None:
        ran = await slurm.accounted(since=window.since, until=window.until)
        ids = [row.job_id for row in sessions if row.job_id]
        named = await slurm.accounted(ids) if ids else {}
        return None if ran is None or named is None else ran | named

    try:
        jobs = asyncio.run(accounted())
    except SlurmError as exc:
        print(f"hubstack: usage --reconcile: {exc}", file=sys.stderr)
        return 2
    if jobs is None:
        print(
            "hubstack: usage --reconcile: Slurm's accounting is off (AccountingStorageType)",
            file=sys.stderr,
        )
        return 2
    if args.user is not None:
        jobs = {i: j for i, j in jobs.items() if j.user == f"{config.accounts.prefix}{args.user}"}
    found = reconcile.compare(
        sessions, jobs, config.accounts.prefix, args.tolerance, datetime.now(UTC)
    )
    if args.json:
        print(reconcile.as_json(found, len(sessions), window.since, window.until))
    else:
        print(
            f"# {window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M} UTC: "
            f"{len(sessions)} Slurm session(s), "
            + ("ledger and accounting agree" if not found else f"{len(found)} difference(s)")
        )
        if found:
            print(reconcile.as_table(found))
    return 1 if found else 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit log as JSON lines, oldest first."""
    from hubstack.usage.audit import as_json_lines, entries
    from hubstack.usage.ledger import Ledger, ledger_url

    config = _load(args)
    now = datetime.now(UTC)
    rows = entries(Ledger(ledger_url(config)), now - args.since, now, args.user)
    print(as_json_lines(rows), end="")
    return 0


def _age(text: str) -> int:
    """A duration, or 0 (``0``, ``0s``): no time at all."""
    return 0 if text.strip() in ("0", "0s") else _duration(text)


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hubstack",
        description="A hub for interactive computing: JupyterLab on this machine, "
        "with profiles, limits, storage and idle stop, configured by one YAML file.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        type=Path,
        help="config file (default ./hubstack.yaml; embedded defaults if it is absent)",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="write a commented starter hubstack.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init, verbose_source=False)

    p = sub.add_parser("check", parents=[common], help="validate and print the effective config")
    p.set_defaults(func=cmd_check, verbose_source=True)

    p = sub.add_parser("up", parents=[common], help="run the hub")
    p.add_argument(
        "--stop-servers",
        action="store_true",
        help="stop every user's server when the hub stops (by default they keep running "
        "and the next `hubstack up` takes them back)",
    )
    p.set_defaults(func=cmd_up, verbose_source=True)

    for name, func, text in (
        ("reset-password", cmd_reset_password, "set a new password for a built-in account"),
        ("add-user", cmd_users_add, "create a built-in account (prints its password)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name", help="hub user name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        p.set_defaults(func=func, verbose_source=False)

    group = sub.add_parser("group", help="groups of the running hub: members and champions")
    group_sub = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    p = group_sub.add_parser("list", parents=[common], help="groups and their sizes")
    p.set_defaults(func=cmd_group_list, verbose_source=False)
    p = group_sub.add_parser("show", parents=[common], help="a group's champions and members")
    p.add_argument("group")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_group_show, verbose_source=False)
    for name, add, champion in (
        ("add-member", True, False),
        ("remove-member", False, False),
        ("add-champion", True, True),
        ("remove-champion", False, True),
    ):
        p = group_sub.add_parser(
            name, parents=[common], help=name.replace("-", " ") + " of a group"
        )
        p.add_argument("group")
        p.add_argument("user", help="hub user name")
        p.set_defaults(func=cmd_group_change, verbose_source=False, add=add, champion=champion)

    p = sub.add_parser(
        "status", parents=[common], help="what runs, the queue, disks and recent failures"
    )
    p.set_defaults(func=cmd_status, verbose_source=False)

    p = sub.add_parser(
        "usage", parents=[common], help="spending and use per user and machine type (ledger)"
    )
    p.add_argument(
        "--since",
        type=lambda text: timedelta(seconds=_duration(text)),
        metavar="DURATION",
        help="the last DURATION (e.g. 7d); default: the current budget period",
    )
    p.add_argument("--user", help="only this hub user's servers")
    p.add_argument("--group", help="only servers of this group's members")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print CSV")
    out.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--reconcile",
        action="store_true",
        help="compare the ledger's Slurm sessions with Slurm's accounting (sacct); exit 1 "
        "if they differ",
    )
    p.add_argument(
        "--tolerance",
        type=lambda text: timedelta(seconds=_duration(text)),
        default=timedelta(minutes=2),
        metavar="DURATION",
        help="with --reconcile: the start, end and length differences that count (default 2m)",
    )
    p.set_defaults(func=cmd_usage, verbose_source=False)

    p = sub.add_parser(
        "audit", parents=[common], help="logins, starts, stops, admin changes (JSON lines)"
    )
    p.add_argument(
        "--since",
        type=lambda text: timedelta(seconds=_duration(text)),
        default=timedelta(days=30),
        metavar="DURATION",
        help="the last DURATION (default 30d)",
    )
    p.add_argument("--user", help="only entries about or by this hub user")
    p.set_defaults(func=cmd_audit, verbose_source=False)

    env = sub.add_parser(
        "env", help="environments built from repositories and declared: list, build, rebuild, prune"
    )
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    p = env_sub.add_parser("list", parents=[common], help="built environments, size and last use")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_env_list, verbose_source=False)
    p = env_sub.add_parser("rebuild", parents=[common], help="build one environment again")
    p.add_argument("key", help="the environment's key, or its start as `env list` shows it")
    p.set_defaults(func=cmd_env_rebuild, verbose_source=False)
    p = env_sub.add_parser(
        "build", parents=[common], help="build the declared environments (or one) now"
    )
    p.add_argument("name", nargs="?", help="the id of one declared environment")
    p.set_defaults(func=cmd_env_build, verbose_source=False)
    p = env_sub.add_parser("prune", parents=[common], help="remove environments nobody uses")
    p.add_argument(
        "--unused-for",
        type=_age,
        default=30 * 86400,
        metavar="DURATION",
        help="remove those not launched for this long (default 30d; 0: every one no running "
        "server or declared environment uses)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=cmd_env_prune, verbose_source=False)

    cluster = sub.add_parser("cluster", help="the elastic cluster's nodes (Slurm power saving)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    p = cluster_sub.add_parser("apply", parents=[common], help="write the Slurm lines and programs")
    p.set_defaults(func=cmd_cluster_apply, verbose_source=False)
    p = cluster_sub.add_parser("status", parents=[common], help="each node and what it is doing")
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    p.set_defaults(func=cmd_cluster_status, verbose_source=False)
    p = cluster_sub.add_parser("reconcile", parents=[common], help="make Slurm and machines agree")
    p.set_defaults(func=cmd_cluster_reconcile, verbose_source=False)
    for name in ("resume", "suspend", "resume-fail"):
        p = cluster_sub.add_parser(name, parents=[common], help=f"slurmctld's {name} program")
        p.add_argument("hostlist", help="Slurm hostlist expression, e.g. cpu[1-3]")
        p.set_defaults(func=cmd_cluster_program, verbose_source=False)
    return top


def cmd_cluster_apply(args: argparse.Namespace) -> int:
    """Write slurmctld's power-saving programs and the node groups' Slurm lines."""
    from hubstack.cluster.apply import apply

    config = _load(args)
    path = (args.config or Path("hubstack.yaml")).resolve()
    for line in apply(path, config.cluster.slurm_conf) or ["nothing to change"]:
        print(line)
    print("restart slurmctld for new or removed nodes (Slurm 22.05 reads them only at start)")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    """Each node of the node groups: powered down, booting (for how long), idle, busy, failed."""
    from hubstack.cluster.apply import status

    table = status(_load(args))
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in table]))
        return 0
    print(f"{'NODE':<16} {'GROUP':<12} {'PARTITION':<12} {'ADDRESS':<16} STATUS")
    for row in table:
        print(f"{row.node:<16} {row.group:<12} {row.partition:<12} {row.address:<16} {row.status}")
    return 0


def cmd_cluster_reconcile(args: argparse.Namespace) -> int:
    """One reconciler pass (the hub runs one each monitor round): what it found and did."""
    from hubstack.cluster.nodes import Programs
    from hubstack.cluster.reconcile import reconcile

    for finding in reconcile(Programs(_load(args))):
        print(f"{finding.node}: {finding.found}; {finding.done}")
    return 0


def cmd_cluster_program(args: argparse.Namespace) -> int:
    """What slurmctld runs for power saving (resume, suspend, resume-fail) on a hostlist."""
    from hubstack.cluster.nodes import Programs

    programs = Programs(_load(args))
    action = {"resume": programs.resume, "suspend": programs.suspend}
    action.get(args.cluster_command, programs.resume_fail)(args.hostlist)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hubstack: {exc}", file=sys.stderr)
        return 2
    except InvalidLaunch as exc:  # e.g. a repository the config no longer allows
        print(f"hubstack: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # account errors and other refusals with a message
        print(f"hubstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
