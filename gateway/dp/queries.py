"""Differentially private queries: plan, preview the cost, run, charge, answer.

:class:`PrivateQueries` is what the domain calls for a table in ``dp`` mode::

    dp = PrivateQueries(engine, Ledger(store))
    plan = dp.plan(sql, policy=policy, principal=principal, schemas=schemas,
                   epsilon=None)             # None: the grant's epsilon_per_query
    dp.cost(plan)                            # Cost(epsilon, delta), charges nothing
    table = dp.execute(plan, timeout_s=60)   # pa.Table with the dp metadata

``execute`` answers a query seen before (same normalised query, user, ε and δ)
with the stored noisy answer at no cost. Otherwise it checks the budget
(advisory, to fail before the scan), runs SmartNoise over DuckDB, and only then,
in one transaction of the ledger, checks and charges the budget and stores the
answer (:meth:`gateway.ledger.Ledger.charge`); the answer leaves the gateway
after that transaction commits.

The cost is SmartNoise's odometer over the query's mechanisms (one per noisy
SUM/COUNT, including the key count that censors rare groups) at the query's ε
and δ. When the odometer's bound is plain composition (Σε, the usual case for a
few mechanisms), δ is Σδ of the mechanisms, without the slack SmartNoise adds
for its advanced-composition bound.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from snsql._ast.ast import Column as SnColumn
from snsql.sql.odometer import OdometerHeterogeneous
from snsql.sql.privacy import Privacy
from snsql.sql.private_reader import PrivateReader

from gateway.dp.bounds import UnitBounds
from gateway.dp.mechanisms import ci95_half_width, mechanism_name, mechanisms
from gateway.dp.metadata import dp_metadata
from gateway.dp.reader import DuckDBReader
from gateway.dp.translate import UNIT, DpQuery, translate
from gateway.engine import Engine
from gateway.errors import InputError, StockadeError
from gateway.ledger import Balance, Cost, Ledger
from policy.access import catalog_for
from policy.model import Policy
from policy.principal import Principal
from policy.rules.check_functions import check_functions
from policy.rules.parse import parse
from policy.rules.qualify_columns import qualify_columns
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import Schemas

#: δ per query for grouped queries (censoring rare groups needs δ > 0) when the
#: caller does not choose one.
DEFAULT_DELTA = 1e-6

#: Keys of the Arrow metadata of a dp answer.
META = "stockade.dp."

_RULES = (validate_statement, resolve_tables, check_functions, qualify_columns)
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(),
                "boolean": pa.bool_(), "datetime": pa.timestamp("us")}


@dataclass(frozen=True)
class DpPlan:
    """A checked ``dp`` query for one principal at one ε and δ."""

    query: DpQuery
    user: str
    epsilon: float
    delta: float

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
                 self.query.relation_sql, self.query.smartnoise_sql, repr(self.epsilon),
                 repr(self.delta), a.privacy_unit, a.max_rows_per_unit,
                 [list(b) for b in self.query.bounds]]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


_rewrites: OrderedDict[tuple[Any, ...], tuple[Any, Any, Any]] = OrderedDict()
_rewrites_lock = threading.Lock()


class _Private(PrivateReader):  # type: ignore[misc]
    """SmartNoise's private reader, with its parse and rewrite memoised.

    SmartNoise's parse and rewrite of a query depend only on the query text,
    the metadata and the privacy parameters (``key``); the rewritten trees are
    only read afterwards (serialised to SQL, evaluated on rows), and their
    mechanisms hold nothing but their parameters and scale. ``last`` is the
    rewrite this reader executed.
    """

    key: tuple[Any, ...] = ()
    last: tuple[Any, Any] | None = None

    def parse_query_string(self, query_string: str) -> Any:
        with _rewrites_lock:
            found = _rewrites.get(self.key)
        if found is not None:
            return found[0]
        return super().parse_query_string(query_string)

    def _rewrite_ast(self, query: Any) -> tuple[Any, Any]:
        with _rewrites_lock:
            found = _rewrites.get(self.key)
            if found is not None:
                _rewrites.move_to_end(self.key)
        if found is not None and found[0] is query:
            self._options.max_contrib = query.max_ids
            self._refresh_options()
            self.last = (found[1], found[2])
            return self.last
        rewritten = super()._rewrite_ast(query)
        with _rewrites_lock:
            _rewrites[self.key] = (query, *rewritten)
            while len(_rewrites) > 1024:
                _rewrites.popitem(last=False)
        self.last = rewritten
        return rewritten  # type: ignore[no-any-return]


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


class PrivateQueries:
    """Plans, prices and runs ``dp`` queries on one engine, charging one ledger."""

    def __init__(self, engine: Engine, ledger: Ledger, *,
                 bounds: UnitBounds | None = None) -> None:
        self.engine = engine
        self.ledger = ledger
        self.bounds = bounds or UnitBounds(engine)
        self._schemas: OrderedDict[str, pa.Schema] = OrderedDict()
        self._plans: OrderedDict[tuple[Any, ...], tuple[Policy, DpPlan]] = OrderedDict()
        self._lock = threading.Lock()
        self.last_sql: list[str] = []  # the DuckDB SQL of the last execution (for tests)

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
    ) -> DpPlan:
        """Check ``sql`` for ``dp`` mode and fix its ε and δ (charges nothing).

        Plans are remembered per (policy, principal, SQL, ε, δ).
        """
        key = (id(policy), principal.user, principal.role,
               tuple(sorted(principal.attributes.items())), sql, repr(epsilon), repr(delta),
               dialect)
        with self._lock:
            found = self._plans.get(key)
        if found is not None and found[0] is policy:
            return found[1]
        plan = self._plan(sql, policy=policy, principal=principal, schemas=schemas,
                          epsilon=epsilon, delta=delta, dialect=dialect)
        with self._lock:
            self._plans[key] = (policy, plan)
            while len(self._plans) > 4096:
                self._plans.popitem(last=False)
        return plan

    def _plan(
        self,
        sql: str,
        *,
        policy: Policy,
        principal: Principal,
        schemas: Schemas,
        epsilon: float | None,
        delta: float | None,
        dialect: str,
    ) -> DpPlan:
        expression = parse(sql, dialect=dialect)
        catalog = catalog_for(policy, principal)
        context: dict[str, Any] = {"policy": policy, "principal": principal,
                                   "schemas": schemas, "catalog": catalog, "max_rows": None}
        for rule in _RULES:
            expression = rule(expression, **context)
        query = translate(expression, principal=principal, catalog=catalog, schemas=schemas)
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
        if delta is None:
            delta = DEFAULT_DELTA if query.grouped else 0.0
        if not (isinstance(delta, int | float) and 0 <= delta < 1):
            raise InputError(f"δ must be a number in [0, 1), not {delta!r}")
        if query.grouped and delta == 0:
            raise InputError(
                "A GROUP BY query in dp mode needs δ > 0 to hide rare groups; choose a δ "
                "(e.g. 1e-6) within your δ budget, or remove GROUP BY"
            )
        return DpPlan(query, principal.user, float(epsilon), float(delta))

    def relation_schema(self, plan: DpPlan) -> pa.Schema:
        sql = plan.query.relation_sql
        with self._lock:
            found = self._schemas.get(sql)
        if found is None:
            found = self.engine.result_schema(sql)
            with self._lock:
                self._schemas[sql] = found
                while len(self._schemas) > 1024:
                    self._schemas.popitem(last=False)
        return found

    def _reader(self, plan: DpPlan, *, rows_bounded: bool, timeout_s: float | None
                ) -> tuple[_Private, DuckDBReader]:
        q = plan.query
        metadata = dp_metadata(
            self.relation_schema(plan),
            bounds={v: (lo, hi) for v, lo, hi in q.bounds},
            has_unit=q.access.privacy_unit is not None,
            max_rows_per_unit=q.access.max_rows_per_unit,
            rows_bounded=rows_bounded,
            grouped=q.grouped,
        )

        def run(sql: str) -> tuple[Sequence[str], list[tuple[Any, ...]]]:
            result = self.engine.execute(sql, timeout_s=timeout_s).read_all()
            columns = [c.to_pylist() for c in result.columns]
            return result.column_names, list(zip(*columns, strict=True))

        reader = DuckDBReader(run, q.relation_sql)
        privacy = Privacy(epsilon=plan.epsilon, delta=plan.delta, mechanisms=mechanisms())
        try:
            private = _Private(reader, metadata, privacy=privacy)
        except ValueError as exc:
            raise _smartnoise_error(exc, plan) from None
        private.key = self._key(plan, rows_bounded)
        return private, reader

    def _key(self, plan: DpPlan, rows_bounded: bool) -> tuple[Any, ...]:
        """Everything SmartNoise's parse, rewrite and mechanisms depend on."""
        q = plan.query
        return (q.smartnoise_sql, self.relation_schema(plan).to_string(), q.bounds,
                q.access.privacy_unit is not None, q.access.max_rows_per_unit, rows_bounded,
                q.grouped, repr(plan.epsilon), repr(plan.delta))

    def _mechanisms(self, private: _Private) -> list[Any]:
        assert private.last is not None
        subquery = private.last[0]
        return [s.mechanism for s in subquery._select_symbols if s.mechanism is not None]

    def cost(self, plan: DpPlan) -> Cost:
        """What ``plan`` would be charged (SmartNoise's odometer); charges nothing."""
        private, _ = self._reader(plan, rows_bounded=False, timeout_s=None)
        try:
            private._rewrite_ast(private.parse_query_string(plan.query.smartnoise_sql))
        except ValueError as exc:
            raise _smartnoise_error(exc, plan) from None
        mechs = self._mechanisms(private)
        self._check_bounds(mechs, plan)
        return odometer_cost([(m.epsilon, m.delta) for m in mechs], plan.delta)

    # -- running

    def _check_bounds(self, mechs: list[Any], plan: DpPlan) -> None:
        for m in mechs:
            if m.sensitivity == math.inf:
                raise InputError(
                    f"A column summed in this query has no bounds in the policy of table "
                    f"'{plan.query.access.qualified_name}'; SUM, AVG, VAR and STDDEV need the "
                    "column's lower and upper bounds (ask the data owner to set them)"
                )

    def _run(self, plan: DpPlan, timeout_s: float | None) -> tuple[pa.Table, Cost]:
        access = plan.query.access
        token: Hashable | None = None
        if access.privacy_unit is not None:
            token = self.bounds.verify(access.dataset, access.table, access.privacy_unit,
                                       access.max_rows_per_unit or 1)
        while True:
            private, reader = self._reader(plan, rows_bounded=token is not None,
                                           timeout_s=timeout_s)
            try:
                query = private.parse_query_string(plan.query.smartnoise_sql)
                rows = private._execute_ast(query)
            except ValueError as exc:
                raise _smartnoise_error(exc, plan) from None
            if token is not None and not self.bounds.still_valid(
                    access.dataset, access.table, token):
                token = None  # the source changed while we read it: sample
                continue
            break
        self.last_sql = list(reader.executed)
        mechs = self._mechanisms(private)
        cost = odometer_cost([(m.epsilon, m.delta) for m in mechs], plan.delta)
        return _to_arrow(private, rows, plan), cost

    def execute(self, plan: DpPlan, *, timeout_s: float | None = None) -> pa.Table:
        """The noisy answer to ``plan``, charged to the user's budget (see the module doc)."""
        access = plan.query.access
        key = plan.key
        stored = self.ledger.answer(key)
        if stored is not None:
            balance = self.ledger.balance(plan.user, access.dataset, default=access.budget)
            return _with_spend(_from_ipc(stored), plan, Cost(0.0, 0.0), balance, cached=True)
        self.ledger.check(plan.user, access.dataset, self.cost(plan), default=access.budget)
        table, cost = self._run(plan, timeout_s)
        charge = self.ledger.charge(plan.user, access.dataset, cost, default=access.budget,
                                    query_key=key, answer=_to_ipc(table))
        if not charge.charged:  # the same query was answered meanwhile
            assert charge.answer is not None
            return _with_spend(_from_ipc(charge.answer), plan, Cost(0.0, 0.0), charge.balance,
                               cached=True)
        return _with_spend(table, plan, cost, charge.balance, cached=False)


