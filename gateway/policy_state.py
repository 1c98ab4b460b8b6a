"""One version of a domain's policy, with everything derived from it.

A :class:`PolicyState` holds the policy, the engine built over its sources, the
sources' schemas, and every cache whose entries depend on the policy: plans,
the schemas each role sees, result and parameter schemas, the routing to ``dp``
mode, the ``dp`` planner, and the answers computed at GetFlightInfo (``dp``
answers paid for, others read whole by the look-ahead of :mod:`gateway.results`).
Its ``limits`` (:class:`gateway.limits.RequestLimits`) bound every analyst text
it parses.
:class:`gateway.domain.Domain` answers each query from one state, taken once
when the query starts, and replaces the whole state at once when the owner
replaces the policy: nothing planned under an older policy is ever reused
under a newer one, and a query never mixes two versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from sqlglot import exp

from gateway.dialects import check_epsilon, query_options, resolve_dialect
from gateway.dp import DpPlan, PrivateQueries
from gateway.engine import Engine
from gateway.errors import InputError, StockadeError
from gateway.ledger import Ledger
from gateway.limits import Deadline, RequestLimits
from gateway.lru import LruCache as LruCache  # the home of the cache used below
from gateway.parameters import (
    Parameters,
    bind,
    expected_parameters,
    placeholder_keys,
    placeholder_types,
)
from policy.access import TableAccess, catalog_for, visible_columns
from policy.expressions import bind_secrets
from policy.loader import check_against_schemas
from policy.model import Policy
from policy.pipeline import QueryPlan, plan_query
from policy.principal import Principal
from policy.rules.apply_table_policy import policy_subquery
from policy.rules.parse import parse
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import access_for

#: The most bytes of answers held between GetFlightInfo and DoGet (oldest dropped first).
ANSWER_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class VisibleTable:
    """A table as one principal sees it."""

    dataset: str
    name: str
    access: TableAccess
    schema: pa.Schema  # exactly the columns and types a SELECT * returns to them
    description: str


class PolicyState:
    """A policy, its engine and the caches derived from both (see the module doc).

    ``text`` is the policy's YAML as loaded (``None`` when the policy was built
    in memory); ``version`` its number in the state store, once recorded.
    """

    def __init__(self, policy: Policy, engine: Engine, ledger: Ledger, *,
                 text: str | None = None, version: int | None = None,
                 limits: RequestLimits | None = None) -> None:
        self.policy = policy
        self.limits = limits or RequestLimits()
        self.engine = engine
        self.text = text
        self.version = version
        self.schemas: dict[tuple[str, str], dict[str, str]] = {
            key: engine.columns(*key) for key in engine.tables()
        }
        check_against_schemas(policy, self.schemas)
        self._schema_cache: LruCache[tuple[str, str, str], pa.Schema] = LruCache(4096)
        # Plans depend only on (policy, principal, dialect, SQL): an analyst's
        # GetFlightInfo and DoGet of the same query, and any repeat of it, are planned once.
        self._plans: LruCache[tuple[Any, ...], QueryPlan] = LruCache(4096)
        self.result_schemas: LruCache[tuple[Any, ...], pa.Schema] = LruCache(4096)
        # ADBC and JDBC prepare every query: its parameter types are inferred once.
        self._parameter_schemas: LruCache[str, pa.Schema] = LruCache(4096)
        self._nested_schemas: dict[str, dict[str, dict[str, str]]] = {}
        for (ds, table), columns in self.schemas.items():
            self._nested_schemas.setdefault(ds, {})[table] = dict(columns)
        # dp mode: SmartNoise over this engine, charging the state store's ledger.
        self.dp = PrivateQueries(engine, ledger)
        self._routes: LruCache[tuple[Any, ...], bool] = LruCache(4096)
        # dp answers paid for at GetFlightInfo, waiting for the DoGet that fetches them
        # (so that the stream carries the same spend metadata as the FlightInfo).
        self.paid: LruCache[tuple[str, str], pa.Table] = LruCache(1024)
        # Other answers read whole at GetFlightInfo (gateway.results), for the DoGet that
        # follows; and, for answers too long to hold, whether they were cut.
        self.answers: LruCache[tuple[Any, ...], pa.Table] = LruCache(
            1024, max_bytes=ANSWER_CACHE_BYTES, weigh=lambda table: table.nbytes)
        self.truncation: LruCache[tuple[Any, ...], bool] = LruCache(4096)

    # -- what they see --------------------------------------------------------------

    def catalog(self, principal: Principal) -> list[VisibleTable]:
        """The tables ``principal`` may see, with the schema they would get."""
        tables = []
        for (ds, name), access in sorted(catalog_for(self.policy, principal).items()):
            if (ds, name) not in self.schemas:
                continue
            tables.append(VisibleTable(
                dataset=ds,
                name=name,
                access=access,
                schema=self._visible_schema(principal, ds, name),
                description=self.policy.datasets[ds].tables[name].description or "",
            ))
        return tables

    def _visible_schema(self, principal: Principal, ds: str, name: str) -> pa.Schema:
        key = (principal.role, ds, name)
        cached = self._schema_cache.get(key)
        if cached is not None:
            return cached
        # The table as the policy exposes it (masks applied, hidden columns gone),
        # whatever the mode: aggregate and dp users may not SELECT * but still see
        # the columns they can aggregate. Row filters do not change the schema.
        access = replace(catalog_for(self.policy, principal)[(ds, name)], row_filters=())
        source = self.schemas[(ds, name)]
        select = policy_subquery(access, list(source), list(visible_columns(access, source)),
                                 principal)
        runnable, _ = bind_secrets(select, self.policy.secrets)
        schema = self.engine.result_schema(
            f"{runnable.sql(dialect='duckdb', identify=True)} LIMIT 0")
        self._schema_cache.put(key, schema)
        return schema

    # -- what they run --------------------------------------------------------------

    def plan(
        self,
        principal: Principal,
        sql: str,
        *,
        dialect: str | None = None,
        for_schema: bool = False,
        deadline: Deadline | None = None,
        to_run: bool = False,
    ) -> QueryPlan:
        """Check and rewrite ``sql`` for ``principal`` (see :meth:`Domain.plan`).

        A plan ``to_run`` asks for one row more than the role's ``max_rows``: the
        answer knows it was cut when that row is there (:mod:`gateway.results`).
        """
        resolved, text = resolve_dialect(sql, session=dialect)
        key = (*plan_key(principal, text, dialect=resolved, for_schema=for_schema), to_run)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        max_rows = self.policy.limits_for(principal.role).max_rows + (1 if to_run else 0)
        plan = plan_query(
            text,
            policy=self.policy,
            principal=principal,
            schemas=self.schemas,
            dialect=resolved,
            max_rows=None if for_schema else max_rows,
            limits=self.limits,
            deadline=deadline,
        )
        self._plans.put(key, plan)
        return plan

    def result_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: Parameters | None = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        deadline: Deadline | None = None,
        unclamped: bool = False,
    ) -> pa.Schema:
        """The schema of ``sql``'s answer; nothing runs, nothing is audited.

        Parameters, when bound, must fit the query (:func:`gateway.parameters.bind`);
        the first row's values type the result. ``unclamped``: a dp answer's parts
        (:class:`gateway.dp.queries.DpPlan`).
        """
        dp = self.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon,
                          unclamped=unclamped)
        if dp is not None:
            no_parameters(parameters)
            return self.dp.result_schema(dp)
        plan = self.plan(principal, sql, dialect=dialect, deadline=deadline, to_run=True)
        [params] = bind(plan.expression, parameters.first() if parameters else None,
                        required=False)
        values = params.items() if isinstance(params, dict) else enumerate(params)
        key = (plan.sql, tuple((k, type(v).__name__) for k, v in values))
        cached = self.result_schemas.get(key)
        if cached is not None:
            return cached
        with redacting(plan):
            schema = self.engine.result_schema(plan.sql, params or None)
        self.result_schemas.put(key, schema)
        return schema

    def reads_dp(self, principal: Principal, sql: str, *, dialect: str | None = None) -> bool:
        """Whether ``sql`` reads a table that is in ``dp`` mode for ``principal``."""
        resolved, text = resolve_dialect(sql, session=dialect)
        key = (principal.role, text, resolved)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        expression = parse(text, dialect=resolved, limits=self.limits)
        catalog = catalog_for(self.policy, principal)
        context: dict[str, Any] = {"policy": self.policy, "principal": principal,
                                   "schemas": self.schemas, "catalog": catalog}
        expression = validate_statement(expression, **context)
        expression = resolve_tables(expression, **context)
        found = any(access_for(catalog, t).mode == "dp"
                    for t in expression.find_all(exp.Table) if t.db)
        self._routes.put(key, found)
        return found

    def dp_plan(
        self,
        principal: Principal,
        sql: str,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        unclamped: bool = False,
    ) -> DpPlan | None:
        """The dp plan of ``sql``, or None when it reads no ``dp`` table (``unclamped``:
        its noisy parts unclamped, see :class:`gateway.dp.queries.DpPlan`)."""
        if not self.reads_dp(principal, sql, dialect=dialect):
            return None
        options, _ = query_options(sql)
        resolved, text = resolve_dialect(sql, session=dialect)
        if "epsilon" in options:
            epsilon = check_epsilon(options["epsilon"])
        delta = check_epsilon(options["delta"], what="δ") if "delta" in options else None
        return self.dp.plan(text, policy=self.policy, principal=principal,
                            schemas=self.schemas, epsilon=epsilon, delta=delta,
                            dialect=resolved, unclamped=unclamped)

    def parameter_schema(
        self, principal: Principal, sql: str, *, dialect: str | None = None
    ) -> pa.Schema:
        """The schema of ``sql``'s parameters, typed where the query tells."""
        if self.reads_dp(principal, sql, dialect=dialect):
            return pa.schema([])
        plan = self.plan(principal, sql, dialect=dialect, to_run=True)
        cached = self._parameter_schemas.get(plan.sql)
        if cached is not None:
            return cached
        # One field per parameter, named as clients bind it: $1, $2… for positional
        # parameters (each ? is one), the name for named ones (each name once).
        kind, expected = expected_parameters(plan.expression)
        types: dict[str, str | None] = {}
        for i, (key, duck_type) in enumerate(zip(
                placeholder_keys(plan.expression),
                placeholder_types(plan.expression, self._nested_schemas), strict=True)):
            name = f"${i + 1}" if key is None else (f"${key}" if key.isdigit() else key)
            types[name] = types.get(name) or duck_type
        names = expected if kind == "named" else [f"${i + 1}" for i in range(len(expected))]
        fields = []
        for name in names:
            arrow_type = pa.null()
            duck_type = types.get(name)
            if duck_type is not None:
                try:
                    arrow_type = self.engine.result_schema(
                        f"SELECT CAST(NULL AS {duck_type}) AS p").field(0).type
                except StockadeError:
                    arrow_type = pa.null()
            fields.append(pa.field(name, arrow_type))
        schema = pa.schema(fields)
        self._parameter_schemas.put(plan.sql, schema)
        return schema


