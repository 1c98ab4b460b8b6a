"""A domain: its policy, its locked engine and its state store, without the wire.

:class:`Domain` answers "what may this principal see" and "run this SQL as this
principal" for the Flight SQL server in :mod:`gateway.server`, and is usable on
its own (tests, the embedding API, the CLI).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
from sqlglot import exp

import connectors
from gateway.audit import QUERY, AuditLog
from gateway.dialects import check_epsilon, query_options, resolve_dialect
from gateway.dp import DpPlan, PrivateQueries
from gateway.dp.queries import META as DP_META
from gateway.engine import Engine, EngineLimits
from gateway.errors import InputError, PermissionDeniedError, StockadeError
from gateway.ledger import Ledger
from gateway.parameters import placeholder_types
from gateway.state import StateStore, User
from policy.access import TableAccess, catalog_for, visible_columns
from policy.expressions import bind_secrets
from policy.loader import check_against_schemas, load_policy
from policy.model import Policy
from policy.pipeline import QueryPlan, plan_query
from policy.principal import Principal
from policy.rules.apply_table_policy import policy_subquery
from policy.rules.parse import parse
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import access_for

log = logging.getLogger("stockade.domain")

K = TypeVar("K")
V = TypeVar("V")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class VisibleTable:
    """A table as one principal sees it."""

    dataset: str
    name: str
    access: TableAccess
    schema: pa.Schema  # exactly the columns and types a SELECT * returns to them
    description: str


class Domain:
    """One domain gateway's data plane."""

    def __init__(self, policy: Policy, engine: Engine, store: StateStore) -> None:
        self.policy = policy
        self.engine = engine
        self.store = store
        self.schemas: dict[tuple[str, str], dict[str, str]] = {
            key: engine.columns(*key) for key in engine.tables()
        }
        check_against_schemas(policy, self.schemas)
        self._schema_cache: LruCache[tuple[str, str, str], pa.Schema] = LruCache(4096)
        # Plans depend only on (policy, principal, dialect, SQL): an analyst's
        # GetFlightInfo and DoGet of the same query, and any repeat of it, are planned once.
        self._plans: LruCache[tuple[Any, ...], QueryPlan] = LruCache(4096)
        self._result_schemas: LruCache[tuple[Any, ...], pa.Schema] = LruCache(4096)
        # ADBC and JDBC prepare every query: its parameter types are inferred once.
        self._parameter_schemas: LruCache[str, pa.Schema] = LruCache(4096)
        self._nested_schemas: dict[str, dict[str, dict[str, str]]] = {}
        for (ds, table), columns in self.schemas.items():
            self._nested_schemas.setdefault(ds, {})[table] = dict(columns)
        # dp mode: SmartNoise over this engine, charging the state store's ledger.
        self.ledger = Ledger(store)
        self.dp = PrivateQueries(engine, self.ledger)
        self._routes: LruCache[tuple[Any, ...], bool] = LruCache(4096)
        # dp answers paid for at GetFlightInfo, waiting for the DoGet that fetches them
        # (so that the stream carries the same spend metadata as the FlightInfo).
        self._paid: LruCache[tuple[str, str], pa.Table] = LruCache(1024)
        self.audit = AuditLog(store)

    @classmethod
    def open(
        cls,
        policy_path: str | Path,
        data_dir: str | Path,
        *,
        limits: EngineLimits | None = None,
    ) -> Domain:
        """Load the policy, build and lock the engine, open the state store.

        The policy's dataset caps (``budget_cap``) are applied to the ledger here,
        when a gateway starts (not in :meth:`__init__`, which the read-only policy
        tools also use on a live state store).
        """
        policy = load_policy(policy_path)
        data_dir = Path(data_dir)
        engine = build_engine(policy, data_dir / "engine", limits=limits)
        try:
            store = StateStore(data_dir)
        except BaseException:
            engine.close()
            raise
        try:
            domain = cls(policy, engine, store)
            domain.ledger.apply_policy_caps(policy)
            return domain
        except BaseException:
            engine.close()
            store.close()
            raise

    def close(self) -> None:
        try:
            self.audit.flush()
        except TimeoutError:  # pragma: no cover - a stuck disk
            log.error("audit records still queued at shutdown were not written")
        self.engine.close()
        self.store.close()

    @property
    def name(self) -> str:
        return self.policy.domain.name

    # -- who ------------------------------------------------------------------------

    def principal_for(self, user: User) -> Principal:
        """The principal of an authenticated user; their role must be in the policy."""
        if user.role not in self.policy.roles:
            raise PermissionDeniedError(
                f"Your role '{user.role}' is not in this domain's policy; "
                "ask the data owner to fix your account."
            )
        return Principal(user.name, user.role, user.attributes)

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
    ) -> QueryPlan:
        """Check and rewrite ``sql`` for ``principal``.

        ``dialect`` is the session's or connection's dialect; a leading
        ``/* dialect: … */`` comment in ``sql`` overrides it (see
        :mod:`gateway.dialects`).
        """
        resolved, text = resolve_dialect(sql, session=dialect)
        key = plan_key(principal, text, dialect=resolved, for_schema=for_schema)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        plan = plan_query(
            text,
            policy=self.policy,
            principal=principal,
            schemas=self.schemas,
            dialect=resolved,
            max_rows=None if for_schema else self.policy.limits_for(principal.role).max_rows,
        )
        self._plans.put(key, plan)
        return plan

    def result_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: Sequence[Any] | None = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
    ) -> pa.Schema:
        """The schema of ``sql``'s answer (a prepared statement, GetSchema).

        Nothing runs; a refusal is audited.
        """
        started = time.perf_counter()
        try:
            return self._result_schema(principal, sql, parameters, dialect=dialect,
                                       epsilon=epsilon)
        except Exception as exc:
            self._audit(principal, sql, started, error=exc)
            raise

    def _result_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: Sequence[Any] | None = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
    ) -> pa.Schema:
        dp = self.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon)
        if dp is not None:
            _no_parameters(parameters)
            return self.dp.result_schema(dp)
        plan = self.plan(principal, sql, dialect=dialect)
        params = list(parameters) if parameters is not None else [None] * plan.parameter_count
        key = (plan.sql, tuple(type(p).__name__ for p in params))
        cached = self._result_schemas.get(key)
        if cached is not None:
            return cached
        with redacting(plan):
            schema = self.engine.result_schema(plan.sql, params or None)
        self._result_schemas.put(key, schema)
        return schema

    # -- dp mode --------------------------------------------------------------------

    def reads_dp(self, principal: Principal, sql: str, *, dialect: str | None = None) -> bool:
        """Whether ``sql`` reads a table that is in ``dp`` mode for ``principal``."""
        resolved, text = resolve_dialect(sql, session=dialect)
        key = (principal.role, text, resolved)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        expression = parse(text, dialect=resolved)
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
    ) -> DpPlan | None:
        """The dp plan of ``sql``, or None when it reads no ``dp`` table.

        ε and δ: a leading ``/* epsilon: …; delta: … */`` comment wins over
        ``epsilon`` (the session's or connection's), which wins over the grant's
        ``epsilon_per_query``.
        """
        if not self.reads_dp(principal, sql, dialect=dialect):
            return None
        options, _ = query_options(sql)
        resolved, text = resolve_dialect(sql, session=dialect)
        if "epsilon" in options:
            epsilon = check_epsilon(options["epsilon"])
        delta = check_epsilon(options["delta"], what="δ") if "delta" in options else None
        return self.dp.plan(text, policy=self.policy, principal=principal,
                            schemas=self.schemas, epsilon=epsilon, delta=delta,
                            dialect=resolved)

    def dp_cost(
        self, principal: Principal, sql: str, *, dialect: str | None = None,
        epsilon: float | None = None,
    ) -> dict[str, Any]:
        """What ``sql`` would cost ``principal`` in ``dp`` mode, charging nothing."""
        plan = self.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon)
        if plan is None:
            raise InputError("This query reads no table in dp mode: it costs no budget.")
        cost = self.dp.cost(plan)
        balance = self.ledger.balance(principal.user, plan.dataset,
                                      default=plan.query.access.budget)
        return {"dataset": plan.dataset, "table": plan.table,
                "epsilon": cost.epsilon, "delta": cost.delta,
                "epsilon_remaining": balance.remaining_epsilon,
                "delta_remaining": balance.remaining_delta,
                "answered_before": self.ledger.answer(plan.key) is not None}

    def budgets(self, principal: Principal) -> list[dict[str, Any]]:
        """``principal``'s ε/δ budget for each dataset they read in ``dp`` mode."""
        out = []
        datasets = {(a.dataset, a.budget) for a in catalog_for(self.policy, principal).values()
                    if a.mode == "dp"}
        for dataset, budget in sorted(datasets, key=lambda d: d[0]):
            balance = self.ledger.balance(principal.user, dataset, default=budget)
            out.append({"dataset": dataset, **balance.to_json(who=False)})
        return out

    def parameter_schema(
        self, principal: Principal, sql: str, *, dialect: str | None = None
    ) -> pa.Schema:
        """The schema of ``sql``'s parameters, typed where the query tells."""
        if self.reads_dp(principal, sql, dialect=dialect):
            return pa.schema([])
        plan = self.plan(principal, sql, dialect=dialect)
        cached = self._parameter_schemas.get(plan.sql)
        if cached is not None:
            return cached
        fields = []
        for i, duck_type in enumerate(placeholder_types(plan.expression, self._nested_schemas)):
            arrow_type = pa.null()
            if duck_type is not None:
                try:
                    arrow_type = self.engine.result_schema(
                        f"SELECT CAST(NULL AS {duck_type}) AS p").field(0).type
                except StockadeError:
                    arrow_type = pa.null()
            fields.append(pa.field(f"${i + 1}", arrow_type))
        schema = pa.schema(fields)
        self._parameter_schemas.put(plan.sql, schema)
        return schema

    def answer_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: Sequence[Any] | None = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
    ) -> pa.Schema:
        """The schema of the answer the caller is about to fetch (GetFlightInfo).

        For a ``dp`` query this is where the answer is computed and paid for:
        its schema carries ε spent and remaining, which clients such as ADBC and
        JDBC read from GetFlightInfo; the DoGet that follows returns that answer.
        """
        started = time.perf_counter()
        try:
            dp = self.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon)
            if dp is None:
                return self._result_schema(principal, sql, parameters, dialect=dialect)
            _no_parameters(parameters)
        except Exception as exc:  # refused before anything ran: audited here
            self._audit(principal, sql, started, error=exc)
            raise
        answer = self._dp_answer(principal, dp, sql)
        self._paid.put((principal.user, dp.key), answer)
        return answer.schema

    def _dp_answer(self, principal: Principal, dp: DpPlan, sql: str) -> pa.Table:
        """Compute (and pay for) a dp answer; audited here, with the ε/δ charged."""
        limits = self.policy.limits_for(principal.role)
        log.info("dp query by %s on %s.%s at ε=%g", principal.user, dp.dataset, dp.table,
                 dp.epsilon)
        started = time.perf_counter()
        tables = [{"dataset": dp.dataset, "table": dp.table, "mode": "dp"}]
        try:
            answer = self.dp.execute(dp, timeout_s=limits.timeout_s)
        except Exception as exc:
            self._audit(principal, sql, started, rewritten=dp.query.smartnoise_sql,
                        tables=tables, error=exc)
            raise
        meta = answer.schema.metadata or {}
        self._audit(principal, sql, started, rewritten=dp.query.smartnoise_sql, tables=tables,
                    rows=answer.num_rows,
                    epsilon=float(meta.get((DP_META + "epsilon_spent").encode(), b"0")),
                    delta=float(meta.get((DP_META + "delta_spent").encode(), b"0")))
        return answer

    def _audit(
        self,
        principal: Principal,
        sql: str,
        started: float,
        *,
        plan: QueryPlan | None = None,
        rewritten: str | None = None,
        tables: list[dict[str, str]] | None = None,
        epsilon: float = 0.0,
        delta: float = 0.0,
        rows: int | None = None,
        complete: bool = True,
        error: BaseException | None = None,
    ) -> None:
        """One audit record for one query (see :mod:`gateway.audit`)."""
        if plan is not None:
            rewritten = plan.display_sql
            tables = [{"dataset": t.dataset, "table": t.table, "mode": t.mode}
                      for t in plan.tables]
        message = None
        if error is not None:
            message = (error.message if isinstance(error, StockadeError)
                       else f"internal error ({type(error).__name__})")
            if plan is not None:
                message = plan.redact(message)
        details: dict[str, Any] = {
            "role": principal.role, "sql": sql, "rewritten_sql": rewritten,
            "tables": tables or [], "epsilon": epsilon, "delta": delta, "rows": rows,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": message,
        }
        if not complete:
            details["complete"] = False
        self.audit.safe_append(QUERY, principal.user, details)

    def execute(
        self,
        principal: Principal,
        sql: str,
        parameters: Sequence[Any] | None = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
    ) -> pa.RecordBatchReader:
        """Run ``sql`` as ``principal``; audited once, when the stream ends.

        A dp answer is audited where it is computed and paid for (here, or at
        :meth:`answer_schema`); a refusal is audited at once.
        """
        started = time.perf_counter()
        limits = self.policy.limits_for(principal.role)
        plan: QueryPlan | None = None
        try:
            dp = self.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon)
            if dp is None:
                plan = self.plan(principal, sql, dialect=dialect)
                log.info("query by %s: %s", principal.user, plan.display_sql)
                with redacting(plan):
                    reader = self.engine.execute(plan.sql, parameters or None,
                                                 timeout_s=limits.timeout_s)
            else:
                _no_parameters(parameters)
        except Exception as exc:
            self._audit(principal, sql, started, plan=plan, error=exc)
            raise
        if dp is not None:
            answer = self._paid.pop((principal.user, dp.key))
            if answer is None:
                answer = self._dp_answer(principal, dp, sql)
            return pa.RecordBatchReader.from_batches(answer.schema, answer.to_batches())
        audited_plan = plan
        assert audited_plan is not None

        def batches() -> Iterator[pa.RecordBatch]:
            rows, complete, error = 0, False, None
            try:
                with redacting(audited_plan):
                    for batch in reader:
                        rows += batch.num_rows
                        yield batch
                complete = True
            except Exception as exc:
                error = exc
                raise
            finally:
                self._audit(principal, sql, started, plan=audited_plan, rows=rows,
                            complete=complete or error is not None, error=error)

        return pa.RecordBatchReader.from_batches(reader.schema, batches())


