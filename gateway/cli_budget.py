"""``stockade budget``: show and change the ε/δ budgets of ``dp`` mode.

These commands work on the state store in ``--data-dir`` (or
``$STOCKADE_DATA_DIR``) directly, also while the gateway runs: a change applies
to the next query. A user's allowance for a dataset starts from their role's
``budget`` at their first ``dp`` query; before that it is stored nowhere, so
``show`` lists it only when given the policy (``--policy FILE``), and ``add``
needs the policy to know what it adds to.

With ``--url`` they run the gateway's ``stockade.budget.*`` actions instead
(:mod:`gateway.cli_budget_remote`), where the live policy supplies the role
budgets; ``cap`` (a dataset's cap for all users) is only available that way.

>>> parse_amount("0.5", "--epsilon"), parse_amount("1e-6", "--delta")
(0.5, 1e-06)
>>> parse_amount("-1", "--epsilon")
Traceback (most recent call last):
...
gateway.errors.InputError: --epsilon must be a number ≥ 0, not -1.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.cli_remote import add_remote_options, format_table, use_url
from gateway.cli_users import DATA_DIR_ENV, _data_dir, _errors_to_exit_code
from gateway.errors import InputError, NotFoundError, did_you_mean
from gateway.ledger import Balance, Ledger
from gateway.state import StateStore
from policy.model import Budget, Policy

SEE_USERS = "See `stockade users list` for the users of this domain."


def parse_amount(text: str, option: str, *, below_one: bool = False) -> float:
    """An ε or δ given on the command line: a finite number ≥ 0 (δ also < 1)."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{option} must be a number, e.g. 0.5, not {text!r}.") from None
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{option} must be a number ≥ 0, not {text}.")
    if below_one and value >= 1:
        raise InputError(f"{option} must be below 1, not {text}.")
    return value


def _num(value: float) -> str:
    return f"{value:.12g}"


def _left(total: float, spent: float) -> float:
    """``total - spent`` in decimal (0.3 - 0.1 is 0.2), at least 0."""
    return max(float(Decimal(repr(total)) - Decimal(repr(spent))), 0.0)


def _load_policy(path: str | None) -> Policy | None:
    if path is None:
        return None
    from policy.loader import load_policy

    return load_policy(path)


@dataclass(frozen=True)
class _Context:
    """The state store, its ledger, and the policy if given."""

    store: StateStore
    ledger: Ledger
    policy: Policy | None

    def roles(self) -> dict[str, str]:
        """User name → role, for the users of the store."""
        return {u.name: u.role for u in self.store.list_users()}

    def user(self, name: str, *, ledger_too: bool) -> str:
        """The stored spelling of user ``name``; with ``ledger_too`` also a removed
        user who still has budget records."""
        try:
            return self.store.get_user(name).name
        except NotFoundError:
            if not ledger_too:
                raise
        known = {u for u, _ in self.ledger.allowances()}
        for found in known:
            if found.lower() == name.lower():
                return found
        raise NotFoundError(
            f"Unknown user '{name}'.{did_you_mean(name, known | set(self.roles()))} {SEE_USERS}"
        )

    def dp_budgets(self, role: str | None) -> dict[str, Budget | None]:
        """Dataset → the role's budget, for each dataset the role reads in ``dp`` mode."""
        if self.policy is None or role is None:
            return {}
        from policy.access import catalog_for
        from policy.principal import Principal

        catalog = catalog_for(self.policy, Principal("budget", role))
        return {a.dataset: a.budget for a in catalog.values() if a.mode == "dp"}

    def datasets(self) -> set[str]:
        """Dataset names known to the policy, or else to the ledger."""
        if self.policy is not None:
            return set(self.policy.datasets)
        return {d for _, d in self.ledger.allowances()} | set(self.ledger.dataset_caps())

    def dataset(self, name: str) -> str:
        known = self.datasets()
        if name in known:
            return name
        hint = did_you_mean(name, known)
        if self.policy is not None:
            raise InputError(f"Unknown dataset '{name}' in {self.policy.file}.{hint}")
        raise InputError(
            f"No budget records for dataset '{name}'.{hint} To use a dataset nobody has "
            "queried yet, pass --policy FILE so that its name can be checked."
        )


def _open(args: argparse.Namespace) -> tuple[StateStore, _Context]:
    policy = _load_policy(getattr(args, "policy", None))
    store = StateStore(_data_dir(args, must_exist=True))
    return store, _Context(store, Ledger(store), policy)


