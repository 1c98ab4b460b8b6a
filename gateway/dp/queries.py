"""Differentially private queries: plan, price, charge, then read, then release.

:class:`PrivateQueries` is what the domain calls for a table in ``dp`` mode::

    dp = PrivateQueries(engine, Ledger(store))
    plan = dp.plan(sql, policy=policy, principal=principal, schemas=schemas,
                   epsilon=None)             # None: the grant's epsilon_per_query
    dp.cost(plan)                            # Cost(epsilon, delta), charges nothing
    dp.result_schema(plan)                   # the answer's Arrow schema, reads nothing
    table = dp.execute(plan, timeout_s=60)   # pa.Table with the dp metadata

The order of :meth:`PrivateQueries.execute` is what makes the observable outcome
depend on the data only through noisy values (security invariant 6):

1. **plan and type-check, reading no data**: the query is compiled
   (:mod:`gateway.dp.translate`), every noisy measurement gets its mechanism and
   its cost, and DuckDB binds the whole aggregate query over the relation without
   running it; the release (outputs, HAVING, ORDER BY) is evaluated once over no
   rows. Anything refused is refused here, by a message that depends on the SQL
   and the schema only;
2. **charge** the full cost in one ledger transaction, durably (an identical query
   answered before is answered again from the stored answer, at no cost);
3. **read**: the aggregate query runs on the engine. If it fails now (out of
   memory, the time limit), the answer is one fixed message and the charge stays:
   nothing after the charge refunds it. The detail goes to the audit log;
4. **release** (:mod:`gateway.dp.release`): noise, censoring, rounding, order by
   group key, and post-processing that cannot fail; the answer is stored under
   the query's key.

The cost is SmartNoise's odometer over the query's mechanisms (one per noisy
count or sum, including the key count that censors rare groups) at the query's
ε and δ; each mechanism is SmartNoise's Laplace mechanism, whose noise scale is
OpenDP's (:mod:`gateway.dp.mechanisms`). When the odometer's bound is plain
composition (Σε, the usual case for a few mechanisms), δ is Σδ of the
mechanisms, without the slack SmartNoise adds for advanced composition.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from snsql.sql.odometer import OdometerHeterogeneous
from snsql.sql.privacy import Privacy

from gateway.dp.aggregate import aggregate_sql
from gateway.dp.mechanisms import CachedLaplace
from gateway.dp.release import META, release
from gateway.dp.translate import KEYCOUNT, UNIT, DpQuery, snapshot_relation, translate
from gateway.engine import Engine
from gateway.errors import InputError, QueryFailedError, StockadeError
from gateway.ledger import Balance, Cost, Ledger
from policy.access import catalog_for, dataset_grant
from policy.model import Policy
from policy.principal import Principal
from policy.rules.check_costs import check_costs
from policy.rules.check_functions import check_functions
from policy.rules.check_types import check_types
from policy.rules.parse import parse
from policy.rules.qualify_columns import qualify_columns
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import Schemas

log = logging.getLogger("stockade.dp")

#: δ per query for grouped queries (censoring rare groups needs δ > 0) when the
#: caller does not choose one: at most this, and at most 1/DELTA_SHARE of the
#: grant's δ budget, so that a δ budget pays for many grouped queries, not one.
DEFAULT_DELTA = 1e-6
DELTA_SHARE = 100

#: The one message of a dp query that failed after it was charged (see the module doc).
FAILED_AFTER_CHARGE = (
    "This dp query could not be completed after its cost was charged (every dp query is "
    "charged before it reads data, and a failure is not refunded). The most likely cause "
    "is the time or memory limit of your role: narrow the WHERE clause or group by fewer "
    "keys, and check the cost first with stockade.cost."
)

_RULES = (validate_statement, resolve_tables, check_functions, check_types, check_costs,
          qualify_columns)


class DpFailedError(QueryFailedError):
    """A dp query that failed after it was charged: its message is always the same."""

    def __init__(self, cost: Cost, detail: str) -> None:
        super().__init__(FAILED_AFTER_CHARGE)
        self.epsilon = cost.epsilon  # what was charged (for the audit record)
        self.delta = cost.delta
        self.detail = detail  # what went wrong: for the audit log only, never the analyst


@dataclass(frozen=True)
class DpPlan:
    """A checked ``dp`` query for one principal at one ε and δ.

    ``unclamped`` asks for the noisy parts as they are (counts neither rounded nor
    made non-negative, variances not made non-negative, a ratio NULL only when
    its noisy denominator is 0, sums of squares taken around the bounds'
    midpoint): what a network node merging several domains needs, so that it
    clamps once, after the merge (the call header
    :data:`gateway.dialects.DP_PARTS_HEADER`). It costs the same ε and δ.
    """

    query: DpQuery
    user: str
    epsilon: float
    delta: float
    unclamped: bool = False

    @property
    def dataset(self) -> str:
        return self.query.access.dataset

    @property
    def table(self) -> str:
        return self.query.access.table

    @property
    def key(self) -> str:
        """The result-cache key: the normalised query, who asks, ε and δ, the policy."""
        a = self.query.access
        parts = [self.user.lower(), a.dataset, a.table, self.query.normalized,
                 self.query.relation_sql, self.query.aggregate_sql, repr(self.epsilon),
                 repr(self.delta), a.privacy_unit, a.max_rows_per_unit,
                 [list(b) for b in self.query.bounds], self.unclamped,
                 [o.sql for o in self.query.outputs], self.query.having,
                 list(self.query.order), self.query.limit]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def odometer_cost(steps: Sequence[tuple[float, float]], delta: float) -> Cost:
    """SmartNoise's odometer over mechanism (ε, δ) pairs (see the module doc).

    >>> odometer_cost([(0.5, 0.0), (0.5, 1e-6)], 1e-6)
    Cost(epsilon=1.0, delta=1e-06)
    """
    if not steps:
        return Cost(0.0, 0.0)
    odometer = OdometerHeterogeneous(Privacy(epsilon=1.0, delta=delta))
    for e, d in steps:
        odometer.spend(Privacy(epsilon=e, delta=d))
    eps, spent_delta = (float(v) for v in odometer.spent)
    basic = math.fsum(e for e, _ in steps)
    if eps >= basic * (1 - 1e-12):
        return Cost(basic, min(1.0, math.fsum(d for _, d in steps)))
    return Cost(eps, spent_delta)


class _Priced:
    """A plan's mechanisms, cost, censoring threshold and checked schemas (no data read)."""

    __slots__ = ("mechanisms", "cost", "threshold", "exact_schema", "answer_schema",
                 "parts_schema")

    def __init__(self, mechanisms: dict[str, Any], cost: Cost, threshold: float | None
                 ) -> None:
        self.mechanisms = mechanisms
        self.cost = cost
        self.threshold = threshold
        self.exact_schema: pa.Schema | None = None
        self.answer_schema: pa.Schema | None = None
        self.parts_schema: pa.Schema | None = None  # the answer's, as unclamped parts


