"""``stockade budget … --url``: budgets through a running gateway's actions.

The gateway knows its live policy, so a user who never ran a ``dp`` query is
listed with their role's budget and ``add`` starts from it, with no ``--policy``.
``cap`` sets (or removes) a dataset's cap shared by all users.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateway.cli_budget import _left, _num, parse_amount
from gateway.cli_remote import connect, format_table, print_json, run_action
from gateway.errors import InputError
from gateway.remote import GatewayClient


def _caps(client: GatewayClient, budgets: list[dict[str, Any]], *, filtered: bool
          ) -> dict[str, tuple[float, float, float, float]]:
    """Dataset → (cap ε, cap δ, ε spent, δ spent by all users), for the capped datasets.

    What all users spent is the sum over every user's budget of the dataset (each
    charge is some user's), so a filtered listing asks for each capped dataset whole.
    """
    caps = {}
    for dataset in sorted({b["dataset"] for b in budgets if b.get("cap_epsilon") is not None}):
        entries = [b for b in budgets if b["dataset"] == dataset]
        if filtered:
            entries = client.action("stockade.budget.list", {"dataset": dataset})
        cap = entries[0]
        caps[dataset] = (float(cap["cap_epsilon"]), float(cap.get("cap_delta") or 0.0),
                         float(sum(Decimal(repr(e["epsilon_spent"])) for e in entries)),
                         float(sum(Decimal(repr(e["delta_spent"])) for e in entries)))
    return caps


def _note(entry: Mapping[str, Any]) -> str:
    notes = []
    if entry.get("source") == "role default":
        notes.append("role default (no dp query yet)")
    own_eps = _left(entry["epsilon_allowance"], entry["epsilon_spent"])
    own_delta = _left(entry["delta_allowance"], entry["delta_spent"])
    if entry["epsilon_remaining"] < own_eps or entry["delta_remaining"] < own_delta:
        notes.append("limited by the dataset cap")
    return "; ".join(notes)


def show(args: argparse.Namespace) -> int:
    """``budget show [USER] [--dataset D] --url …``."""
    body = {key: value for key, value in (("user", args.user), ("dataset", args.dataset))
            if value}
    with connect(args) as client:
        budgets = list(client.action("stockade.budget.list", body))
        caps = _caps(client, budgets, filtered=bool(body))
    if args.format == "json":
        print_json({
            "budgets": budgets,
            "dataset_caps": [
                {"dataset": d, "epsilon": e, "delta": dl, "epsilon_spent": se,
                 "delta_spent": sd, "epsilon_remaining": _left(e, se),
                 "delta_remaining": _left(dl, sd)}
                for d, (e, dl, se, sd) in caps.items()],
        })
        return 0
    if budgets:
        print(format_table(
            ("USER", "DATASET", "ε ALLOWANCE", "ε SPENT", "ε LEFT", "δ ALLOWANCE", "δ SPENT",
             "δ LEFT", "NOTE"),
            [(b["user"], b["dataset"], _num(b["epsilon_allowance"]), _num(b["epsilon_spent"]),
              _num(b["epsilon_remaining"]), _num(b["delta_allowance"]), _num(b["delta_spent"]),
              _num(b["delta_remaining"]), _note(b)) for b in budgets],
        ))
    else:
        who = f" for '{args.user}'" if args.user else ""
        where = f" on dataset '{args.dataset}'" if args.dataset else ""
        print(f"No budgets{who}{where}: no user reads a dataset in dp mode.")
    if caps:
        print()
        print(format_table(
            ("DATASET CAP (ALL USERS)", "ε CAP", "ε SPENT", "ε LEFT", "δ CAP", "δ SPENT",
             "δ LEFT"),
            [(d, _num(e), _num(se), _num(_left(e, se)), _num(dl), _num(sd),
              _num(_left(dl, sd))) for d, (e, dl, se, sd) in caps.items()],
        ))
    return 0


def summary(verb: str, balance: Mapping[str, Any]) -> str:
    """One line about a balance as JSON (``Balance.to_json()``)."""
    return (f"{verb} '{balance['user']}' on dataset '{balance['dataset']}': allowance "
            f"ε {_num(balance['epsilon_allowance'])}, δ {_num(balance['delta_allowance'])}; "
            f"spent ε {_num(balance['epsilon_spent'])}, δ {_num(balance['delta_spent'])}; "
            f"left ε {_num(balance['epsilon_remaining'])}, "
            f"δ {_num(balance['delta_remaining'])}.")


def _warn(result: Mapping[str, Any]) -> None:
    if result.get("note"):
        print(f"warning: {result['note']}", file=sys.stderr)


def change(args: argparse.Namespace, *, add: bool) -> int:
    """``budget set|add USER DATASET --epsilon E [--delta D] --url …``."""
    epsilon = parse_amount(args.epsilon, "--epsilon")
    delta = None if args.delta is None else parse_amount(args.delta, "--delta", below_one=True)
    body: dict[str, Any] = {"user": args.user, "dataset": args.dataset, "epsilon": epsilon}
    with connect(args) as client:
        if delta is None and not add:  # keep the δ allowance the user has
            current = client.action("stockade.budget.list",
                                    {"user": args.user, "dataset": args.dataset})
            if current:
                delta = current[0]["delta_allowance"]
        if delta is not None:
            body["delta"] = delta
        result = client.action("stockade.budget.add" if add else "stockade.budget.set", body)
    _warn(result)
    print(summary("Added to the budget of" if add else "Set the budget of", result))
    if not add and result["epsilon_allowance"] < result["epsilon_spent"]:
        print(f"note: '{result['user']}' has already spent more ε than this; nothing is left.")
    return 0


def cap(args: argparse.Namespace) -> int:
    """``budget cap DATASET --epsilon E [--delta D] | --remove --url …``."""
    if args.remove == (args.epsilon is not None):
        raise InputError("Give the cap with --epsilon E (and --delta D), or --remove to lift "
                         "the dataset's cap.")
    if args.remove and args.delta is not None:
        raise InputError("--delta goes with --epsilon, not --remove.")
    body: dict[str, Any] = {"dataset": args.dataset, "epsilon": None}
    if args.epsilon is not None:
        body["epsilon"] = parse_amount(args.epsilon, "--epsilon")
        if args.delta is not None:
            body["delta"] = parse_amount(args.delta, "--delta", below_one=True)
    result = run_action(args, "stockade.budget.cap", body)
    spent = (f"spent so far by all users ε {_num(result.get('spent_epsilon') or 0.0)}, "
             f"δ {_num(result.get('spent_delta') or 0.0)}")
    if result.get("cap_epsilon") is None:
        print(f"Removed the cap of dataset '{result['dataset']}' ({spent}).")
    else:
        print(f"Capped dataset '{result['dataset']}' for all users at ε "
              f"{_num(result['cap_epsilon'])}, δ {_num(result.get('cap_delta') or 0.0)} "
              f"({spent}).")
        if result.get("cap_delta") == 0:
            print("note: the cap leaves no δ for anyone: queries that need δ are refused "
                  "until it is raised with --delta.")
    return 0
