"""``stockade policy get|versions|validate|replace|dry-run --url …``: a live policy.

These run a gateway's ``stockade.policy.*`` actions. ``validate`` checks a file
the way ``stockade policy check`` does, on the gateway (its sources, its users)
and without changing anything; ``replace`` makes a file the live policy at once,
as a new version (the previous ones are kept); ``dry-run`` shows what a query
becomes for a user under the live policy or a candidate file, running nothing.

>>> error_line("policy.yaml", {"line": 7, "path": "roles.analyst", "message": "Unknown mode."})
'policy.yaml:7: roles.analyst: Unknown mode.'
>>> error_line("policy.yaml", {"line": None, "path": None, "message": "Bad YAML."})
'policy.yaml: Bad YAML.'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from gateway.cli_budget import _num
from gateway.cli_remote import (
    add_remote_options,
    format_table,
    print_json,
    read_text,
    run_action,
)
from gateway.cli_users import _errors_to_exit_code


def error_line(file: str, error: Mapping[str, Any]) -> str:
    """``FILE:LINE: PATH: message`` (the parts that are known)."""
    where = f"{file}:{error['line']}" if error.get("line") else file
    message = str(error["message"])
    if error.get("path") and not message.startswith(str(error["path"])):
        message = f"{error['path']}: {message}"
    return f"{where}: {message}"


def _changes(changes: list[str], diff: str, *, show_diff: bool) -> None:
    for change in changes:
        print(f"  - {change}")
    if show_diff and diff:
        print()
        sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")


@_errors_to_exit_code
def cmd_get(args: argparse.Namespace) -> int:
    """``policy get [--version N] --url …``: the YAML (or all of it as JSON)."""
    body = {} if args.version is None else {"version": args.version}
    result = run_action(args, "stockade.policy.get", body)
    if args.format == "json":
        print_json(result)
    else:
        yaml = str(result["yaml"])
        sys.stdout.write(yaml if yaml.endswith("\n") else yaml + "\n")
    return 0


@_errors_to_exit_code
def cmd_versions(args: argparse.Namespace) -> int:
    """``policy versions --url …``: every version, newest first."""
    versions = list(run_action(args, "stockade.policy.versions"))
    if args.format == "json":
        print_json(versions)
        return 0
    print(format_table(
        ("VERSION", "LIVE", "CREATED (UTC)", "BY", "SHA-256", "COMMENT"),
        [(str(v["version"]), "live" if v.get("live") else "",
          str(v["created_at"]).replace("T", " ").removesuffix("+00:00"), str(v["created_by"]),
          str(v["sha256"])[:12], " ".join(str(v.get("comment") or "").split()))
         for v in versions]))
    return 0


@_errors_to_exit_code
def cmd_validate(args: argparse.Namespace) -> int:
    """``policy validate FILE --url …``: exit 2 with ``FILE:LINE: message`` lines if invalid."""
    result = run_action(args, "stockade.policy.validate",
                        {"yaml": read_text(args.file, "the policy file")})
    if args.format == "json":
        print_json(result)
        return 0 if result["ok"] else 2
    for warning in result.get("warnings") or []:
        print(f"warning: {args.file}: {warning}", file=sys.stderr)
    if not result["ok"]:
        for error in result["errors"]:
            print(f"error: {error_line(args.file, error)}", file=sys.stderr)
        print(f"{args.file}: {len(result['errors'])} error(s); nothing was changed.",
              file=sys.stderr)
        return 2
    changes = list(result.get("changes") or [])
    if not changes and not result.get("diff"):
        print(f"{args.file}: valid, the same as the live policy.")
        return 0
    print(f"{args.file}: valid; {len(changes)} change(s) from the live policy:")
    _changes(changes, str(result.get("diff") or ""), show_diff=args.diff)
    return 0


@_errors_to_exit_code
def cmd_replace(args: argparse.Namespace) -> int:
    """``policy replace FILE [--comment C] [--expected-version N] --url …``."""
    body: dict[str, Any] = {"yaml": read_text(args.file, "the policy file")}
    if args.comment is not None:
        body["comment"] = args.comment
    if args.expected_version is not None:
        body["expected_version"] = args.expected_version
    result = run_action(args, "stockade.policy.replace", body)
    if args.format == "json":
        print_json(result)
        return 0
    changes = list(result.get("changes") or [])
    print(f"Policy version {result['version']} is live (was version "
          f"{result['previous_version']}); {len(changes)} change(s):")
    _changes(changes, str(result.get("diff") or ""), show_diff=args.diff)
    return 0


def _dry_run_text(result: Mapping[str, Any]) -> list[str]:
    lines = [f"user: {result['user']}", f"role: {result['role']}",
             f"decision: {result['decision']}"]
    for table in result.get("tables") or []:
        lines.append(f"table {table['dataset']}.{table['table']}: {table['mode']}")
    if result.get("epsilon") is not None:
        cost = f"cost: ε {_num(result['epsilon'])}, δ {_num(result.get('delta') or 0.0)}"
        if result.get("remaining_epsilon") is not None:
            cost += f" (ε {_num(result['remaining_epsilon'])} left; a dry run charges nothing)"
        lines.append(cost)
    if result.get("rewritten_sql"):
        lines += ["rewritten SQL:", str(result["rewritten_sql"])]
    return lines


@_errors_to_exit_code
def cmd_dry_run(args: argparse.Namespace) -> int:
    """``policy dry-run SQL --as USER [--candidate FILE] --url …``: exit 2 if refused."""
    body: dict[str, Any] = {"query": args.sql, "user": args.as_user}
    if args.candidate is not None:
        body["yaml"] = read_text(args.candidate, "the candidate policy")
    if args.dialect is not None:
        body["dialect"] = args.dialect
    if args.epsilon is not None:
        body["epsilon"] = args.epsilon
    result = run_action(args, "stockade.policy.dry_run", body)
    refused = result["decision"] != "allowed"
    if args.format == "json":
        print_json(result)
    else:
        print("\n".join(_dry_run_text(result)))
        if refused:
            print(f"error: refused: {result.get('error')}", file=sys.stderr)
    return 2 if refused else 0


def add_policy_remote_commands(
        commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``get|versions|validate|replace|dry-run`` under ``stockade policy``."""
    get = commands.add_parser("get", help="print a running gateway's policy (--url)",
                              description="Print the live policy's YAML (or a kept version).")
    get.add_argument("--version", type=int, metavar="N", help="this version instead")
    get.add_argument("--format", choices=("yaml", "json"), default="yaml",
                     help="json adds the version, its author, time and checksum")
    add_remote_options(get, required=True)
    get.set_defaults(func=cmd_get)

    versions = commands.add_parser("versions", help="list the policy's versions (--url)",
                                   description="Every version of the policy, newest first.")
    versions.add_argument("--format", choices=("table", "json"), default="table")
    add_remote_options(versions, required=True)
    versions.set_defaults(func=cmd_versions)

    validate = commands.add_parser(
        "validate", help="check a policy file on a running gateway (--url)",
        description="Check a policy file as `policy check` does, on the gateway's sources "
                    "and users, and list what it changes from the live policy. Nothing "
                    "changes. Exit 2, with FILE:LINE: message lines, if it is not valid.")
    validate.add_argument("file", metavar="FILE", help="the policy YAML file")
    validate.add_argument("--diff", action="store_true", help="print the unified diff too")
    validate.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(validate, required=True)
    validate.set_defaults(func=cmd_validate)

    replace = commands.add_parser(
        "replace", help="make a policy file the live policy (--url)",
        description="Validate a policy file and make it the live policy at once, without a "
                    "restart, as a new version (the previous ones are kept). Queries already "
                    "running finish under the old policy. Nothing changes if it is invalid.")
    replace.add_argument("file", metavar="FILE", help="the policy YAML file")
    replace.add_argument("--comment", metavar="TEXT", help="why, kept with the version")
    replace.add_argument("--expected-version", type=int, metavar="N",
                         help="refuse unless the live policy is still version N")
    replace.add_argument("--diff", action="store_true", help="print the unified diff too")
    replace.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(replace, required=True)
    replace.set_defaults(func=cmd_replace)

    dry_run = commands.add_parser(
        "dry-run", help="what a query becomes for a user on a running gateway (--url)",
        description="The decision, tables, rewritten SQL and ε cost of a query for a user, "
                    "under the live policy or a candidate file. Nothing is run or charged. "
                    "Exit 2 if the query is refused.")
    dry_run.add_argument("sql", metavar="SQL", help="the query, as the analyst would send it")
    dry_run.add_argument("--as", dest="as_user", required=True, metavar="USER",
                         help="the user to run it for")
    dry_run.add_argument("--candidate", metavar="FILE",
                         help="a policy file to try instead of the live policy")
    dry_run.add_argument("--dialect", help="the SQL's dialect (default duckdb)")
    dry_run.add_argument("--epsilon", type=float, metavar="EPS",
                         help="the per-query ε of a query on dp tables")
    dry_run.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(dry_run, required=True)
    dry_run.set_defaults(func=cmd_dry_run)