class PrivateQueries:
    """Plans, prices and runs ``dp`` queries on one engine, charging one ledger."""

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger
        self._plans: OrderedDict[tuple[Any, ...], tuple[Policy, DpQuery]] = OrderedDict()
        self._priced: OrderedDict[tuple[Any, ...], _Priced] = OrderedDict()
        self._release_schemas: OrderedDict[tuple[Any, ...], pa.Schema] = OrderedDict()
        self._lock = threading.Lock()

    # -- planning

    def plan(
        self,
        sql: str,
        *,
        policy: Policy,
        principal: Principal,
        schemas: Schemas,
        epsilon: float | None = None,
        delta: float | None = None,
        dialect: str = "duckdb",
        unclamped: bool = False,
    ) -> DpPlan:
        """Check ``sql`` for ``dp`` mode and fix its ε and δ (charges nothing).

        The checked query is remembered per (policy, role, user attributes, SQL,
        dialect, parts or not): the policy steps and the split read the principal's role
        (its grants and functions) and attributes (row filters), never the user's name.
        Parts (``unclamped``) take sums of squares around the bounds' midpoint
        (:class:`gateway.dp.translate.Measure`).
        """
        key = (id(policy), principal.role,
               tuple(sorted((k, type(v).__name__, v) for k, v in principal.attributes.items())),
               sql, dialect, unclamped)
        with self._lock:
            found = self._plans.get(key)
            if found is not None:
                self._plans.move_to_end(key)
        if found is not None and found[0] is policy:
            query = found[1]
        else:
            query = self._query(sql, policy=policy, principal=principal, schemas=schemas,
                                dialect=dialect, centred=unclamped)
            with self._lock:
                self._plans[key] = (policy, query)
                while len(self._plans) > 4096:
                    self._plans.popitem(last=False)
        grant = dataset_grant(policy, principal, query.access.dataset)
        bounds = grant.epsilon_bounds if grant is not None else (None, None)
        return _resolve(query, principal.user, epsilon, delta, bounds, unclamped=unclamped)

    def _query(self, sql: str, *, policy: Policy, principal: Principal, schemas: Schemas,
               dialect: str, centred: bool = False) -> DpQuery:
        expression = parse(sql, dialect=dialect)
        catalog = catalog_for(policy, principal)
        context: dict[str, Any] = {"policy": policy, "principal": principal,
                                   "schemas": schemas, "catalog": catalog, "max_rows": None}
        for rule in _RULES:
            expression = rule(expression, **context)
        return translate(expression, principal=principal, catalog=catalog, schemas=schemas,
                         centred=centred)

    def _priced_plan(self, plan: DpPlan) -> _Priced:
        """Mechanisms and cost of ``plan`` (memoised per query, ε and δ)."""
        q = plan.query
        # The answer's shape is in the key too: the entry keeps the checked answer schema,
        # whose names are the analyst's (``count(*) AS n`` and ``AS m`` measure the same).
        key = (q.aggregate_sql, q.relation_sql, repr(plan.epsilon), repr(plan.delta),
               q.access.max_rows_per_unit, q.access.privacy_unit is not None,
               q.outputs, q.having, q.order, q.limit)
        with self._lock:
            found = self._priced.get(key)
            if found is not None:
                self._priced.move_to_end(key)
                return found
        contributions = (q.access.max_rows_per_unit or 1) if q.access.privacy_unit else 1
        mechanisms: dict[str, Any] = {}
        steps = []
        threshold = None
        for m in q.measures:
            if m.sensitivity == math.inf:
                raise InputError(
                    f"A column summed in this query has no bounds in the policy of table "
                    f"'{q.access.qualified_name}'; SUM, AVG, VAR and STDDEV need the "
                    "column's lower and upper bounds (ask the data owner to set them)")
            delta = plan.delta if m.name == KEYCOUNT else 0.0
            try:
                mech = CachedLaplace(plan.epsilon, delta=delta,
                                     sensitivity=m.sensitivity or 1.0,
                                     max_contrib=contributions)
            except ValueError as exc:
                raise InputError(
                    f"dp mode cannot answer this query on table '{q.access.qualified_name}': "
                    f"{str(exc).splitlines()[0]}") from None
            if m.name == KEYCOUNT:
                mech.delta = delta  # SmartNoise's Laplace keeps δ only for its threshold
                threshold = float(mech.threshold)
            mechanisms[m.name] = mech
            steps.append((plan.epsilon, delta))
        priced = _Priced(mechanisms, odometer_cost(steps, plan.delta), threshold)
        with self._lock:
            self._priced[key] = priced
            while len(self._priced) > 1024:
                self._priced.popitem(last=False)
        return priced

    def cost(self, plan: DpPlan) -> Cost:
        """What ``plan`` would be charged (SmartNoise's odometer); charges nothing."""
        return self._priced_plan(plan).cost

    @contextmanager
    def _reading(self, plan: DpPlan) -> Iterator[str]:
        """The SQL that reads ``plan``'s exact measurements, valid for the ``with`` block.

        Over the table's bounded snapshot when the engine keeps one for the table's
        unit and bound (:mod:`gateway.snapshots`; the block holds it), else bounding
        rows per unit in the query itself.
        """
        q = plan.query
        access = q.access
        with self.engine.bounded_source(access.dataset, access.table) as snapshot:
            relation, sample = q.relation_sql, True
            if snapshot is not None and access.privacy_unit is not None \
                    and snapshot.unit.lower() == access.privacy_unit.lower() \
                    and snapshot.max_rows <= (access.max_rows_per_unit or 1):
                relation = snapshot_relation(q, snapshot.sql)
                sample = False
            yield aggregate_sql(q, relation=relation, sample=sample)

    def aggregate_sql(self, plan: DpPlan) -> str:
        """The SQL that reads the exact measurements of ``plan`` (what runs on the engine)."""
        with self._reading(plan) as sql:
            return sql

    def _checked(self, plan: DpPlan) -> _Priced:
        """Priced, and type-checked against the engine without reading data."""
        priced = self._priced_plan(plan)
        if priced.exact_schema is None:
            try:
                priced.exact_schema = self.engine.result_schema(self.aggregate_sql(plan))
            except StockadeError as exc:
                raise InputError(
                    f"dp mode cannot answer this query on table "
                    f"'{plan.query.access.qualified_name}': {exc.message}") from None
        if (priced.parts_schema if plan.unclamped else priced.answer_schema) is None:
            schema = self._release_schema(plan, priced)
            if plan.unclamped:
                priced.parts_schema = schema
            else:
                priced.answer_schema = schema
        return priced

    def _release_schema(self, plan: DpPlan, priced: _Priced) -> pa.Schema:
        """The answer's schema: the release run once over no rows (reads no data).

        It depends on the query's shape alone (outputs, HAVING, ORDER BY, LIMIT,
        keys, measurements, their scales, ε, δ) and on the types of the exact
        measurements, never on the WHERE clause: queries that differ only there
        share it (the aggregate query itself is still bound for each of them).
        """
        assert priced.exact_schema is not None
        key = _release_key(plan, priced)
        with self._lock:
            found = self._release_schemas.get(key)
            if found is not None:
                self._release_schemas.move_to_end(key)
                return found
        answer = release(plan.query, priced.exact_schema.empty_table(), priced.mechanisms,
                         threshold=priced.threshold, epsilon=plan.epsilon,
                         delta=plan.delta, unclamped=plan.unclamped)
        with self._lock:
            self._release_schemas[key] = answer.schema
            while len(self._release_schemas) > 1024:
                self._release_schemas.popitem(last=False)
        return answer.schema

    def relation_schema(self, plan: DpPlan) -> pa.Schema:
        """The Arrow schema of the policy relation of ``plan`` (reads no data)."""
        return self.engine.result_schema(plan.query.relation_sql)

    def result_schema(self, plan: DpPlan) -> pa.Schema:
        """The Arrow schema of ``plan``'s answer, without reading data or charging.

        Names, types and the noise metadata of each column are those of the
        answer; the spend and remaining-budget keys are only known after the charge.
        """
        priced = self._checked(plan)
        schema = priced.parts_schema if plan.unclamped else priced.answer_schema
        assert schema is not None
        return schema

    # -- running

    def execute(self, plan: DpPlan, *, timeout_s: float | None = None) -> pa.Table:
        """The noisy answer to ``plan``, charged to the user's budget (see the module doc)."""
        access = plan.query.access
        key = plan.key
        stored = self.ledger.answer(key)
        if stored is not None:
            balance = self.ledger.balance(plan.user, access.dataset, default=access.budget)
            return _with_spend(_from_ipc(stored), plan, Cost(0.0, 0.0), balance, cached=True)
        priced = self._checked(plan)  # step 1: refused here, before anything is charged
        charge = self.ledger.charge(plan.user, access.dataset, priced.cost,
                                    default=access.budget, query_key=key)
        if not charge.charged:  # the same query was answered meanwhile
            assert charge.answer is not None
            return _with_spend(_from_ipc(charge.answer), plan, Cost(0.0, 0.0), charge.balance,
                               cached=True)
        try:
            with self._reading(plan) as sql:
                exact = self.engine.execute(sql, timeout_s=timeout_s).read_all()
            table = release(plan.query, exact, priced.mechanisms, threshold=priced.threshold,
                            epsilon=plan.epsilon, delta=plan.delta, unclamped=plan.unclamped)
        except Exception as exc:  # after the charge: one fixed message, nothing refunded
            log.error("dp query of %s on %s failed after its charge: %s: %s", plan.user,
                      access.qualified_name, type(exc).__name__, exc)
            detail = getattr(exc, "detail", None) or str(exc)
            raise DpFailedError(priced.cost, f"{type(exc).__name__}: {detail}") from None
        self.ledger.store_answer(key, plan.user, access.dataset, charge.charge_id,
                                 _to_ipc(table))
        return _with_spend(table, plan, priced.cost, charge.balance, cached=False)


