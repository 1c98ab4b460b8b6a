"""Differentially private queries: plan, preview the cost, run, charge, answer.

:class:`PrivateQueries` is what the domain calls for a table in ``dp`` mode::

    dp = PrivateQueries(engine, Ledger(store))
    plan = dp.plan(sql, policy=policy, principal=principal, schemas=schemas,
                   epsilon=None)             # None: the grant's epsilon_per_query
    dp.cost(plan)                            # Cost(epsilon, delta), charges nothing
    dp.result_schema(plan)                   # the answer's Arrow schema, runs nothing
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
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from snsql._ast.ast import Column as SnColumn
from snsql.sql.odometer import OdometerHeterogeneous
from snsql.sql.privacy import Privacy
from snsql.sql.private_reader import PrivateReader

from gateway.dp.mechanisms import ci95_half_width, mechanism_name, mechanisms
from gateway.dp.metadata import dp_metadata
from gateway.dp.reader import DuckDBReader
from gateway.dp.translate import UNIT, DpQuery, over_snapshot, translate
from gateway.engine import Engine
from gateway.errors import InputError, StockadeError
from gateway.ledger import Balance, Cost, Ledger
from gateway.snapshots import BoundedSource
from policy.access import catalog_for, dataset_grant
from policy.model import Policy
from policy.principal import Principal
from policy.rules.check_functions import check_functions
from policy.rules.parse import parse
from policy.rules.qualify_columns import qualify_columns
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import Schemas

#: δ per query for grouped queries (censoring rare groups needs δ > 0) when the
#: caller does not choose one: at most this, and at most 1/DELTA_SHARE of the
#: grant's δ budget, so that a δ budget pays for many grouped queries, not one.
DEFAULT_DELTA = 1e-6
DELTA_SHARE = 100

#: Keys of the Arrow metadata of a dp answer.
META = "stockade.dp."

_RULES = (validate_statement, resolve_tables, check_functions, qualify_columns)
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(),
                "boolean": pa.bool_(), "datetime": pa.timestamp("us")}


#: SmartNoise CAST target types → its own type names.
_CAST_TYPES = {"INTEGER": "int", "FLOAT": "float", "BOOLEAN": "boolean", "VARCHAR": "string",
               "NVARCHAR": "string", "CHAR": "string", "NCHAR": "string",
               "TIMESTAMP": "datetime"}


def _value_type(expression: Any) -> str:
    """SmartNoise's type of an output expression, where SmartNoise itself does not know
    it (ROUND and CAST answer 'unknown'): ROUND keeps its argument's type, CAST is its
    target's."""
    kind = type(expression).__name__
    if kind == "RoundFunction":
        return _value_type(expression.expression)
    if kind == "CastFunction":
        return _CAST_TYPES.get(str(expression.dbtype).upper(), "string")
    try:
        return str(expression.type())
    except Exception:  # a SmartNoise node without a type  # noqa: BLE001
        return "unknown"


def _as_type(values: list[Any], arrow_type: pa.DataType) -> list[Any]:
    """SmartNoise hands ROUND and CAST results back as text: make them numbers."""
    if pa.types.is_integer(arrow_type):
        return [round(float(v)) if isinstance(v, str) else v for v in values]
    if pa.types.is_floating(arrow_type):
        return [float(v) if isinstance(v, str) else v for v in values]
    return values


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


class _Rewrite:
    """SmartNoise's parse and rewrite of one query, and what follows from them alone."""

    __slots__ = ("query", "subquery", "outer", "sql", "cost")

    def __init__(self, query: Any, subquery: Any, outer: Any) -> None:
        self.query = query
        self.subquery = subquery
        self.outer = outer
        self.sql: str | None = None  # the rewritten aggregate query, serialised
        self.cost: Cost | None = None


_rewrites: OrderedDict[tuple[Any, ...], _Rewrite] = OrderedDict()
_rewrites_lock = threading.Lock()


