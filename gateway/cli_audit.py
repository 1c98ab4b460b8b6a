"""``stockade audit``: show the audit log and verify its hash chain.

Both commands read the state store in ``--data-dir`` (or ``$STOCKADE_DATA_DIR``)
directly, also while the gateway runs. ``verify`` exits 0 when the chain is
intact and 1, naming the first bad record, when a record was edited or deleted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from gateway.audit import AuditLog, AuditRecord, table_summary
from gateway.cli_users import _common, _data_dir, _errors_to_exit_code
from gateway.errors import InputError
from gateway.state import StateStore

CSV_COLUMNS = ("id", "time", "kind", "user", "role", "sql", "rewritten_sql", "tables",
               "epsilon", "delta", "rows", "duration_ms", "error", "reason", "hash")


@_errors_to_exit_code
def cmd_verify(args: argparse.Namespace) -> int:
    """``audit verify``."""
    with StateStore(_data_dir(args, must_exist=True)) as store:
        result = AuditLog(store).verify()
    if result.ok:
        print(result)
        return 0
    print(f"error: {result}", file=sys.stderr)
    return 1


def _csv(records: list[AuditRecord]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = record.to_json()
        if "tables" in row:
            row["tables"] = ";".join(f"{t['dataset']}.{t['table']}:{t['mode']}"
                                     for t in row["tables"])
        writer.writerow(row)
    return out.getvalue()


def _table(records: list[AuditRecord]) -> str:
    header = ("ID", "TIME", "KIND", "USER", "DETAILS")
    rows = [(str(r.id), r.time, r.kind, r.user, table_summary(r)) for r in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in [header, *rows]
    )


@_errors_to_exit_code
def cmd_show(args: argparse.Namespace) -> int:
    """``audit show``."""
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be a positive number of records.")
    with StateStore(_data_dir(args, must_exist=True)) as store:
        records = AuditLog(store).records(user=args.user, limit=args.limit)
    if args.format == "json":
        print(json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False))
    elif args.format == "csv":
        sys.stdout.write(_csv(records))
    elif records:
        print(_table(records))
    else:
        print("No audit records.")
    return 0


def add_audit_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser(
        "audit", help="show and verify the audit log",
        description="The audit log: every query and failed login, hash-chained.")
    commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = commands.add_parser(
        "verify", help="check that no audit record was edited or deleted",
        description="Recompute the hash chain. Exit 0 when intact, 1 naming the first bad "
                    "record.")
    _common(verify)
    verify.set_defaults(func=cmd_verify)
    show = commands.add_parser("show", help="list audit records",
                               description="List audit records, oldest first.")
    _common(show)
    show.add_argument("--user", help="only this user's records")
    show.add_argument("--limit", type=int, metavar="N", help="only the most recent N records")
    show.add_argument("--format", choices=("table", "json", "csv"), default="table")
    show.set_defaults(func=cmd_show)
