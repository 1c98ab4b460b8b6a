"""The privacy-budget ledger: allowances, an atomic check-and-charge, dp answers.

Each (user, dataset) has an **allowance** of ε and δ, created from the role's
``budget`` the first time the user touches the dataset, and changed by the owner
afterwards (:meth:`Ledger.set_allowance`, :meth:`Ledger.add_allowance`). A
dataset may also have a **cap** across all its users
(:meth:`Ledger.set_dataset_cap`).

Every charge is a row of the append-only ``budget_charges`` table; what was spent
is their sum. :meth:`Ledger.charge` checks the user's and the dataset's remaining
ε and δ and records the charge in one ``BEGIN IMMEDIATE`` transaction of the
state store (WAL, ``synchronous=FULL``): under any concurrency, in threads or
processes, the total charged never exceeds the allowance, and the charge is on
disk before the caller releases anything, so a crash never refunds. The dp answer
it pays for is stored in the same transaction, under the query's key: asking the
same query again returns the same noisy answer at no cost, also after a restart.

Amounts are stored as integers, ε in units of 10⁻¹² and δ in units of 10⁻¹⁸,
so sums and comparisons are exact (a charge is rounded to the nearest unit).

>>> import tempfile
>>> from argon2 import PasswordHasher
>>> from policy.model import Budget, Policy
>>> with tempfile.TemporaryDirectory() as data_dir:
...     with StateStore(data_dir, hasher=PasswordHasher(memory_cost=8192)) as store:
...         ledger = Ledger(store)
...         for _ in range(3):
...             _ = ledger.charge("alice", "oncology", Cost(0.1), default=Budget(0.3))
...         ledger.balance("alice", "oncology").remaining_epsilon
0.0
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from gateway.errors import BudgetExhaustedError, InputError
from gateway.state import StateStore
from policy.model import Budget, Policy

EPSILON_UNIT = 10**12
DELTA_UNIT = 10**18
ASK_FOR_MORE = "Ask for more with `stockade requests budget`."


def to_units(value: float, unit: int) -> int:
    """``value`` in integer units, rounded to the nearest (``repr`` decides the digits).

    >>> to_units(0.1, EPSILON_UNIT), to_units(0.1 + 0.1 + 0.1, EPSILON_UNIT)
    (100000000000, 300000000000)
    """
    exact = Decimal(repr(float(value))) * unit
    units = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
    if units >= 2**62:  # SQLite integers are 64-bit; sums of amounts must fit too
        raise InputError(f"A privacy amount of {value:g} is too large to account exactly "
                         f"(at most {2**62 // unit:,} per amount).")
    return units


def _eps(units: int) -> float:
    return units / EPSILON_UNIT


def _delta(units: int) -> float:
    return units / DELTA_UNIT


def _fmt(value: float) -> str:
    return f"{value:.12g}"


@dataclass(frozen=True)
class Cost:
    """What a query spends (or an amount of budget)."""

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise InputError(f"A privacy {name} must be a finite number ≥ 0, not {value}.")


@dataclass(frozen=True)
class Balance:
    """A user's budget for one dataset, and the dataset's cap if any."""

    user: str
    dataset: str
    allowance_epsilon: float
    allowance_delta: float
    spent_epsilon: float
    spent_delta: float
    cap_epsilon: float | None = None
    cap_delta: float | None = None
    dataset_spent_epsilon: float = 0.0
    dataset_spent_delta: float = 0.0

    def to_json(self, *, who: bool = True) -> dict[str, Any]:
        """The balance as JSON; ``who=False`` leaves out the user and dataset."""
        out: dict[str, Any] = {"user": self.user, "dataset": self.dataset} if who else {}
        out.update({
            "epsilon_allowance": self.allowance_epsilon,
            "epsilon_spent": self.spent_epsilon,
            "epsilon_remaining": self.remaining_epsilon,
            "delta_allowance": self.allowance_delta,
            "delta_spent": self.spent_delta,
            "delta_remaining": self.remaining_delta,
        })
        return out

    @property
    def remaining_epsilon(self) -> float:
        left = _minus(self.allowance_epsilon, self.spent_epsilon)
        if self.cap_epsilon is not None:
            left = min(left, _minus(self.cap_epsilon, self.dataset_spent_epsilon))
        return max(left, 0.0)

    @property
    def remaining_delta(self) -> float:
        left = _minus(self.allowance_delta, self.spent_delta)
        if self.cap_delta is not None:
            left = min(left, _minus(self.cap_delta, self.dataset_spent_delta))
        return max(left, 0.0)


def _minus(a: float, b: float) -> float:
    """``a - b`` in decimal, so that 1e-4 - 1e-6 is 9.9e-05."""
    return float(Decimal(repr(a)) - Decimal(repr(b)))


@dataclass(frozen=True)
class Charge:
    """The outcome of :meth:`Ledger.charge`.

    ``charged`` is False when an answer for the same query key was already paid
    for; ``answer`` is then that stored answer.
    """

    charged: bool
    balance: Balance
    answer: bytes | None = None
    charge_id: int | None = None


class BudgetExceededError(BudgetExhaustedError):
    """A query needs more ε or δ than is left; the message says how to get more."""

    def __init__(
        self,
        message: str,
        *,
        dataset: str,
        parameter: str,
        left: float,
        needed: float,
        allowance: float,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.parameter = parameter
        self.left = left
        self.needed = needed
        self.allowance = allowance


@dataclass(frozen=True)
class _Units:
    allowance: tuple[int, int]
    spent: tuple[int, int]
    cap: tuple[int, int] | None
    dataset_spent: tuple[int, int]
    stored: bool = True  # whether the allowance has its row yet


class Ledger:
    """Privacy budgets of one domain, in its state store."""

    def __init__(self, store: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    # -- reading

    def _units(self, con: sqlite3.Connection, user: str, dataset: str,
               default: Budget | None) -> _Units:
        row = con.execute(
            "SELECT epsilon, delta FROM budget_allowances WHERE user_name = ? AND dataset = ?",
            (user, dataset),
        ).fetchone()
        stored = row is not None
        if row is None:
            row = _budget_units(default)
        spent = con.execute(
            "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM budget_charges"
            " WHERE user_name = ? AND dataset = ?",
            (user, dataset),
        ).fetchone()
        cap = con.execute(
            "SELECT epsilon, delta FROM budget_dataset_caps WHERE dataset = ?", (dataset,)
        ).fetchone()
        dataset_spent = (0, 0)
        if cap is not None:
            dataset_spent = con.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM budget_charges"
                " WHERE dataset = ?",
                (dataset,),
            ).fetchone()
        return _Units(
            (int(row[0]), int(row[1])),
            (int(spent[0]), int(spent[1])),
            None if cap is None else (int(cap[0]), int(cap[1])),
            (int(dataset_spent[0]), int(dataset_spent[1])),
            stored,
        )

    @staticmethod
    def _balance(user: str, dataset: str, u: _Units) -> Balance:
        return Balance(
            user=user,
            dataset=dataset,
            allowance_epsilon=_eps(u.allowance[0]),
            allowance_delta=_delta(u.allowance[1]),
            spent_epsilon=_eps(u.spent[0]),
            spent_delta=_delta(u.spent[1]),
            cap_epsilon=None if u.cap is None else _eps(u.cap[0]),
            cap_delta=None if u.cap is None else _delta(u.cap[1]),
            dataset_spent_epsilon=_eps(u.dataset_spent[0]),
            dataset_spent_delta=_delta(u.dataset_spent[1]),
        )

    def balance(self, user: str, dataset: str, *, default: Budget | None = None) -> Balance:
        """The user's budget for ``dataset`` (``default`` if never initialised)."""
        with self.store._pool.connection() as con:
            return self._balance(user, dataset, self._units(con, user, dataset, default))

    def answer(self, query_key: str) -> bytes | None:
        """The stored dp answer for ``query_key``, if one was paid for."""
        with self.store._pool.connection() as con:
            row = con.execute(
                "SELECT answer FROM dp_answers WHERE query_key = ?", (query_key,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def charges(self, user: str | None = None, dataset: str | None = None
                ) -> list[tuple[str, str, float, float, float]]:
        """(user, dataset, ε, δ, time) of each charge, oldest first."""
        where, params = [], []
        if user is not None:
            where.append("user_name = ?")
            params.append(user)
        if dataset is not None:
            where.append("dataset = ?")
            params.append(dataset)
        sql = "SELECT user_name, dataset, epsilon, delta, charged_at FROM budget_charges"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store._pool.connection() as con:
            rows = con.execute(sql + " ORDER BY id", params).fetchall()
        return [(u, d, _eps(e), _delta(dl), t) for u, d, e, dl, t in rows]

    # -- the owner's changes

    def set_allowance(self, user: str, dataset: str, epsilon: float, delta: float = 0.0
                      ) -> Balance:
        """Set the user's total allowance for ``dataset`` (what was spent stays spent)."""
        amount = Cost(epsilon, delta)
        with self.store._transaction() as con:
            self._write_allowance(con, user, dataset, to_units(amount.epsilon, EPSILON_UNIT),
                                  to_units(amount.delta, DELTA_UNIT))
            return self._balance(user, dataset, self._units(con, user, dataset, None))

    def add_allowance(self, user: str, dataset: str, epsilon: float, delta: float = 0.0,
                      *, default: Budget | None = None) -> Balance:
        """Add to the user's allowance (initialised from ``default`` first if needed)."""
        amount = Cost(epsilon, delta)
        with self.store._transaction() as con:
            u = self._units(con, user, dataset, default)
            self._write_allowance(con, user, dataset,
                                  u.allowance[0] + to_units(amount.epsilon, EPSILON_UNIT),
                                  u.allowance[1] + to_units(amount.delta, DELTA_UNIT))
            return self._balance(user, dataset, self._units(con, user, dataset, None))

    def _write_allowance(self, con: sqlite3.Connection, user: str, dataset: str,
                         eps: int, delta: int) -> None:
        con.execute(
            "INSERT INTO budget_allowances (user_name, dataset, epsilon, delta, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_name, dataset) DO UPDATE SET"
            " epsilon = excluded.epsilon, delta = excluded.delta,"
            " updated_at = excluded.updated_at",
            (user, dataset, eps, delta, self._clock()),
        )

    def set_dataset_cap(self, dataset: str, epsilon: float | None, delta: float = 0.0,
                        *, policy: Policy | None = None) -> None:
        """Cap what all users together may spend on ``dataset``, as the owner.

        An owner's cap wins over the policy's ``budget_cap`` and stays (across
        restarts and policy changes) until removed with ``epsilon=None``; then the
        ``policy``'s own cap for the dataset, if it declares one, applies again.
        """
        with self.store._transaction() as con:
            if epsilon is None:
                con.execute("DELETE FROM budget_dataset_caps WHERE dataset = ?", (dataset,))
                declared = policy.datasets[dataset].budget_cap if policy is not None else None
                if declared is not None:
                    self._write_cap(con, dataset, *_budget_units(declared), set_by="policy")
                return
            amount = Cost(epsilon, delta)
            self._write_cap(con, dataset, to_units(amount.epsilon, EPSILON_UNIT),
                            to_units(amount.delta, DELTA_UNIT), set_by="owner")

    def _write_cap(self, con: sqlite3.Connection, dataset: str, eps: int, delta: int, *,
                   set_by: str) -> None:
        con.execute(
            "INSERT INTO budget_dataset_caps (dataset, epsilon, delta, updated_at, set_by)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset) DO UPDATE SET"
            " epsilon = excluded.epsilon, delta = excluded.delta,"
            " updated_at = excluded.updated_at, set_by = excluded.set_by"
            " WHERE epsilon != excluded.epsilon OR delta != excluded.delta"
            " OR set_by != excluded.set_by",
            (dataset, eps, delta, self._clock(), set_by),
        )

    def apply_policy_caps(self, policy: Policy) -> None:
        """Make the policy-set dataset caps exactly those ``policy`` declares (``budget_cap``).

        Called when a domain starts and when its policy is replaced: each declared
        cap is set, and a dataset that declares none has its policy cap removed.
        Caps set by an owner (:meth:`set_dataset_cap`) are left as they are. Charges
        are never touched, so a cap lowered below what was already spent leaves
        nothing to spend.
        """
        caps = {name: d.budget_cap for name, d in policy.datasets.items()
                if d.budget_cap is not None}
        with self.store._transaction() as con:
            stored = dict(con.execute("SELECT dataset, set_by FROM budget_dataset_caps"))
            for dataset in sorted(set(stored) - set(caps)):
                if stored[dataset] == "policy":
                    con.execute("DELETE FROM budget_dataset_caps WHERE dataset = ?", (dataset,))
            for dataset, cap in sorted(caps.items()):
                if stored.get(dataset) != "owner":
                    self._write_cap(con, dataset, *_budget_units(cap), set_by="policy")

    def dataset_caps(self) -> dict[str, tuple[float, float, float, float]]:
        """Dataset → (cap ε, cap δ, ε spent, δ spent) by all users, for each capped dataset."""
        with self.store._pool.connection() as con:
            rows = con.execute(
                "SELECT c.dataset, c.epsilon, c.delta,"
                " (SELECT COALESCE(SUM(epsilon), 0) FROM budget_charges WHERE dataset = c.dataset),"
                " (SELECT COALESCE(SUM(delta), 0) FROM budget_charges WHERE dataset = c.dataset)"
                " FROM budget_dataset_caps c ORDER BY c.dataset"
            ).fetchall()
        return {d: (_eps(e), _delta(dl), _eps(se), _delta(sd)) for d, e, dl, se, sd in rows}

    def allowances(self) -> list[tuple[str, str]]:
        """Every (user, dataset) whose allowance is stored (set, or used once), sorted.

        A user's first charge stores the allowance, so every charge has one.
        """
        with self.store._pool.connection() as con:
            rows = con.execute(
                "SELECT user_name, dataset FROM budget_allowances"
                " ORDER BY user_name COLLATE NOCASE, dataset"
            ).fetchall()
        return [(str(u), str(d)) for u, d in rows]

    # -- charging

    def check(self, user: str, dataset: str, cost: Cost, *, default: Budget | None) -> Balance:
        """Raise :class:`BudgetExceededError` if ``cost`` does not fit; charges nothing.

        Advisory (to fail before running a query): only :meth:`charge` decides.
        """
        with self.store._pool.connection() as con:
            u = self._units(con, user, dataset, default)
        _check(dataset, u, _cost_units(cost))
        return self._balance(user, dataset, u)

    def charge(
        self,
        user: str,
        dataset: str,
        cost: Cost,
        *,
        default: Budget | None,
        query_key: str | None = None,
        answer: bytes | None = None,
    ) -> Charge:
        """Check and record ``cost`` atomically; store ``answer`` under ``query_key``.

        If an answer for ``query_key`` is already stored, nothing is charged and
        that answer is returned. Raises :class:`BudgetExceededError` when the
        user's allowance or the dataset's cap does not cover ``cost``.
        """
        need = _cost_units(cost)
        with self.store._transaction() as con:
            if query_key is not None:
                row = con.execute(
                    "SELECT answer FROM dp_answers WHERE query_key = ?", (query_key,)
                ).fetchone()
                if row is not None:
                    u = self._units(con, user, dataset, default)
                    return Charge(False, self._balance(user, dataset, u), bytes(row[0]))
            u = self._units(con, user, dataset, default)
            _check(dataset, u, need)
            if not u.stored:  # first use: the allowance starts from the role's budget
                self._write_allowance(con, user, dataset, *u.allowance)
            now = self._clock()
            cur = con.execute(
                "INSERT INTO budget_charges (user_name, dataset, epsilon, delta, query_key,"
                " charged_at) VALUES (?, ?, ?, ?, ?, ?)",
                (user, dataset, need[0], need[1], query_key, now),
            )
            charge_id = cur.lastrowid
            if query_key is not None and answer is not None:
                con.execute(
                    "INSERT INTO dp_answers (query_key, user_name, dataset, charge_id, answer,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (query_key, user, dataset, charge_id, sqlite3.Binary(answer), now),
                )
            after = _Units(u.allowance, (u.spent[0] + need[0], u.spent[1] + need[1]), u.cap,
                           (u.dataset_spent[0] + need[0], u.dataset_spent[1] + need[1]))
        return Charge(True, self._balance(user, dataset, after), answer, charge_id)


    def store_answer(self, query_key: str, user: str, dataset: str, charge_id: int | None,
                     answer: bytes) -> None:
        """Keep the answer of a charged query, so that asking again costs nothing.

        The charge was committed before the query read any data
        (:meth:`charge` without ``answer``); the first answer stored for a key wins.
        The answer is committed without waiting for the disk (it reaches the disk
        with the next charge's synced commit): a crash of the machine just after
        may lose it, and then the same query is charged again, never refunded.
        """
        if charge_id is None:
            raise ValueError("an answer is stored for the charge that paid for it")
        with self.store._transaction(synced=False) as con:
            con.execute(
                "INSERT OR IGNORE INTO dp_answers (query_key, user_name, dataset, charge_id,"
                " answer, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (query_key, user, dataset, charge_id, sqlite3.Binary(answer), self._clock()),
            )


def _budget_units(budget: Budget | None) -> tuple[int, int]:
    if budget is None:
        return (0, 0)
    return (to_units(budget.epsilon, EPSILON_UNIT), to_units(budget.delta, DELTA_UNIT))


def _cost_units(cost: Cost) -> tuple[int, int]:
    return (to_units(cost.epsilon, EPSILON_UNIT), to_units(cost.delta, DELTA_UNIT))


def _check(dataset: str, u: _Units, need: tuple[int, int]) -> None:
    limits = [("user", u.allowance, u.spent)]
    if u.cap is not None:
        limits.append(("dataset", u.cap, u.dataset_spent))
    for whose, allowance, spent in limits:
        for i, (symbol, scale) in enumerate((("ε", EPSILON_UNIT), ("δ", DELTA_UNIT))):
            left = max(allowance[i] - spent[i], 0)
            if need[i] <= left:
                continue
            if whose == "user":
                head = f"Budget for dataset '{dataset}' exhausted"
                if allowance[i] == 0 and spent[i] == 0:
                    head = f"You have no {symbol} budget for dataset '{dataset}'"
            else:
                head = f"The budget of dataset '{dataset}' shared by all its users is exhausted"
            raise BudgetExceededError(
                f"{head}: {_fmt(left / scale)} of {_fmt(allowance[i] / scale)} {symbol} left, "
                f"this query needs {_fmt(need[i] / scale)}. {ASK_FOR_MORE}",
                dataset=dataset,
                parameter=symbol,
                left=left / scale,
                needed=need[i] / scale,
                allowance=allowance[i] / scale,
            )
