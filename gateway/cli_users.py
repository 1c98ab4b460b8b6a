"""``stockade users``: add, list, change, disable and remove users.

These commands work on the state store in ``--data-dir`` (or
``$STOCKADE_DATA_DIR``) directly, also while the gateway runs, or with ``--url``
through a running gateway's ``stockade.users.*`` actions (see
:mod:`gateway.cli_remote`). Passwords are never taken from the command line:
``--password-stdin`` reads the new password from one line of standard input,
otherwise the command prompts (twice) on the terminal.

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
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any

from gateway.cli_remote import add_remote_options, connect, format_table, run_action, use_url
from gateway.errors import ConfigError, InputError, StockadeError, did_you_mean
from gateway.remote import GatewayClient
from gateway.state import STATE_FILE, AttributeValue, StateStore

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
    first = getpass.getpass(f"New password of {args.name}: ")
    second = getpass.getpass("Repeat the new password: ")
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


def _remote_user(client: GatewayClient, name: str) -> dict[str, Any]:
    """The gateway's user ``name`` (case-insensitive), before asking for a password."""
    users = client.action("stockade.users.list")
    for user in users:
        if user["name"].lower() == name.lower():
            return dict(user)
    names = [u["name"] for u in users]
    raise InputError(f"Unknown user '{name}'.{did_you_mean(name, names)} "
                     "See `stockade users list` for the users of this domain.")


@_errors_to_exit_code
def cmd_add(args: argparse.Namespace) -> int:
    """``users add NAME --role ROLE``."""
    attributes = _attributes(args.attr)
    if use_url(args):
        with connect(args) as client:
            user = client.action("stockade.users.create", {
                "name": args.name, "role": args.role, "password": _read_password(args),
                "attributes": attributes})
        print(f"Added user '{user['name']}' with role '{user['role']}'.")
        return 0
    if args.policy:
        _check_role(args.role, args.policy)
    data_dir = _data_dir(args, must_exist=False)
    password = _read_password(args)
    with StateStore(data_dir) as store:
        added = store.add_user(args.name, args.role, password, attributes)
        _note_unnamed(store, added.name)
    print(f"Added user '{added.name}' with role '{added.role}'.")
    return 0


def _note_unnamed(store: StateStore, name: str) -> None:
    """Warn when the store cannot make the user's verifier for network logins."""
    if store.domain_name() is None:
        print(f"note: this domain's gateway has not started yet, so '{name}' can log in "
              "through a network only after one direct login (the state store learns the "
              "domain's name when its gateway starts).", file=sys.stderr)


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def _table(users: list[Mapping[str, Any]]) -> str:
    """People's view of users as JSON (``User.to_json()``, or ``stockade.users.list``)."""
    return format_table(
        ("NAME", "ROLE", "STATUS", "ATTRIBUTES", "CREATED"),
        [(u["name"], u["role"], "disabled" if u["disabled"] else "active",
          ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(u["attributes"].items())),
          _when(u["created_at"])) for u in users],
    )


@_errors_to_exit_code
def cmd_list(args: argparse.Namespace) -> int:
    """``users list``."""
    if use_url(args):
        users = list(run_action(args, "stockade.users.list"))
    else:
        with StateStore(_data_dir(args, must_exist=True)) as store:
            users = [u.to_json() for u in store.list_users()]
    if args.format == "json":
        print(json.dumps(users, indent=2))
    elif users:
        print(_table(users))
    else:
        print("No users yet. Add one with `stockade users add NAME --role ROLE`.")
    return 0


@_errors_to_exit_code
def cmd_remove(args: argparse.Namespace) -> int:
    """``users remove NAME``."""
    if use_url(args):
        raise InputError(
            "A running gateway does not remove users (their audit records and budgets "
            f"name them): disable the user with `stockade users disable {args.name} --url "
            "…`, or remove them with --data-dir on the gateway's machine.")
    with StateStore(_data_dir(args, must_exist=True)) as store:
        name = store.get_user(args.name).name
        store.remove_user(name)
    print(f"Removed user '{name}'; their sessions are ended.")
    return 0


@_errors_to_exit_code
def cmd_passwd(args: argparse.Namespace) -> int:
    """``users passwd NAME``."""
    if use_url(args):
        with connect(args) as client:
            name = _remote_user(client, args.name)["name"]  # fail before asking
            client.action("stockade.users.reset_password",
                          {"name": name, "password": _read_password(args)})
    else:
        with StateStore(_data_dir(args, must_exist=True)) as store:
            name = store.get_user(args.name).name  # fail before asking for a password
            store.set_password(name, _read_password(args))
            _note_unnamed(store, name)
    print(f"Changed the password of '{name}'; their sessions are ended.")
    return 0