def _smartnoise_error(exc: Exception, plan: DpPlan) -> StockadeError:
    text = str(exc).split("\n", 1)[0]
    return InputError(f"dp mode cannot answer this query on table "
                      f"'{plan.query.access.qualified_name}': {text}")


def _names(expression: Any) -> list[str]:
    found = [expression] if isinstance(expression, SnColumn) else []
    return [c.name for c in found + list(expression.find_nodes(SnColumn))]


def _to_arrow(private: _Private, rows: list[Any], plan: DpPlan) -> pa.Table:
    assert private.last is not None
    subquery, outer = private.last
    mech_map = private._get_mechanism_map(subquery)
    fields = []
    columns: list[list[Any]] = [[] for _ in plan.query.outputs]
    for row in rows[1:]:
        for i, value in enumerate(row):
            columns[i].append(value)
    summary = []
    for i, (output, symbol) in enumerate(zip(plan.query.outputs, outer._select_symbols,
                                             strict=True)):
        arrow_type = _ARROW_TYPES.get(symbol.expression.type(), pa.string())
        meta: dict[str, str] = {}
        if output.noisy:
            ne = outer.select.namedExpressions[i]
            mechs = [mech_map[n] for n in dict.fromkeys(_names(ne.expression)) if n in mech_map]
            if mechs:
                kinds = sorted({mechanism_name(m) for m in mechs})
                scales = [float(m.scale) for m in mechs]
                widths = [ci95_half_width(mechanism_name(m), float(m.scale)) for m in mechs]
                meta = {
                    META + "mechanism": ",".join(kinds),
                    META + "scale": ",".join(repr(s) for s in scales),
                    META + "ci95_half_width": ",".join(repr(w) for w in widths),
                    META + "derived": "true" if len(mechs) > 1 else "false",
                }
                summary.append({"column": output.name, "mechanism": ",".join(kinds),
                                "scale": scales, "ci95_half_width": widths,
                                "derived": len(mechs) > 1})
        fields.append(pa.field(output.name, arrow_type, metadata=meta or None))
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, fields, strict=True)]
    schema = pa.schema(fields, metadata={META + "columns": json.dumps(summary),
                                         META + "epsilon": repr(plan.epsilon),
                                         META + "delta": repr(plan.delta)})
    return pa.Table.from_arrays(arrays, schema=schema)


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


__all__ = ["DEFAULT_DELTA", "DpPlan", "PrivateQueries", "UNIT", "odometer_cost"]