def _balance_json(balance: Balance, source: str) -> dict[str, Any]:
    return {**balance.to_json(), "source": source}


_table = format_table


@_errors_to_exit_code
def cmd_show(args: argparse.Namespace) -> int:
    """``budget show [USER] [--dataset D] [--policy FILE]``."""
    if use_url(args):
        from gateway.cli_budget_remote import show

        return show(args)
    store, ctx = _open(args)
    with store:
        user = ctx.user(args.user, ledger_too=True) if args.user else None
        dataset = ctx.dataset(args.dataset) if args.dataset else None
        roles = ctx.roles()
        pairs = {(u.lower(), d): (u, d, "ledger") for u, d in ctx.ledger.allowances()}
        if ctx.policy is not None:
            for name, role in roles.items():
                for ds in ctx.dp_budgets(role):
                    pairs.setdefault((name.lower(), ds), (name, ds, "role default"))
        selected = [pairs[k] for k in sorted(pairs)
                    if (user is None or k[0] == user.lower())
                    and (dataset is None or k[1] == dataset)]
        role_of = {name.lower(): role for name, role in roles.items()}
        balances = []
        for u, d, source in selected:
            default = ctx.dp_budgets(role_of.get(u.lower())).get(d)
            balances.append((ctx.ledger.balance(u, d, default=default), source))
        shown = {d for _, d, _ in selected} if user is not None else None
        caps = {d: c for d, c in ctx.ledger.dataset_caps().items()
                if (dataset is None or d == dataset) and (shown is None or d in shown)}
    if args.format == "json":
        print(json.dumps({
            "budgets": [_balance_json(b, s) for b, s in balances],
            "dataset_caps": [
                {"dataset": d, "epsilon": e, "delta": dl, "epsilon_spent": se,
                 "delta_spent": sd, "epsilon_remaining": _left(e, se),
                 "delta_remaining": _left(dl, sd)}
                for d, (e, dl, se, sd) in caps.items()
            ],
        }, indent=2))
        return 0
    if balances:
        print(_table(
            ("USER", "DATASET", "ε ALLOWANCE", "ε SPENT", "ε LEFT", "δ ALLOWANCE", "δ SPENT",
             "δ LEFT", "NOTE"),
            [(b.user, b.dataset, _num(b.allowance_epsilon), _num(b.spent_epsilon),
              _num(b.remaining_epsilon), _num(b.allowance_delta), _num(b.spent_delta),
              _num(b.remaining_delta), _note(b, source)) for b, source in balances],
        ))
    else:
        who = f" for '{user}'" if user else ""
        where = f" on dataset '{dataset}'" if dataset else ""
        hint = "" if ctx.policy is not None else (
            " Users who never ran a dp query have their role's budget: pass --policy FILE "
            "to see it.")
        print(f"No budgets{who}{where} yet.{hint}")
    if caps:
        print()
        print(_table(
            ("DATASET CAP (ALL USERS)", "ε CAP", "ε SPENT", "ε LEFT", "δ CAP", "δ SPENT",
             "δ LEFT"),
            [(d, _num(e), _num(se), _num(_left(e, se)), _num(dl), _num(sd),
              _num(_left(dl, sd))) for d, (e, dl, se, sd) in caps.items()],
        ))
    return 0


def _note(balance: Balance, source: str) -> str:
    notes = []
    if source == "role default":
        notes.append("role default (no dp query yet)")
    own_eps = _left(balance.allowance_epsilon, balance.spent_epsilon)
    own_delta = _left(balance.allowance_delta, balance.spent_delta)
    if balance.remaining_epsilon < own_eps or balance.remaining_delta < own_delta:
        notes.append("limited by the dataset cap")
    return "; ".join(notes)


def _warn_not_dp(ctx: _Context, user: str, dataset: str) -> Budget | None:
    """The role's budget for ``dataset`` (warning when the role has no dp grant on it)."""
    role = ctx.roles().get(user)
    budgets = ctx.dp_budgets(role)
    if ctx.policy is not None and dataset not in budgets:
        print(f"warning: role '{role}' of '{user}' does not read '{dataset}' in dp mode; "
              "the budget has no effect until it does.", file=sys.stderr)
    return budgets.get(dataset)


