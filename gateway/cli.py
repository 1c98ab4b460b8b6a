"""The ``stockade`` command."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import StockadeError
from gateway.settings import SETTINGS, load_settings


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        default = setting.default if isinstance(setting.default, str | int) else None
        hint = f" (default: {default}; env {setting.env})" if default is not None else (
            f" (env {setting.env})")
        parser.add_argument(setting.flag, dest=setting.name, metavar=setting.metavar,
                            help=setting.help + hint)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import serve

    settings = load_settings(vars(args))
    return serve(settings)


Command = Callable[[argparse.Namespace], int]


def _no_traceback(command: Command) -> Command:
    """Report an unexpected failure in one ``error:`` line (the traceback with -v)."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (StockadeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            logging.getLogger("stockade").debug("unexpected failure", exc_info=True)
            print(f"error: unexpected failure ({type(exc).__name__}: {exc}); "
                  "run with -v for details", file=sys.stderr)
            return 2

    return wrapper


@_no_traceback
def _cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy_tools import check_types, check_users, open_domain, summary

    with open_domain(args.file, args.data_dir) as domain:
        errors = check_types(domain)
        warnings: list[str] = []
        if args.data_dir:
            user_errors, warnings = check_users(domain)
            errors += user_errors
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        if errors:
            print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
            return 2
        users = f", {len(domain.store.list_users())} user(s) checked" if args.data_dir else ""
        print(summary(domain) + users)
    return 0


@_no_traceback
def _cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.policy_tools import explain, explanation_json, open_domain

    with open_domain(args.policy, args.data_dir) as domain:
        try:
            explanation = explain(domain, args.user, args.sql, dialect=args.dialect,
                                  epsilon=args.epsilon)
        except StockadeError as err:
            if args.format == "json":
                print(json.dumps({"user": args.user, "refused": True, "error": str(err)},
                                 indent=2))
            raise
        if args.format == "json":
            print(explanation_json(explanation))
        else:
            print(explanation.to_text())
    return 0


#: Rows ``stockade demo`` generates by default, over all hospitals and tables.
DEMO_ROWS = 3_000_000


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(args.dir), host=args.host, port=args.port, rows=args.rows,
                    console_port=None if args.no_console else args.console_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockade",
        description="Stockade: a privacy gateway for remote data science over Arrow Flight SQL.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run a domain gateway (Flight SQL server)")
    _add_setting_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    from gateway.cli_audit import add_audit_parser
    from gateway.cli_budget import add_budget_parser
    from gateway.cli_catalog import add_analyst_requests, add_catalog_parser
    from gateway.cli_console import add_console_parser
    from gateway.cli_network import add_network_parser
    from gateway.cli_policy_remote import add_policy_remote_commands
    from gateway.cli_query import add_query_parser
    from gateway.cli_requests import add_requests_parser
    from gateway.cli_search import add_search_parser
    from gateway.cli_users import add_users_parser

    add_network_parser(sub)
    add_users_parser(sub)
    add_budget_parser(sub)
    add_requests_parser(sub)
    add_analyst_requests(sub)
    add_audit_parser(sub)
    add_console_parser(sub)
    add_search_parser(sub)
    add_query_parser(sub)
    add_catalog_parser(sub)

    policy = sub.add_parser("policy", help="work with policy files and a gateway's live policy")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = policy_sub.add_parser(
        "check", help="validate a policy file against its real data sources",
        description="Validate a policy: names (with line numbers and suggestions), then every "
                    "row filter and mask bound on DuckDB over the real sources, for every role "
                    "that can read each table. With --data-dir, also each user's attributes.")
    check.add_argument("file", help="the policy YAML file")
    check.add_argument("--data-dir", help="the gateway's data directory, to check its users "
                                          "(read only; the engine is built in a temp dir)")
    check.set_defaults(func=_cmd_policy_check)
    explain = policy_sub.add_parser(
        "explain", help="show what a query becomes for a user, without running it",
        description="Print the user's role, the decision per table the query reads (mode, row "
                    "filters with the user's attributes bound, hidden columns, masks) and the "
                    "rewritten SQL; for dp tables also the privacy unit, bounds, SmartNoise "
                    "query, noise per column, ε/δ cost and the user's remaining budget. Nothing "
                    "is run or charged. Exit 2 if the query is refused.")
    explain.add_argument("sql", metavar="SQL", help="the query, as the analyst would send it")
    explain.add_argument("--policy", required=True, help="the policy YAML file")
    explain.add_argument("--data-dir", required=True,
                         help="the gateway's data directory (users are read from it)")
    explain.add_argument("--user", required=True, help="the user to explain the query for")
    explain.add_argument("--dialect", help="the SQL's dialect (default duckdb; a leading "
                                           "/* dialect: … */ comment wins)")
    explain.add_argument("--epsilon", metavar="EPS",
                         help="the per-query ε of a query on dp tables (default: the grant's "
                              "epsilon_per_query; a leading /* epsilon: … */ comment wins)")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    explain.set_defaults(func=_cmd_policy_explain)
    add_policy_remote_commands(policy_sub)

    demo = sub.add_parser(
        "demo", help="run three demo hospitals, their network and a console",
        description="Generate synthetic data for three hospitals (cached in --dir), write their "
                    "policies, start their domain gateways, a network node and the first "
                    "hospital's console, and print the URLs, the demo logins and how to "
                    "connect. Ctrl-C stops everything.")
    demo.add_argument("--dir", default=os.environ.get("STOCKADE_DEMO_DIR", "demo-data"),
                      help="where to write the demo's data, policy and state (default: demo-data)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8815,
                      help="port of the first hospital; the others and the network follow "
                           "(default: 8815; 0 picks free ports for all)")
    demo.add_argument("--rows", type=int, default=DEMO_ROWS,
                      help="rows to generate over the three hospitals' tables "
                           f"(default: {DEMO_ROWS:,})")
    demo.add_argument("--console-port", type=int, default=8501,
                      help="port of the owner's web console (default: 8501; 0 picks a free one)")
    demo.add_argument("--no-console", action="store_true", help="do not start the console")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except StockadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def install_stop_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only)."""
    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
