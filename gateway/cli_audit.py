"""``stockade audit``: show the audit log and verify its hash chain.

Both commands read the state store in ``--data-dir`` (or ``$STOCKADE_DATA_DIR``)
directly, also while the gateway runs, or ask a running gateway (``--url``, its
``stockade.audit.query`` and ``stockade.audit.verify`` actions). ``verify`` exits 0
when the chain is intact and 1, naming the first bad record, when a record was
edited or deleted.

>>> record_from_json({"id": 3, "time": "2025-01-02T03:04:05.000+00:00", "kind": "query",
...                   "user": "ann", "sql": "SELECT 1", "prev_hash": "a", "hash": "b"}).details
{'sql': 'SELECT 1'}
>>> parse_since("2025-01-02") == parse_since("2025-01-02T00:00:00+00:00")
True
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.audit import KINDS, AuditLog, AuditRecord, Verification, table_summary
from gateway.cli_remote import add_remote_options, connect, run_action, use_url
from gateway.cli_users import _common, _data_dir, _errors_to_exit_code
from gateway.errors import InputError
from gateway.state import StateStore

CSV_COLUMNS = ("id", "time", "kind", "user", "role", "sql", "rewritten_sql", "tables",
               "epsilon", "delta", "rows", "duration_ms", "error", "reason", "hash")
#: The keys of a record's JSON that are not its details.
_RECORD_KEYS = ("id", "time", "kind", "user", "prev_hash", "hash")
#: Records per ``stockade.audit.query`` call (the action's maximum).
PAGE = 10_000


def record_from_json(value: Mapping[str, Any]) -> AuditRecord:
    """The :class:`AuditRecord` of ``AuditRecord.to_json()`` (as a gateway sends it)."""
    details = {k: v for k, v in value.items() if k not in _RECORD_KEYS}
    return AuditRecord(int(value["id"]), datetime.fromisoformat(value["time"]).timestamp(),
                       str(value["kind"]), str(value["user"]), details,
                       str(value["prev_hash"]), str(value["hash"]))


def parse_since(text: str) -> float:
    """``--since``: an ISO date or date and time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since must be an ISO date or date and time, e.g. 2025-01-31 or "
                         f"2025-01-31T08:00, not {text!r}.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@_errors_to_exit_code
def cmd_verify(args: argparse.Namespace) -> int:
    """``audit verify``."""
    if use_url(args):
        answer = run_action(args, "stockade.audit.verify")
        result = Verification(int(answer["records"]), answer["first_bad_record"],
                              answer.get("problem") or "")
    else:
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
    since = None if args.since is None else parse_since(args.since)
    if use_url(args):
        records = _remote_records(args)
    else:
        with StateStore(_data_dir(args, must_exist=True)) as store:
            log = AuditLog(store)
            if args.kind is None and since is None:
                records = log.records(user=args.user, limit=args.limit)
            else:
                records = [r for r in log.records(user=args.user)
                           if (args.kind is None or r.kind == args.kind)
                           and (since is None or r.at >= since)]
                records = records[-args.limit:] if args.limit else records
    if args.format == "json":
        print(json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False))
    elif args.format == "csv":
        sys.stdout.write(_csv(records))
    elif records:
        print(_table(records))
    else:
        print("No audit records.")
    return 0


def _remote_records(args: argparse.Namespace) -> list[AuditRecord]:
    """The matching records from ``args.url``, oldest first (``--limit``: the last N)."""
    body: dict[str, Any] = {key: value for key, value in
                            (("user", args.user), ("kind", args.kind), ("since", args.since))
                            if value is not None}
    found: list[dict[str, Any]] = []
    with connect(args) as client:
        while args.limit is None or len(found) < args.limit:
            want = PAGE if args.limit is None else min(PAGE, args.limit - len(found))
            page = client.action("stockade.audit.query", {**body, "limit": want})
            found += page["records"]
            if page.get("next_before_id") is None or not page["records"]:
                break
            body["before_id"] = page["next_before_id"]
    return [record_from_json(r) for r in reversed(found)]


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
    add_remote_options(verify)
    verify.set_defaults(func=cmd_verify)
    show = commands.add_parser(
        "show", help="list audit records",
        description="List audit records, oldest first. With --url, log in with --login "
                    "NAME (or $STOCKADE_USER): --user selects the records.")
    _common(show)
    show.add_argument("--user", help="only this user's records")
    show.add_argument("--kind", choices=KINDS, help="only records of this kind")
    show.add_argument("--since", metavar="WHEN",
                      help="only records from this ISO date or date and time (UTC) on")
    show.add_argument("--limit", type=int, metavar="N", help="only the most recent N records")
    show.add_argument("--format", choices=("table", "json", "csv"), default="table")
    add_remote_options(show, user_flag=False)
    show.set_defaults(func=cmd_show)
