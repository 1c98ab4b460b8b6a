"""``stockade users``: add, list, remove users and change passwords.

These commands work on the state store in ``--data-dir`` (or
``$STOCKADE_DATA_DIR``) directly, also while the gateway runs. Passwords are never
taken from the command line: ``--password-stdin`` reads one line from standard
input, otherwise the command prompts (twice) on the terminal.

>>> parse_attribute("site=north"), parse_attribute("level=3"), parse_attribute("zip=02134")
(('site', 'north'), ('level', 3), ('zip', '02134'))
>>> parse_attribute("ratio=0.5"), parse_attribute("active=true"), parse_attribute('code="42"')
(('ratio', 0.5), ('active', True), ('code', '42'))
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from gateway.errors import ConfigError, InputError, StockadeError, did_you_mean
from gateway.state import STATE_FILE, AttributeValue, StateStore, User

DATA_DIR_ENV = "STOCKADE_DATA_DIR"

_INT_RE = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")

Handler = Callable[[argparse.Namespace], int]


def parse_attribute(text: str) -> tuple[str, AttributeValue]:
    """Parse ``KEY=VALUE``: integers, decimals and true/false become typed values.

    Numbers with a leading zero (zip codes) stay strings; so does a value in
    double quotes.
    """
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise InputError(f"--attr {text!r} must look like KEY=VALUE, e.g. --attr site=north.")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return key, value[1:-1]
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    if _INT_RE.fullmatch(value):
        return key, int(value)
    if _FLOAT_RE.fullmatch(value) and not re.fullmatch(r"[+-]?0[0-9]+", value):
        return key, float(value)
    return key, value


def _attributes(items: list[str] | None) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {}
    for item in items or []:
        key, value = parse_attribute(item)
        if key in attributes:
            raise InputError(f"--attr {key} is given twice.")
        attributes[key] = value
    return attributes


def _data_dir(args: argparse.Namespace, *, must_exist: bool) -> Path:
    value = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ConfigError(
            f"No data directory: pass --data-dir DIR or set {DATA_DIR_ENV} "
            "(the directory `stockade serve` uses)."
        )
    path = Path(value)
    if must_exist and not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"No Stockade state in {path} ({STATE_FILE} is missing). Check --data-dir: "
            "it must be the directory `stockade serve` uses."
        )
    return path


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ConfigError(
                "--password-stdin: standard input is empty; write the password on one line."
            )
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ConfigError(
            "No password given: standard input is not a terminal, so pass --password-stdin "
            "and write the password to standard input."
        )
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Repeat the password: ")
    if first != second:
        raise InputError("The two passwords differ; nothing was changed.")
    return first


def _check_role(role: str, policy_file: str) -> None:
    try:
        from policy.loader import load_policy  # only this command needs the policy package
    except ImportError as exc:
        raise ConfigError(f"Cannot check roles against {policy_file}: {exc}.") from exc

    roles = load_policy(policy_file).roles
    if role not in roles:
        hint = did_you_mean(role, roles)
        if not hint:
            hint = f" The roles in {policy_file} are: {', '.join(sorted(roles))}."
        raise InputError(f"Unknown role '{role}'.{hint}")


def _errors_to_exit_code(handler: Handler) -> Handler:
    """Print ``error: <message>`` and return 2 instead of raising."""

    @wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except StockadeError as exc:
            message = exc.message
        except (EOFError, KeyboardInterrupt):
            message = "Cancelled; nothing was changed."
        except (OSError, sqlite3.Error) as exc:
            message = f"Cannot use the state store: {exc}"
        print(f"error: {message}", file=sys.stderr)
        return 2

    return run


@_errors_to_exit_code
def cmd_add(args: argparse.Namespace) -> int:
    """``users add NAME --role ROLE``."""
    attributes = _attributes(args.attr)
    if args.policy:
        _check_role(args.role, args.policy)
    data_dir = _data_dir(args, must_exist=False)
    password = _read_password(args)
    with StateStore(data_dir) as store:
        user = store.add_user(args.name, args.role, password, attributes)
    print(f"Added user '{user.name}' with role '{user.role}'.")
    return 0


def _table(users: list[User]) -> str:
    header = ("NAME", "ROLE", "STATUS", "ATTRIBUTES", "CREATED")
    rows = [
        (
            u.name,
            u.role,
            "disabled" if u.disabled else "active",
            ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(u.attributes.items())),
            u.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
        for u in users
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


@_errors_to_exit_code
def cmd_list(args: argparse.Namespace) -> int:
    """``users list``."""
    with StateStore(_data_dir(args, must_exist=True)) as store:
        users = store.list_users()
    if args.format == "json":
        print(json.dumps([u.to_json() for u in users], indent=2))
    elif users:
        print(_table(users))
    else:
        print("No users yet. Add one with `stockade users add NAME --role ROLE`.")
    return 0


@_errors_to_exit_code
def cmd_remove(args: argparse.Namespace) -> int:
    """``users remove NAME``."""
    with StateStore(_data_dir(args, must_exist=True)) as store:
        name = store.get_user(args.name).name
        store.remove_user(name)
    print(f"Removed user '{name}'; their sessions are ended.")
    return 0


@_errors_to_exit_code
def cmd_passwd(args: argparse.Namespace) -> int:
    """``users passwd NAME``."""
    with StateStore(_data_dir(args, must_exist=True)) as store:
        name = store.get_user(args.name).name  # fail before asking for a password
        store.set_password(name, _read_password(args))
    print(f"Changed the password of '{name}'; their sessions are ended.")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the gateway's data directory (default: ${DATA_DIR_ENV})",
    )


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input (else prompt)",
    )


def add_users_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``users add|list|remove|passwd`` under ``subparsers``."""
    users = subparsers.add_parser(
        "users", help="manage the users of a domain", description="Manage the users of a domain."
    )
    commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)

    add = commands.add_parser("add", help="add a user", description="Add a user.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, help="the user's role in the policy")
    _password_option(add)
    add.add_argument(
        "--attr",
        action="append",
        metavar="KEY=VALUE",
        help="an attribute for row filters ({user.KEY}); repeatable",
    )
    add.add_argument("--policy", metavar="FILE", help="check that the role exists in this policy")
    _common(add)
    add.set_defaults(func=cmd_add)

    list_ = commands.add_parser("list", help="list users", description="List users.")
    list_.add_argument("--format", choices=("table", "json"), default="table")
    _common(list_)
    list_.set_defaults(func=cmd_list)

    remove = commands.add_parser(
        "remove", help="remove a user", description="Remove a user and end their sessions."
    )
    remove.add_argument("name", metavar="NAME")
    _common(remove)
    remove.set_defaults(func=cmd_remove)

    passwd = commands.add_parser(
        "passwd",
        help="change a user's password",
        description="Change a user's password and end their sessions.",
    )
    passwd.add_argument("name", metavar="NAME")
    _password_option(passwd)
    _common(passwd)
    passwd.set_defaults(func=cmd_passwd)
