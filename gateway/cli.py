"""The ``stockade`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
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
    from gateway.serve import serve

    settings = load_settings(vars(args))
    return serve(settings)


def _cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.domain import Domain

    with _temporary_dir(args.data_dir) as data_dir:
        domain = Domain.open(args.file, data_dir)
        try:
            tables = sum(len(d.tables) for d in domain.policy.datasets.values())
            print(f"{args.file}: OK — domain '{domain.name}', {len(domain.policy.datasets)} "
                  f"dataset(s), {tables} table(s), {len(domain.policy.roles)} role(s)")
        finally:
            domain.close()
    return 0


class _temporary_dir:
    def __init__(self, given: str | None) -> None:
        self.given = given
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.given:
            return Path(self.given)
        self._tmp = tempfile.TemporaryDirectory(prefix="stockade-check-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(args.dir), host=args.host, port=args.port, rows=args.rows)


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

    from gateway.cli_users import add_users_parser

    add_users_parser(sub)

    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = policy_sub.add_parser(
        "check", help="validate a policy file against its real data sources")
    check.add_argument("file", help="the policy YAML file")
    check.add_argument("--data-dir", help="where to build the engine (default: a temp dir)")
    check.set_defaults(func=_cmd_policy_check)

    demo = sub.add_parser("demo", help="generate sample data and run a demo domain")
    demo.add_argument("--dir", default=os.environ.get("STOCKADE_DEMO_DIR", "demo-data"),
                      help="where to write the demo's data, policy and state (default: demo-data)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8815, help="0 picks any free port")
    demo.add_argument("--rows", type=int, default=1_000_000,
                      help="rows of screenings to generate (default: 1,000,000)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
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