def _update(args: argparse.Namespace, change: dict[str, Any]) -> dict[str, Any]:
    """Apply ``change`` (role, attributes or disabled) to user ``args.name``."""
    if use_url(args):
        return dict(run_action(args, "stockade.users.update", {"name": args.name, **change}))
    with StateStore(_data_dir(args, must_exist=True)) as store:
        name = store.get_user(args.name).name
        if "role" in change:
            user = store.set_role(name, change["role"])
        elif "attributes" in change:
            user = store.set_attributes(name, change["attributes"])
        else:
            user = store.set_disabled(name, change["disabled"])
    return user.to_json()


@_errors_to_exit_code
def cmd_set_role(args: argparse.Namespace) -> int:
    """``users set-role NAME ROLE``."""
    if getattr(args, "policy", None) and not getattr(args, "url", None):
        _check_role(args.role, args.policy)
    user = _update(args, {"role": args.role})
    print(f"'{user['name']}' now has role '{user['role']}'.")
    return 0


@_errors_to_exit_code
def cmd_set_attributes(args: argparse.Namespace) -> int:
    """``users set-attributes NAME --attr KEY=VALUE … | --clear``."""
    if bool(args.attr) == args.clear:
        raise InputError("Give the new attributes with --attr KEY=VALUE (repeatable), or "
                         "--clear to remove them all; they replace the current ones.")
    user = _update(args, {"attributes": _attributes(args.attr)})
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(user["attributes"].items()))
    print(f"'{user['name']}' now has attributes: {shown or 'none'}.")
    return 0


@_errors_to_exit_code
def cmd_disable(args: argparse.Namespace) -> int:
    """``users disable NAME``."""
    user = _update(args, {"disabled": True})
    print(f"Disabled '{user['name']}'; their sessions are ended.")
    return 0


@_errors_to_exit_code
def cmd_enable(args: argparse.Namespace) -> int:
    """``users enable NAME``."""
    user = _update(args, {"disabled": False})
    print(f"Enabled '{user['name']}'; they log in again.")
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
        help="read the new password from one line of standard input (else prompt); with "
             "--url, log in with $STOCKADE_PASSWORD or the prompt",
    )


def _target(parser: argparse.ArgumentParser, *, password_stdin: bool = True) -> None:
    """``--data-dir`` or ``--url`` and the gateway login options."""
    _common(parser)
    add_remote_options(parser, password_stdin=password_stdin)


def add_users_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``users add|list|remove|passwd|set-role|set-attributes|disable|enable``."""
    users = subparsers.add_parser(
        "users", help="manage the users of a domain",
        description="Manage the users of a domain: in its state store (--data-dir) or "
                    "through a running gateway (--url).")
    commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)

    add = commands.add_parser("add", help="add a user", description="Add a user.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, help="the user's role in the policy")
    _password_option(add)
    _attr_option(add)
    add.add_argument("--policy", metavar="FILE",
                     help="check that the role exists in this policy (with --data-dir)")
    _target(add, password_stdin=False)
    add.set_defaults(func=cmd_add)

    list_ = commands.add_parser("list", help="list users", description="List users.")
    list_.add_argument("--format", choices=("table", "json"), default="table")
    _target(list_)
    list_.set_defaults(func=cmd_list)

    remove = commands.add_parser(
        "remove", help="remove a user",
        description="Remove a user and end their sessions (--data-dir only; a running "
                    "gateway disables users instead).")
    remove.add_argument("name", metavar="NAME")
    _target(remove)
    remove.set_defaults(func=cmd_remove)

    passwd = commands.add_parser(
        "passwd",
        help="change a user's password",
        description="Change a user's password and end their sessions. With --url the "
                    "login password comes from $STOCKADE_PASSWORD or the terminal, as "
                    "--password-stdin is the new password.",
    )
    passwd.add_argument("name", metavar="NAME")
    _password_option(passwd)
    _target(passwd, password_stdin=False)
    passwd.set_defaults(func=cmd_passwd)

    set_role = commands.add_parser(
        "set-role", help="change a user's role",
        description="Change a user's role; it applies to their next call.")
    set_role.add_argument("name", metavar="NAME")
    set_role.add_argument("role", metavar="ROLE")
    set_role.add_argument("--policy", metavar="FILE",
                          help="check that the role exists in this policy (with --data-dir)")
    _target(set_role)
    set_role.set_defaults(func=cmd_set_role)

    set_attributes = commands.add_parser(
        "set-attributes", help="replace a user's attributes",
        description="Replace all of a user's attributes (the {user.KEY} of row filters).")
    set_attributes.add_argument("name", metavar="NAME")
    _attr_option(set_attributes)
    set_attributes.add_argument("--clear", action="store_true", help="remove every attribute")
    _target(set_attributes)
    set_attributes.set_defaults(func=cmd_set_attributes)

    for name, func, text in (("disable", cmd_disable, "disable a user and end their sessions"),
                             ("enable", cmd_enable, "let a disabled user log in again")):
        command = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        command.add_argument("name", metavar="NAME")
        _target(command)
        command.set_defaults(func=func)


def _attr_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attr",
        action="append",
        metavar="KEY=VALUE",
        help="an attribute for row filters ({user.KEY}); repeatable",
    )
