"""``stockade requests``: the analysts' requests for budget or access, and their decisions.

Requests live in the gateway (analysts file them with ``stockade.request_budget``
and ``stockade.request_access``), so these commands always take ``--url``.
Approving a budget request adds its ε/δ (or the ``--epsilon``/``--delta`` given
instead) to the analyst's allowance at once; denying one needs a reason, which the
analyst sees.

>>> _amount({"kind": "budget", "epsilon": 1.5, "delta": 0.0, "mode": None})
'ε 1.5'
>>> _amount({"kind": "access", "epsilon": None, "delta": None, "mode": "raw"})
'mode raw'
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from gateway.cli_budget import _NEGATIVE, _num, parse_amount
from gateway.cli_budget_remote import summary
from gateway.cli_remote import add_remote_options, format_table, print_json, run_action
from gateway.cli_users import _errors_to_exit_code
from gateway.errors import InputError

STATUSES = ("pending", "approved", "denied")


def _amount(request: Mapping[str, Any]) -> str:
    if request["kind"] != "budget":
        return f"mode {request['mode']}"
    text = f"ε {_num(request['epsilon'])}"
    if request.get("delta"):
        text += f", δ {_num(request['delta'])}"
    return text


def _day(iso: str | None) -> str:
    return (iso or "").replace("T", " ").removesuffix("+00:00")


def _decision(request: Mapping[str, Any]) -> str:
    if request["status"] == "pending":
        return ""
    text = f"by {request['decided_by']} {_day(request['decided_at'])}"
    if request.get("decision_reason"):
        text += f": {request['decision_reason']}"
    return text


def _one_line(text: str | None, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


@_errors_to_exit_code
def cmd_list(args: argparse.Namespace) -> int:
    """``requests list [--status S] --url …``."""
    body = {"status": args.status} if args.status else {}
    requests = list(run_action(args, "stockade.requests.list", body))
    if args.format == "json":
        print_json(requests)
    elif requests:
        # Pending first (oldest first within each status), as they wait for a decision.
        ordered = sorted(requests, key=lambda r: (r["status"] != "pending", r["id"]))
        print(format_table(
            ("ID", "STATUS", "USER", "KIND", "DATASET", "ASKS", "FILED (UTC)", "REASON",
             "DECISION"),
            [(str(r["id"]), r["status"], r["user"], r["kind"], r["dataset"], _amount(r),
              _day(r["created_at"]), _one_line(r["reason"]), _one_line(_decision(r)))
             for r in ordered],
        ))
    else:
        which = f"{args.status} " if args.status else ""
        print(f"No {which}requests.")
    return 0


def _request_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"ID must be a request's number (see `stockade requests list`), "
                         f"not {text!r}.")
    return value


@_errors_to_exit_code
def cmd_approve(args: argparse.Namespace) -> int:
    """``requests approve ID [--epsilon E] [--delta D] [--reason R] --url …``."""
    body: dict[str, Any] = {"id": _request_id(args.id)}
    if args.epsilon is not None:
        body["epsilon"] = parse_amount(args.epsilon, "--epsilon")
        if body["epsilon"] == 0:
            raise InputError("--epsilon must be above 0; to give nothing, deny the request.")
    if args.delta is not None:
        body["delta"] = parse_amount(args.delta, "--delta", below_one=True)
    if args.reason is not None:
        body["reason"] = args.reason
    result = run_action(args, "stockade.requests.approve", body)
    if args.format == "json":
        print_json(result)
        return 0
    print(f"Approved request {result['id']} of '{result['user']}' "
          f"({result['kind']}, {_amount(result)} on '{result['dataset']}').")
    if result.get("budget"):
        print(summary("Budget of", result["budget"]))
    if result.get("note"):
        print(f"note: {result['note']}")
    return 0


@_errors_to_exit_code
def cmd_deny(args: argparse.Namespace) -> int:
    """``requests deny ID --reason R --url …``."""
    result = run_action(args, "stockade.requests.deny",
                        {"id": _request_id(args.id), "reason": args.reason})
    if args.format == "json":
        print_json(result)
    else:
        print(f"Denied request {result['id']} of '{result['user']}' ({result['kind']} on "
              f"'{result['dataset']}'): {result['decision_reason']}")
    return 0


def add_requests_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                        ) -> None:
    """Register ``requests list|approve|deny`` under ``subparsers``."""
    requests = subparsers.add_parser(
        "requests", help="decide the analysts' requests for budget or access",
        description="List, approve and deny the analysts' requests, through a running "
                    "gateway (--url).")
    commands = requests.add_subparsers(dest="requests_command", metavar="COMMAND",
                                       required=True)

    list_ = commands.add_parser("list", help="list requests, pending first",
                                description="List requests: pending ones first, then the "
                                            "decided ones with their decision.")
    list_.add_argument("--status", choices=STATUSES, help="only requests with this status")
    list_.add_argument("--format", choices=("table", "json"), default="table")
    add_remote_options(list_, required=True)
    list_.set_defaults(func=cmd_list)

    approve = commands.add_parser(
        "approve", help="approve a request",
        description="Approve a request. A budget request adds the ε/δ asked for to the "
                    "analyst's allowance, or the --epsilon/--delta given instead.")
    approve._negative_number_matcher = _NEGATIVE
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--epsilon", metavar="E", help="ε to grant instead of the ε asked for")
    approve.add_argument("--delta", metavar="D", help="δ to grant instead of the δ asked for")
    approve.add_argument("--reason", metavar="TEXT", help="a note the analyst sees")
    approve.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(approve, required=True)
    approve.set_defaults(func=cmd_approve)

    deny = commands.add_parser("deny", help="deny a request, with a reason",
                               description="Deny a request; the analyst sees the reason.")
    deny.add_argument("id", metavar="ID")
    deny.add_argument("--reason", required=True, metavar="TEXT",
                      help="why (the analyst sees it)")
    deny.add_argument("--format", choices=("text", "json"), default="text")
    add_remote_options(deny, required=True)
    deny.set_defaults(func=cmd_deny)