def _remembered(key: tuple[Any, ...]) -> _Rewrite | None:
    with _rewrites_lock:
        found = _rewrites.get(key)
        if found is not None:
            _rewrites.move_to_end(key)
    return found


class _Drawn:
    """A mechanism whose noisy values for this execution are already drawn.

    SmartNoise releases one value per row and mechanism; :class:`_Exact` draws
    each mechanism's noise for all rows in one call and this hands the values
    out in row order, checking that each is asked for the value it was drawn for.
    """

    def __init__(self, mechanism: Any, exact: list[float], noisy: list[float]) -> None:
        self._mechanism = mechanism
        self._pairs = iter(zip(exact, noisy, strict=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mechanism, name)

    def release(self, vals: Any) -> list[float]:
        out = []
        for v in vals:
            exact, noisy = next(self._pairs)
            if float(v) != exact:  # pragma: no cover - SmartNoise changed its row order
                raise StockadeError("Noise was drawn for another value than released")
            out.append(noisy)
        return out


class _Exact:
    """Runs the rewritten aggregate query, then draws each mechanism's noise in one call."""

    def __init__(self, private: _Private) -> None:
        self.private = private

    def _execute_ast(self, subquery: Any, *ignore: Any, accuracy: bool = False) -> list[Any]:
        private = self.private
        reader = private.reader
        rewrite = private.rewrite
        if rewrite is not None and rewrite.subquery is subquery:
            if rewrite.sql is None:
                rewrite.sql = reader.serializer.serialize(subquery)
            sql = rewrite.sql
        else:
            sql = reader.serializer.serialize(subquery)
        rows: list[Any] = reader.execute(sql)
        mechs = PrivateReader._get_mechanisms(private, subquery)
        # As SmartNoise does: a NULL aggregate is released as 0 plus noise.
        exact = {i: [0.0 if row[i] is None else float(row[i]) for row in rows[1:]]
                 for i, mech in enumerate(mechs) if mech is not None}
        noisy = _draw([(mechs[i], values) for i, values in exact.items()])
        private.drawn = [None if m is None else _Drawn(m, exact[i], noisy.pop(0))
                         for i, m in enumerate(mechs)]
        return rows


#: Below this many values a query's noise is drawn on the calling thread only.
_PARALLEL_DRAWS = 16
_draw_pool: ThreadPoolExecutor | None = None
_draw_pool_lock = threading.Lock()


def _draw(columns: list[tuple[Any, list[float]]]) -> list[list[float]]:
    """Each mechanism's ``release`` of its column, in order.

    OpenDP's samplers run without the GIL, so when there is enough to draw the
    second half of the columns is drawn on a helper thread meanwhile.
    """
    global _draw_pool
    total = sum(len(values) for _, values in columns)
    if len(columns) < 2 or total < _PARALLEL_DRAWS or (os.cpu_count() or 1) < 2:
        return [list(m.release(values)) for m, values in columns]
    with _draw_pool_lock:
        if _draw_pool is None:
            _draw_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                            thread_name_prefix="stockade-noise")
        pool = _draw_pool
    half = len(columns) // 2
    later = pool.submit(lambda: [list(m.release(v)) for m, v in columns[half:]])
    try:
        first = [list(m.release(values)) for m, values in columns[:half]]
    finally:
        rest = later.result()
    return first + rest


