"""The ``--url`` side of the admin commands: log in to a running gateway.

``stockade users|budget|requests|audit|policy … --url grpc://HOST:PORT`` run the
gateway's actions (``docs/api.md``) through :class:`gateway.remote.GatewayClient`
instead of opening the state store. They log in as ``--user`` (else
``$STOCKADE_USER``, else ``owner``); the password is never a flag: it is one line
of standard input with ``--password-stdin``, else ``$STOCKADE_PASSWORD``, else
asked on the terminal. Errors (a wrong password, a gateway that is down, an owner
action run by an analyst) are one ``error:`` line and exit code 2.

>>> format_table(("NAME", "ROLE"), [("ann", "analyst"), ("owner", "owner")])
'NAME   ROLE\\nann    analyst\\nowner  owner'
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, InputError
from gateway.remote import GatewayClient

USER_ENV = "STOCKADE_USER"
PASSWORD_ENV = "STOCKADE_PASSWORD"
DEFAULT_USER = "owner"


def add_remote_options(parser: argparse.ArgumentParser, *, required: bool = False,
                       user_flag: bool = True, password_stdin: bool = True,
                       kind: str = "gateway") -> None:
    """Add ``--url``, ``--user``, ``--tls-ca`` and ``--password-stdin`` to ``parser``.

    ``user_flag=False`` for a command whose own ``--user`` means something else (the
    login name is then ``--login`` only); ``password_stdin=False`` for a command whose
    ``--password-stdin`` is the password it sets (the login password then comes from
    ``$STOCKADE_PASSWORD`` or the terminal). ``kind`` names what ``--url`` is
    (``gateway`` or ``network``).
    """
    group = parser.add_argument_group(f"a running {kind}")
    group.add_argument("--url", metavar="URL", required=required,
                       help=f"the {kind}, grpc://HOST:PORT or grpc+tls://HOST:PORT"
                            + ("" if required else " (instead of --data-dir)"))
    flags = ("--user", "--login") if user_flag else ("--login",)
    group.add_argument(*flags, dest="login_user", metavar="NAME",
                       help=f"log in as NAME (default: ${USER_ENV}, else {DEFAULT_USER})")
    parser.set_defaults(login_flags="/".join(flags))
    group.add_argument("--tls-ca", metavar="FILE",
                       help=f"PEM file of the CA to trust for a grpc+tls:// {kind}")
    if password_stdin:
        group.add_argument("--password-stdin", dest="login_password_stdin",
                           action="store_true",
                           help=f"read the login password from one line of standard input "
                                f"(else ${PASSWORD_ENV}, else a prompt)")


def use_url(args: argparse.Namespace) -> bool:
    """Whether the command runs against a gateway (``--url``) or a data directory.

    Refuses both at once, and the login options without ``--url``.
    """
    url = getattr(args, "url", None)
    if url:
        if getattr(args, "data_dir", None):
            raise InputError("Give either --url (a running gateway) or --data-dir (its state "
                             "store on this machine), not both.")
        if getattr(args, "policy", None):
            raise InputError("--policy goes with --data-dir only: with --url the gateway "
                             "checks against its live policy.")
        return True
    login_flags = getattr(args, "login_flags", "--user/--login")
    for option, dest in ((login_flags, "login_user"), ("--tls-ca", "tls_ca"),
                         ("--password-stdin", "login_password_stdin")):
        if getattr(args, dest, None):
            raise InputError(f"{option} logs in to a running gateway: give --url too.")
    return False


def login_user(args: argparse.Namespace) -> str:
    return str(getattr(args, "login_user", None) or os.environ.get(USER_ENV) or DEFAULT_USER)


def login_password(args: argparse.Namespace, user: str) -> str:
    """The login password: ``--password-stdin``, else the environment, else a prompt."""
    url = args.url
    if getattr(args, "login_password_stdin", False):
        line = sys.stdin.readline()
        if not line:
            raise ConfigError("--password-stdin: standard input is empty; write the password "
                              "on one line.")
        return line.rstrip("\r\n")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if sys.stdin.isatty():
        return getpass.getpass(f"Password of {user} at {url}: ")
    if hasattr(args, "login_password_stdin"):
        stdin_hint = ", or pass --password-stdin and write it on standard input"
    else:  # this command's --password-stdin is the password it sets
        stdin_hint = " (--password-stdin is the new password here)"
    raise ConfigError(f"No password to log in to {url} as '{user}': set ${PASSWORD_ENV}"
                      f"{stdin_hint} (standard input is not a terminal, so there is no prompt).")


def _tls_ca(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "tls_ca", None)
    if path is None:
        return None
    if not str(args.url).startswith("grpc+tls://"):
        raise InputError(f"--tls-ca is for a grpc+tls:// gateway, not {args.url}.")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read --tls-ca {path}: {exc.strerror or exc}.") from None


def connect(args: argparse.Namespace, kind: str = "gateway") -> GatewayClient:
    """Log in to the gateway (or network: ``kind``) at ``args.url``."""
    tls = _tls_ca(args)
    user = login_user(args)
    return GatewayClient(args.url, user, login_password(args, user), tls_root_certs=tls,
                         kind=kind)


def run_action(args: argparse.Namespace, name: str, body: dict[str, Any] | None = None) -> Any:
    """Log in, run one action, log out; its JSON result."""
    with connect(args) as client:
        return client.action(name, body)


def read_text(path: str, what: str) -> str:
    """A local file given on the command line, or an error naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"Cannot read {what} {path}: {reason}.") from None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, for people."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