def _summary(verb: str, balance: Balance) -> str:
    left = (f"left ε {_num(balance.remaining_epsilon)}, δ {_num(balance.remaining_delta)}")
    text = (f"{verb} '{balance.user}' on dataset '{balance.dataset}': allowance "
            f"ε {_num(balance.allowance_epsilon)}, δ {_num(balance.allowance_delta)}; "
            f"spent ε {_num(balance.spent_epsilon)}, δ {_num(balance.spent_delta)}; {left}.")
    return text


@_errors_to_exit_code
def cmd_set(args: argparse.Namespace) -> int:
    """``budget set USER DATASET --epsilon E [--delta D]``."""
    if use_url(args):
        from gateway.cli_budget_remote import change

        return change(args, add=False)
    epsilon = parse_amount(args.epsilon, "--epsilon")
    delta = None if args.delta is None else parse_amount(args.delta, "--delta", below_one=True)
    store, ctx = _open(args)
    with store:
        user = ctx.user(args.user, ledger_too=False)
        dataset = ctx.dataset(args.dataset)
        default = _warn_not_dp(ctx, user, dataset)
        if delta is None:  # keep the δ allowance the user has (or would start with)
            if (user.lower(), dataset) in {(u.lower(), d) for u, d in ctx.ledger.allowances()}:
                delta = ctx.ledger.balance(user, dataset).allowance_delta
            elif ctx.policy is not None:
                delta = default.delta if default is not None else 0.0
            else:
                raise InputError(
                    f"'{user}' has no allowance for dataset '{dataset}' yet, so there is no δ "
                    "to keep: give --delta too, or --policy FILE to keep their role's δ."
                )
        balance = ctx.ledger.set_allowance(user, dataset, epsilon, delta)
    print(_summary("Set the budget of", balance))
    if balance.allowance_epsilon < balance.spent_epsilon:
        print(f"note: '{user}' has already spent more ε than this; nothing is left.")
    return 0


@_errors_to_exit_code
def cmd_add(args: argparse.Namespace) -> int:
    """``budget add USER DATASET --epsilon E [--delta D]``."""
    if use_url(args):
        from gateway.cli_budget_remote import change

        return change(args, add=True)
    epsilon = parse_amount(args.epsilon, "--epsilon")
    delta = 0.0 if args.delta is None else parse_amount(args.delta, "--delta", below_one=True)
    store, ctx = _open(args)
    with store:
        user = ctx.user(args.user, ledger_too=False)
        dataset = ctx.dataset(args.dataset)
        default = _warn_not_dp(ctx, user, dataset)
        stored = (user.lower(), dataset) in {(u.lower(), d) for u, d in ctx.ledger.allowances()}
        if not stored and ctx.policy is None:
            raise InputError(
                f"'{user}' has no allowance for dataset '{dataset}' yet (it starts from their "
                "role's budget at their first dp query): pass --policy FILE to add to the "
                "role's budget, or use `stockade budget set`."
            )
        balance = ctx.ledger.add_allowance(user, dataset, epsilon, delta, default=default)
    print(_summary("Added to the budget of", balance))
    return 0


@_errors_to_exit_code
def cmd_cap(args: argparse.Namespace) -> int:
    """``budget cap DATASET --epsilon E [--delta D] | --remove --url …``."""
    from gateway.cli_budget_remote import cap

    return cap(args)


@_errors_to_exit_code
def cmd_charges(args: argparse.Namespace) -> int:
    """``budget charges [USER] [--dataset D]``."""
    if use_url(args):
        raise InputError(
            "A running gateway does not list single charges: see the ε spent per user with "
            "`stockade budget show --url …` and each charged query with `stockade audit "
            "show --url … --kind query`, or list charges with --data-dir on its machine.")
    store, ctx = _open(args)
    with store:
        user = ctx.user(args.user, ledger_too=True) if args.user else None
        dataset = ctx.dataset(args.dataset) if args.dataset else None
        charges = ctx.ledger.charges(user, dataset)
    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    if args.format == "json":
        print(json.dumps([{"user": u, "dataset": d, "epsilon": e, "delta": dl,
                           "charged_at": when(t)} for u, d, e, dl, t in charges], indent=2))
    elif charges:
        print(_table(
            ("CHARGED AT (UTC)", "USER", "DATASET", "ε", "δ"),
            [(when(t).removesuffix("+00:00"), u, d, _num(e), _num(dl))
             for u, d, e, dl, t in charges],
        ))
        total_eps = sum(Decimal(repr(c[2])) for c in charges)
        total_delta = sum(Decimal(repr(c[3])) for c in charges)
        print(f"{len(charges)} charge(s): ε {_num(float(total_eps))}, "
              f"δ {_num(float(total_delta))} in total.")
    else:
        print("No charges yet.")
    return 0


