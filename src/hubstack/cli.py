"""The ``hubstack`` command: thin parsing and printing over the other rooms."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.resources import files
from pathlib import Path

from hubstack.config import Config, ConfigError, dump, load


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
    config = _load(args)
    print(dump(config), end="")
    return 0


def _prepare_data_dir(config: Config) -> None:
    config.hub.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.hub.data_dir, 0o700)


def cmd_up(args: argparse.Namespace) -> int:
    config = _load(args)
    _prepare_data_dir(config)
    from hubstack.hub.run import run

    return run(config)


def _accounts_db(args: argparse.Namespace) -> str:
    from hubstack.hub.settings import db_url

    config = _load(args)
    if config.auth.type != "native":
        raise SystemExit("hubstack: accounts are managed by the machine (auth.type is pam)")
    _prepare_data_dir(config)
    return db_url(config)


def _password_arg(args: argparse.Namespace) -> str | None:
    return sys.stdin.readline().rstrip("\n") if args.password_stdin else None


def cmd_users_add(args: argparse.Namespace) -> int:
    from hubstack.hub import accounts

    with accounts.session(_accounts_db(args)) as db:
        password = accounts.add(db, args.name, _password_arg(args))
    print(f"created account {args.name!r}" + ("" if args.password_stdin else f": {password}"))
    return 0


def cmd_reset_password(args: argparse.Namespace) -> int:
    from hubstack.hub import accounts

    with accounts.session(_accounts_db(args)) as db:
        password = accounts.reset_password(db, args.name, _password_arg(args))
    print(f"new password for {args.name!r}" + ("" if args.password_stdin else f": {password}"))
    return 0


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
    p.set_defaults(func=cmd_up, verbose_source=True)

    for name, func, text in (
        ("reset-password", cmd_reset_password, "set a new password for a built-in account"),
        ("add-user", cmd_users_add, "create a built-in account (prints its password)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name", help="hub user name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        p.set_defaults(func=func, verbose_source=False)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hubstack: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # account errors and other refusals with a message
        print(f"hubstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