class _Private(PrivateReader):  # type: ignore[misc]
    """SmartNoise's private reader, with its parse and rewrite memoised.

    SmartNoise's parse and rewrite of a query depend only on the query text,
    the metadata and the privacy parameters (``key``); the rewritten trees are
    only read afterwards (serialised to SQL, evaluated on rows), and their
    mechanisms hold nothing but their parameters and scale. ``last`` is the
    rewrite this reader executed. Noise is drawn per mechanism for all rows at
    once (:class:`_Exact`), not one OpenDP call per value.
    """

    key: tuple[Any, ...] = ()
    last: tuple[Any, Any] | None = None
    rewrite: _Rewrite | None = None
    drawn: list[_Drawn | None] | None = None

    def parse_query_string(self, query_string: str) -> Any:
        found = _remembered(self.key)
        if found is not None:
            return found.query
        return super().parse_query_string(query_string)

    def _rewrite_ast(self, query: Any) -> tuple[Any, Any]:
        found = _remembered(self.key)
        if found is not None and found.query is query:
            self._options.max_contrib = query.max_ids
            self.rewrite = found
            self.last = (found.subquery, found.outer)
            return self.last
        subquery, outer = super()._rewrite_ast(query)
        self.rewrite = _Rewrite(query, subquery, outer)
        with _rewrites_lock:
            _rewrites[self.key] = self.rewrite
            while len(_rewrites) > 1024:
                _rewrites.popitem(last=False)
        self.last = (subquery, outer)
        return self.last

    def _get_reader(self, query_ast: Any) -> _Exact:
        return _Exact(self)

    def _get_mechanisms(self, subquery: Any) -> list[Any]:
        drawn, self.drawn = self.drawn, None
        if drawn is not None:
            return drawn
        return super()._get_mechanisms(subquery)  # type: ignore[no-any-return]


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

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger
        self._schemas: OrderedDict[str, tuple[pa.Schema, str]] = OrderedDict()
        self._plans: OrderedDict[tuple[Any, ...], tuple[Policy, DpQuery]] = OrderedDict()
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

        The checked query is remembered per (policy, role, user attributes, SQL,
        dialect): the policy steps and the split read the principal's role (its
        grants and functions) and attributes (row filters), never the user's name.
        """
        key = (id(policy), principal.role,
               tuple(sorted((k, type(v).__name__, v) for k, v in principal.attributes.items())),
               sql, dialect)
        with self._lock:
            found = self._plans.get(key)
            if found is not None:
                self._plans.move_to_end(key)
        if found is not None and found[0] is policy:
            query = found[1]
        else:
            query = self._query(sql, policy=policy, principal=principal, schemas=schemas,
                                dialect=dialect)
            with self._lock:
                self._plans[key] = (policy, query)
                while len(self._plans) > 4096:
                    self._plans.popitem(last=False)
        grant = dataset_grant(policy, principal, query.access.dataset)
        bounds = grant.epsilon_bounds if grant is not None else (None, None)
        return _resolve(query, principal.user, epsilon, delta, bounds)

    def _query(
        self,
        sql: str,
        *,
        policy: Policy,
        principal: Principal,
        schemas: Schemas,
        dialect: str,
    ) -> DpQuery:
        expression = parse(sql, dialect=dialect)
        catalog = catalog_for(policy, principal)
        context: dict[str, Any] = {"policy": policy, "principal": principal,
                                   "schemas": schemas, "catalog": catalog, "max_rows": None}
        for rule in _RULES:
            expression = rule(expression, **context)
        return translate(expression, principal=principal, catalog=catalog, schemas=schemas)

    def relation_schema(self, plan: DpPlan) -> pa.Schema:
        """The Arrow schema of the policy relation of ``plan`` (asked of DuckDB once)."""
        return self._relation(plan)[0]

    def _relation(self, plan: DpPlan) -> tuple[pa.Schema, str]:
        sql = plan.query.relation_sql
        with self._lock:
            found = self._schemas.get(sql)
        if found is None:
            schema = self.engine.result_schema(sql)
            found = (schema, schema.to_string())
            with self._lock:
                self._schemas[sql] = found
                while len(self._schemas) > 1024:
                    self._schemas.popitem(last=False)
        return found

    def _reader(self, plan: DpPlan, *, timeout_s: float | None,
                snapshot: BoundedSource | None = None) -> tuple[_Private, DuckDBReader]:
        """SmartNoise's reader for ``plan``: over the table's bounded ``snapshot`` when
        it has one (SmartNoise then does not sample), else sampling in the query."""
        q = plan.query
        relation_sql = q.relation_sql
        rows_bounded = False
        access = q.access
        if snapshot is not None and access.privacy_unit is not None \
                and snapshot.unit.lower() == access.privacy_unit.lower() \
                and snapshot.max_rows <= (access.max_rows_per_unit or 1):
            relation_sql = over_snapshot(relation_sql, access.dataset, access.table,
                                         snapshot.sql)
            rows_bounded = True
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

        reader = DuckDBReader(run, relation_sql)
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
        return (q.smartnoise_sql, self._relation(plan)[1], q.bounds,
                q.access.privacy_unit is not None, q.access.max_rows_per_unit, rows_bounded,
                q.grouped, repr(plan.epsilon), repr(plan.delta))

    def _mechanisms(self, private: _Private) -> list[Any]:
        assert private.last is not None
        subquery = private.last[0]
        return [s.mechanism for s in subquery._select_symbols if s.mechanism is not None]

    def _rewritten(self, plan: DpPlan) -> _Private:
        """A reader holding SmartNoise's rewrite of ``plan`` (nothing runs)."""
        private, _ = self._reader(plan, timeout_s=None)
        try:
            private._rewrite_ast(private.parse_query_string(plan.query.smartnoise_sql))
        except ValueError as exc:
            raise _smartnoise_error(exc, plan) from None
        return private

    def _cost(self, private: _Private, plan: DpPlan) -> Cost:
        rewrite = private.rewrite
        if rewrite is not None and rewrite.cost is not None:
            return rewrite.cost
        mechs = self._mechanisms(private)
        self._check_bounds(mechs, plan)
        cost = odometer_cost([(m.epsilon, m.delta) for m in mechs], plan.delta)
        if rewrite is not None:
            rewrite.cost = cost
        return cost

    def cost(self, plan: DpPlan) -> Cost:
        """What ``plan`` would be charged (SmartNoise's odometer); charges nothing."""
        found = _remembered(self._key(plan, False))
        if found is not None and found.cost is not None:
            return found.cost
        return self._cost(self._rewritten(plan), plan)

    def result_schema(self, plan: DpPlan) -> pa.Schema:
        """The Arrow schema of ``plan``'s answer, without running it or charging.

        Names, types and the noise metadata of each column are those of the
        answer; the spend and remaining-budget keys are only known after the charge.
        """
        return _to_arrow(self._rewritten(plan), [()], plan).schema

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
        with self.engine.bounded_source(access.dataset, access.table) as snapshot:
            private, reader = self._reader(plan, snapshot=snapshot, timeout_s=timeout_s)
            try:
                query = private.parse_query_string(plan.query.smartnoise_sql)
                rows = private._execute_ast(query)
            except ValueError as exc:
                raise _smartnoise_error(exc, plan) from None
        self.last_sql = list(reader.executed)
        return _to_arrow(private, rows, plan), self._cost(private, plan)

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


def _resolve(query: DpQuery, user: str, epsilon: float | None, delta: float | None,
             bounds: tuple[float | None, float | None] = (None, None)) -> DpPlan:
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
        if query.grouped:
            delta = DEFAULT_DELTA
            budget = access.budget
            if budget is not None and budget.delta > 0:
                delta = min(delta, budget.delta / DELTA_SHARE)
    if not (isinstance(delta, int | float) and 0 <= delta < 1):
        raise InputError(f"δ must be a number in [0, 1), not {delta!r}")
    if query.grouped and delta == 0:
        raise InputError(
            "A GROUP BY query in dp mode needs δ > 0 to hide rare groups; choose a δ "
            "(e.g. 1e-6) within your δ budget, or remove GROUP BY"
        )
    return DpPlan(query, user, float(epsilon), float(delta))


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
        arrow_type = _ARROW_TYPES.get(_value_type(symbol.expression), pa.string())
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
    arrays = [pa.array(_as_type(col, f.type), type=f.type)
              for col, f in zip(columns, fields, strict=True)]
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