def _release_key(plan: DpPlan, priced: _Priced) -> tuple[Any, ...]:
    """Everything the release over no rows reads (see ``PrivateQueries._release_schema``)."""
    q = plan.query
    assert priced.exact_schema is not None
    return (priced.exact_schema.serialize().to_pybytes(), q.keys, q.censored,
            tuple((m.name, m.kind, repr(float(priced.mechanisms[m.name].scale)))
                  for m in q.measures),
            q.outputs, q.having, q.order, q.limit, repr(priced.threshold),
            repr(plan.epsilon), repr(plan.delta), plan.unclamped)



def _resolve(query: DpQuery, user: str, epsilon: float | None, delta: float | None,
             bounds: tuple[float | None, float | None] = (None, None), *,
             unclamped: bool = False) -> DpPlan:
    """The plan of ``query`` for ``user`` at the chosen (or the grant's) ε and δ.

    A chosen ε must lie within the grant's ``bounds``
    (``min_epsilon_per_query``, ``max_epsilon_per_query``).
    """
    access = query.access
    if epsilon is None:
        epsilon = access.epsilon_per_query
        if epsilon is None:
            raise InputError(
                f"The policy gives no epsilon_per_query for dataset '{access.dataset}'; "
                "choose the ε of this query"
            )
    if not (isinstance(epsilon, int | float) and 0 < epsilon < math.inf):
        raise InputError(f"ε must be a positive number, not {epsilon!r}")
    check_epsilon_bounds(epsilon, bounds)
    if delta is None:
        delta = 0.0
        if query.censored:
            delta = DEFAULT_DELTA
            budget = access.budget
            if budget is not None and budget.delta > 0:
                delta = min(delta, budget.delta / DELTA_SHARE)
    if not (isinstance(delta, int | float) and 0 <= delta < 1):
        raise InputError(f"δ must be a number in [0, 1), not {delta!r}")
    if query.censored and delta == 0:
        raise InputError(
            "A GROUP BY query in dp mode needs δ > 0 to hide rare groups; choose a δ "
            "(e.g. 1e-6) within your δ budget, or remove GROUP BY (or ask the data owner "
            "to declare the grouping column's public_keys)"
        )
    return DpPlan(query, user, float(epsilon), float(delta), unclamped)