def no_parameters(parameters: Parameters | None) -> None:
    if parameters is not None and parameters.rows:
        raise InputError("Queries on dp tables take no parameters; write the values "
                         "into the query.")


@contextmanager
def redacting(plan: QueryPlan) -> Iterator[None]:
    """Replace the policy's secret values in any error raised inside by their names."""
    try:
        yield
    except StockadeError as exc:
        if plan.secret_values:
            exc.message = plan.redact(exc.message)
            exc.args = (exc.message,)
        raise


def plan_key(
    principal: Principal, sql: str, *, dialect: str, for_schema: bool = False
) -> tuple[Any, ...]:
    """The plan cache key: everything a plan depends on besides the policy.

    The whole principal is in it (its attributes bind the row filters), and so is
    the dialect (the same text may mean different things in two dialects). The
    policy is not: each :class:`PolicyState` has its own cache.

    >>> a = plan_key(Principal("c", "clinician", {"site": "north"}), "SELECT 1", dialect="duckdb")
    >>> b = plan_key(Principal("c", "clinician", {"site": "south"}), "SELECT 1", dialect="duckdb")
    >>> c = plan_key(Principal("c", "clinician", {"site": "north"}), "SELECT 1", dialect="tsql")
    >>> len({a, b, c})
    3
    """
    attributes = tuple(sorted(
        (name, type(value).__name__, value) for name, value in principal.attributes.items()
    ))
    return (principal.user, principal.role, attributes, dialect, sql, for_schema)