def _no_parameters(parameters: Sequence[Any] | None) -> None:
    if parameters:
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
    the dialect (the same text may mean different things in two dialects).

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


def build_engine(
    policy: Policy, work_dir: str | Path, *, limits: EngineLimits | None = None
) -> Engine:
    """Build and start the locked engine over the policy's sources, in ``work_dir``.

    Relative source paths were resolved against the policy file by the loader;
    ``base_dir`` below only matters to connectors that resolve more themselves.
    """
    engine = Engine(Path(work_dir), limits=limits)
    base_dir = Path(policy.file).resolve().parent if policy.file else Path.cwd()
    for number, (ds_name, dataset) in enumerate(sorted(policy.datasets.items())):
        for t_number, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            options = {k: v for k, v in asdict(table.source).items() if v is not None}
            connector = connectors.get(table.source.format)
            alias = f"src_{number}_{t_number}_{_UNSAFE.sub('_', t_name)}"
            plan = connector.plan(options, base_dir=base_dir, alias=alias)
            engine.add_table(ds_name, t_name, plan)
    engine.start()
    return engine


class LruCache(Generic[K, V]):
    """A small thread-safe least-recently-used map.

    >>> c = LruCache(2); c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
    1
    >>> c.get("b") is None, c.get("a"), c.get("c")
    (True, 1, 3)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def parameter_values(batch: pa.RecordBatch | None) -> list[Any] | None:
    """The values of a one-row parameter batch, in column order."""
    if batch is None or batch.num_columns == 0:
        return None
    return [batch.column(i)[0].as_py() for i in range(batch.num_columns)]