def _common(parser: argparse.ArgumentParser, *, policy_help: str) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help=f"the gateway's data directory (default: ${DATA_DIR_ENV})",
    )
    if policy_help:
        parser.add_argument("--policy", metavar="FILE", help=policy_help + " (--data-dir)")
    add_remote_options(parser)


#: What argparse takes for a negative number rather than an option (its own pattern
#: misses ``-1e-6`` and ``-inf``), so that ``--delta -1e-6`` is refused by
#: :func:`parse_amount` with a clear message.
_NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^-(inf|infinity|nan)$", re.I)


def _amounts(parser: argparse.ArgumentParser, what: str) -> None:
    parser._negative_number_matcher = _NEGATIVE
    parser.add_argument("user", metavar="USER")
    parser.add_argument("dataset", metavar="DATASET")
    _epsilon_delta(parser, what, required=True)


def _epsilon_delta(parser: argparse.ArgumentParser, what: str, *, required: bool) -> None:
    parser.add_argument("--epsilon", required=required, metavar="E", help=f"ε {what}")
    parser.add_argument("--delta", metavar="D", help=f"δ {what}")


def add_budget_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``budget show|set|add|cap|charges`` under ``subparsers``."""
    budget = subparsers.add_parser(
        "budget", help="show and change the ε/δ budgets of dp mode",
        description="Show and change the ε/δ budgets of dp mode, in a domain's state store "
                    "(--data-dir) or through a running gateway (--url).",
    )
    commands = budget.add_subparsers(dest="budget_command", metavar="COMMAND", required=True)

    show = commands.add_parser(
        "show", help="allowance, spent and remaining ε/δ per user and dataset",
        description="Allowance, spent and remaining ε/δ per user and dataset, and the "
                    "dataset caps shared by all users. Remaining amounts include the cap.",
    )
    show.add_argument("user", metavar="USER", nargs="?", help="only this user")
    show.add_argument("--dataset", metavar="D", help="only this dataset")
    show.add_argument("--format", choices=("table", "json"), default="table")
    _common(show, policy_help="the policy, to also show the role's budget of users who never "
                              "ran a dp query")
    show.set_defaults(func=cmd_show)

    set_ = commands.add_parser(
        "set", help="set a user's allowance for a dataset",
        description="Set a user's total allowance for a dataset; what was spent stays spent. "
                    "Without --delta the δ allowance is kept.",
    )
    _amounts(set_, "allowance (total, ≥ 0)")
    _common(set_, policy_help="the policy, to check the dataset name")
    set_.set_defaults(func=cmd_set)

    add = commands.add_parser(
        "add", help="add to a user's allowance for a dataset",
        description="Add to a user's allowance for a dataset. A user who never ran a dp query "
                    "has no stored allowance yet: pass --policy to add to their role's budget.",
    )
    _amounts(add, "to add (≥ 0)")
    _common(add, policy_help="the policy: the role's budget is the starting allowance")
    add.set_defaults(func=cmd_add)

    cap = commands.add_parser(
        "cap", help="cap what all users together may spend on a dataset (--url)",
        description="Set or remove a dataset's cap on the ε/δ all users together may spend, "
                    "through a running gateway. It wins over the policy's budget_cap and "
                    "stays until --remove, when the policy's cap (if any) applies again.",
    )
    cap._negative_number_matcher = _NEGATIVE
    cap.add_argument("dataset", metavar="DATASET")
    _epsilon_delta(cap, "cap for all users (≥ 0)", required=False)
    cap.add_argument("--remove", action="store_true", help="remove the dataset's cap")
    add_remote_options(cap, required=True)
    cap.set_defaults(func=cmd_cap)

    charges = commands.add_parser(
        "charges", help="the append-only record of charges",
        description="Every charge of the ledger (one per answered dp query that was not "
                    "served from the answer cache), oldest first.",
    )
    charges.add_argument("user", metavar="USER", nargs="?", help="only this user")
    charges.add_argument("--dataset", metavar="D", help="only this dataset")
    charges.add_argument("--format", choices=("table", "json"), default="table")
    _common(charges, policy_help="")
    charges.set_defaults(func=cmd_charges)

    from gateway.cli_catalog import add_budget_mine

    add_budget_mine(commands)