def check_epsilon_bounds(epsilon: float, bounds: tuple[float | None, float | None]) -> None:
    """Refuse a per-query ε outside the grant's ``(minimum, maximum)``.

    >>> check_epsilon_bounds(0.5, (0.01, 1.0))
    >>> check_epsilon_bounds(5, (None, 1.0))
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: ε 5 is above this dataset's maximum of 1 per query; choose ε ≤ 1
    >>> try:
    ...     check_epsilon_bounds(0.001, (0.01, None))
    ... except InputError as err:
    ...     print(err)
    ε 0.001 is below this dataset's minimum of 0.01 per query; choose ε ≥ 0.01
    """
    low, high = bounds
    if high is not None and epsilon > high:
        raise InputError(f"ε {_fmt(epsilon)} is above this dataset's maximum of {_fmt(high)} "
                         f"per query; choose ε ≤ {_fmt(high)}")
    if low is not None and epsilon < low:
        raise InputError(f"ε {_fmt(epsilon)} is below this dataset's minimum of {_fmt(low)} "
                         f"per query; choose ε ≥ {_fmt(low)}")


def _fmt(value: float) -> str:
    return f"{value:.12g}"


def _with_spend(table: pa.Table, plan: DpPlan, spent: Cost, balance: Balance, *,
                cached: bool) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.update({
        (META + "epsilon_spent").encode(): repr(spent.epsilon).encode(),
        (META + "delta_spent").encode(): repr(spent.delta).encode(),
        (META + "epsilon_remaining").encode(): repr(balance.remaining_epsilon).encode(),
        (META + "delta_remaining").encode(): repr(balance.remaining_delta).encode(),
        (META + "cached").encode(): b"true" if cached else b"false",
    })
    return table.replace_schema_metadata(meta)


def _to_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


__all__ = ["DEFAULT_DELTA", "META", "DpFailedError", "DpPlan", "PrivateQueries", "UNIT",
           "odometer_cost"]
