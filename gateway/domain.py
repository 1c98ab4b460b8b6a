"""A domain: its policy, its locked engine and its state store, without the wire.

:class:`Domain` answers "what may this principal see" and "run this SQL as this
principal" for the Flight SQL server in :mod:`gateway.server`, and is usable on
its own (tests, the embedding API, the CLI). The owner may replace its policy
while it runs (:meth:`Domain.replace_policy`): the new policy is checked first,
then swapped in at once, and queries already streaming finish under the old one.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

import connectors
from gateway import policy_versions
from gateway.audit import QUERY, AuditLog
from gateway.dp import DpPlan, PrivateQueries
from gateway.dp.release import META as DP_META
from gateway.engine import Engine, EngineLimits
from gateway.errors import (
    ConfigError,
    InputError,
    NotSupportedError,
    PermissionDeniedError,
    QueryTimeoutError,
    StockadeError,
)
from gateway.ledger import Ledger
from gateway.limits import Deadline, RequestLimits
from gateway.parameters import Binding, Parameters, ParameterValues, bind
from gateway.policy_state import LruCache as LruCache  # re-exported for gateway.server
from gateway.policy_state import PolicyState, VisibleTable, no_parameters, redacting
from gateway.policy_state import plan_key as plan_key  # re-exported
from gateway.results import Answer, Execution, answer_key, look_ahead, marked
from gateway.snapshots import ContributionBound
from gateway.state import StateStore, User
from policy.access import catalog_for, dp_units
from policy.loader import read_policy_file
from policy.model import Policy
from policy.pipeline import QueryPlan
from policy.principal import Principal

log = logging.getLogger("stockade.domain")

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
#: Where the engines of replacement policies are built, under the data directory.
ENGINES_DIR = "engines"


class Domain:
    """One domain gateway's data plane.

    The policy and everything derived from it live in one :class:`PolicyState`
    (``state``); each query takes the state once, when it starts, and uses it to
    the end, so it sees one version of the policy even while the owner replaces
    it (:meth:`replace_policy`).
    """

    def __init__(self, policy: Policy, engine: Engine, store: StateStore, *,
                 text: str | None = None, limits: RequestLimits | None = None) -> None:
        self.started_at = time.time()  # for stockade.status
        self.store = store
        self.ledger = Ledger(store)
        self.audit = AuditLog(store)
        self._state = PolicyState(policy, engine, self.ledger, text=text, limits=limits)
        self._swap = threading.Lock()  # held for an instant: to take or to swap the state
        self._replacing = threading.Lock()  # one replacement at a time
        self._owns_store = True

    @classmethod
    def open(
        cls,
        policy_path: str | Path,
        data_dir: str | Path,
        *,
        limits: EngineLimits | None = None,
        request_limits: RequestLimits | None = None,
    ) -> Domain:
        """Load the policy, build and lock the engine, open the state store.

        ``request_limits`` bound what one request may ask (:mod:`gateway.limits`).

        The policy's dataset caps (``budget_cap``) are applied to the ledger here,
        when a gateway starts (not in :meth:`__init__`, which the read-only policy
        tools also use on a live state store), the domain's name is recorded in the
        store (:meth:`claim_name`), and the policy file's text is recorded as a new
        version when it differs from the newest one (see :mod:`gateway.policy_versions`).
        """
        text, policy = read_policy_file(policy_path)
        data_dir = Path(data_dir)
        # Engines of replaced policies left by a gateway that did not stop cleanly.
        shutil.rmtree(data_dir / ENGINES_DIR, ignore_errors=True)
        engine = build_engine(policy, data_dir / "engine", limits=limits)
        try:
            store = StateStore(data_dir)
        except BaseException:
            engine.close()
            raise
        try:
            domain = cls(policy, engine, store, text=text, limits=request_limits)
            domain.claim_name()
            domain.ledger.apply_policy_caps(policy)
            domain._state.version = policy_versions.record_if_new(store, text, by="file")
            return domain
        except BaseException:
            engine.close()
            store.close()
            raise

    def close(self) -> None:
        if not self._owns_store:  # a view (see :meth:`view`) closes nothing
            return
        try:
            self.audit.flush()
        except TimeoutError:  # pragma: no cover - a stuck disk
            log.error("audit records still queued at shutdown were not written")
        engine = self._state.engine
        engine.close()
        if engine.work_dir.parent.name == ENGINES_DIR:
            shutil.rmtree(engine.work_dir, ignore_errors=True)
        self.store.close()

    def claim_name(self) -> None:
        """Record the policy's domain name in the state store.

        The store checks the credentials networks derive for this domain against
        that name (:mod:`gateway.network_keys`); the ``stockade users`` commands
        read it there. Called by whoever serves the domain (not by :meth:`__init__`:
        the policy tools open live stores under candidate policies).
        """
        before = self.store.set_domain_name(self.name)
        if before is not None and before.lower() != self.name.lower():
            log.warning("the domain's name changed from %r to %r: users log in through a "
                        "network again after one direct login (or a new password)",
                        before, self.name)

    # -- the live policy --------------------------------------------------------------

    @property
    def state(self) -> PolicyState:
        """The live policy and what is derived from it (see :mod:`gateway.policy_state`)."""
        return self._state

    @property
    def policy(self) -> Policy:
        return self._state.policy

    @property
    def engine(self) -> Engine:
        return self._state.engine

    @property
    def schemas(self) -> dict[tuple[str, str], dict[str, str]]:
        return self._state.schemas

    @property
    def dp(self) -> PrivateQueries:
        return self._state.dp

    @property
    def policy_version(self) -> int | None:
        """The live policy's version in the state store (``None`` if never recorded)."""
        return self._state.version

    @property
    def name(self) -> str:
        return self.policy.domain.name

    @contextmanager
    def pinned(self) -> Iterator[PolicyState]:
        """The live state, whose engine stays open for the ``with`` block."""
        with self._swap:
            state = self._state
            state.engine.acquire()
        try:
            yield state
        finally:
            state.engine.release()

    def view(self, state: PolicyState | None = None) -> Domain:
        """This domain answering under ``state`` (default: the live one, as it is now).

        The view shares the store, the ledger and the audit log; closing it closes
        nothing. The policy tools use it to explain a query under a candidate policy.
        """
        view = copy.copy(self)
        view._state = state if state is not None else self._state
        view._swap = threading.Lock()
        view._replacing = threading.Lock()
        view._owns_store = False
        return view

    def replace_policy(
        self,
        yaml_text: str,
        *,
        by: str,
        comment: str | None = None,
        expected_version: int | None = None,
        principal: Principal | None = None,
    ) -> Replacement:
        """Make ``yaml_text`` the live policy, atomically and without a restart.

        The text is checked as ``stockade policy check --data-dir`` would (and
        ``principal``, when given, must keep an admin role); its engine is built
        in a directory of its own. Then the policy file is rewritten atomically,
        the version recorded, the dataset caps applied, and the new state swapped
        in: queries that started before finish on the old engine, which is closed
        and deleted when the last of them ends; every query after sees the new
        policy. A refused replacement changes nothing.
        """
        from gateway.policy_candidate import prepare

        if self.policy.file is None:
            raise NotSupportedError("This domain was not started from a policy file, "
                                    "so its policy cannot be replaced.")
        with self._replacing:
            old = self._state
            if expected_version is not None and expected_version != old.version:
                raise InputError(
                    f"Field 'expected_version': the live policy is version {old.version}, "
                    f"not {expected_version}; reload and retry.")
            if old.text is not None and old.text == yaml_text:
                return Replacement(old, old, changed=False)
            candidate = prepare(self, yaml_text, principal=principal)
            if candidate.state is None or candidate.errors:
                candidate.discard()
                raise candidate.failure()
            new = candidate.state
            try:
                self._persist(old, new, by=by, comment=comment)
            except BaseException:
                candidate.discard()
                raise
            with self._swap:
                self._state = new
            if new.policy.domain.name != old.policy.domain.name:
                self.claim_name()
        old.engine.retire()
        log.info("policy version %s by %s is live (was version %s)", new.version, by,
                 old.version)
        return Replacement(new, old, changed=True)

    def _persist(self, old: PolicyState, new: PolicyState, *, by: str,
                 comment: str | None) -> None:
        """Write the file, record the version, apply the caps; undone if any step fails."""
        assert new.policy.file is not None and new.text is not None
        path = Path(new.policy.file)
        old_text = old.text if old.text is not None else path.read_text(encoding="utf-8")
        policy_versions.write_policy_file(path, new.text)
        try:
            new.version = policy_versions.record(self.store, new.text, by=by, comment=comment)
            try:
                self.ledger.apply_policy_caps(new.policy)
            except BaseException:
                policy_versions.forget(self.store, new.version)
                raise
        except BaseException:
            policy_versions.write_policy_file(path, old_text)
            raise

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
        with self.pinned() as state:
            return state.catalog(principal)

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
        with self.pinned() as state:
            return state.plan(principal, sql, dialect=dialect, for_schema=for_schema)

    def result_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: ParameterValues = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        unclamped: bool = False,
    ) -> pa.Schema:
        """The schema of ``sql``'s answer (a prepared statement, GetSchema).

        Nothing runs; a refusal is audited. Planning counts against the role's
        time limit. ``unclamped``: a dp answer's parts as a network node asks for
        them (:class:`gateway.dp.queries.DpPlan`).
        """
        started = time.perf_counter()
        try:
            with self.pinned() as state:
                deadline = Deadline(state.policy.limits_for(principal.role).timeout_s)
                return state.result_schema(principal, sql, Parameters.of(parameters),
                                           dialect=dialect, epsilon=epsilon, deadline=deadline,
                                           unclamped=unclamped)
        except Exception as exc:
            self._audit(principal, sql, started, error=exc)
            raise

    # -- dp mode --------------------------------------------------------------------

    def reads_dp(self, principal: Principal, sql: str, *, dialect: str | None = None) -> bool:
        """Whether ``sql`` reads a table that is in ``dp`` mode for ``principal``."""
        with self.pinned() as state:
            return state.reads_dp(principal, sql, dialect=dialect)

    def dp_plan(
        self,
        principal: Principal,
        sql: str,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        unclamped: bool = False,
    ) -> DpPlan | None:
        """The dp plan of ``sql``, or None when it reads no ``dp`` table.

        ε and δ: a leading ``/* epsilon: …; delta: … */`` comment wins over
        ``epsilon`` (the session's or connection's), which wins over the grant's
        ``epsilon_per_query``. ``unclamped``: release the noisy parts unclamped
        (see :class:`gateway.dp.queries.DpPlan`).
        """
        with self.pinned() as state:
            return state.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon,
                                 unclamped=unclamped)

    def dp_cost(
        self, principal: Principal, sql: str, *, dialect: str | None = None,
        epsilon: float | None = None,
    ) -> dict[str, Any]:
        """What ``sql`` would cost ``principal`` in ``dp`` mode, charging nothing."""
        with self.pinned() as state:
            plan = state.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon)
            if plan is None:
                raise InputError("This query reads no table in dp mode: it costs no budget.")
            cost = state.dp.cost(plan)
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
        with self.pinned() as state:
            return state.parameter_schema(principal, sql, dialect=dialect)

    def answer_schema(
        self,
        principal: Principal,
        sql: str,
        parameters: ParameterValues = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        unclamped: bool = False,
    ) -> pa.Schema:
        """The schema of the answer the caller is about to fetch (GetFlightInfo).

        The answer is computed here, within the role's limits (one deadline for
        planning and every parameter row, ``max_rows`` rows in all), so that its
        schema is final: a ``dp`` answer carries ε spent and remaining, and a cut
        answer says so (:mod:`gateway.results`). Clients such as ADBC and JDBC read
        schema metadata from GetFlightInfo; the DoGet that follows returns the
        answer held here (a ``dp`` one, or one read whole), or runs the query again.
        """
        started = time.perf_counter()
        with self.pinned() as state:
            request = self._request(state, principal, sql, parameters, dialect, epsilon,
                                    started, unclamped)
            if request.dp is not None:
                paid = self._dp_answer(state, principal, request.dp, sql, request.deadline)
                state.paid.put((principal.user, request.dp.key), paid)
                return paid.schema
            answer = self._answer(state, request)
            if answer.table is not None:
                state.answers.put(request.key, answer.table)
            else:
                state.truncation.put(request.key, answer.truncated)
                answer.close()  # too long to hold: the DoGet runs it again
        return answer.schema

    def _request(self, state: PolicyState, principal: Principal, sql: str,
                 parameters: ParameterValues, dialect: str | None, epsilon: float | None,
                 started: float, unclamped: bool = False) -> _Request:
        """Plan one request (its deadline starts now); a refusal is audited here
        (``unclamped``: a dp answer's parts, see :class:`gateway.dp.queries.DpPlan`)."""
        limits = state.policy.limits_for(principal.role)
        request = _Request(principal, sql, started, Deadline(limits.timeout_s), limits.max_rows)
        params = Parameters.of(parameters)
        try:
            request.dp = state.dp_plan(principal, sql, dialect=dialect, epsilon=epsilon,
                                       unclamped=unclamped)
            if request.dp is None:
                request.plan = state.plan(principal, sql, dialect=dialect,
                                          deadline=request.deadline, to_run=True)
                request.bindings = bind(request.plan.expression, params, required=True)
            else:
                no_parameters(params)
        except Exception as exc:
            self._audit(principal, sql, started, plan=request.plan, error=exc)
            raise
        return request

    def _answer(self, state: PolicyState, request: _Request, *,
                truncated: bool | None = None) -> Answer:
        """Start the request's runs; read ahead unless whether it is cut is known.

        An answer read whole is audited here; a longer one when its stream ends.
        """
        plan = request.plan
        assert plan is not None
        try:
            with redacting(plan):
                execution = Execution(state.engine, plan.sql, request.bindings,
                                      deadline=request.deadline, max_rows=request.max_rows)
                if truncated is not None:
                    schema = marked(execution.schema, truncated=truncated,
                                    max_rows=request.max_rows)
                    return Answer(schema, truncated, execution, batches=execution.batches)
                try:
                    answer = look_ahead(execution)
                except BaseException:
                    execution.close()
                    raise
        except Exception as exc:
            self._audit(request.principal, request.sql, request.started, plan=plan, error=exc)
            raise
        if answer.table is not None:
            self._audit(request.principal, request.sql, request.started, plan=plan,
                        rows=answer.table.num_rows)
        return answer

    def _dp_answer(self, state: PolicyState, principal: Principal, dp: DpPlan,
                   sql: str, deadline: Deadline | None = None) -> pa.Table:
        """Compute (and pay for) a dp answer; audited here, with the ε/δ charged."""
        limits = state.policy.limits_for(principal.role)
        deadline = deadline or Deadline(limits.timeout_s)
        log.info("dp query by %s on %s.%s at ε=%g", principal.user, dp.dataset, dp.table,
                 dp.epsilon)
        started = time.perf_counter()
        tables = [{"dataset": dp.dataset, "table": dp.table, "mode": "dp"}]
        try:
            try:
                answer = state.dp.execute(dp, timeout_s=deadline.timeout())
            except QueryTimeoutError:
                raise deadline.error() from None
        except Exception as exc:  # a failure after the charge still records what it cost
            self._audit(principal, sql, started, rewritten=dp.query.aggregate_sql,
                        tables=tables, error=exc, epsilon=getattr(exc, "epsilon", 0.0),
                        delta=getattr(exc, "delta", 0.0))
            raise
        meta = answer.schema.metadata or {}
        self._audit(principal, sql, started, rewritten=dp.query.aggregate_sql, tables=tables,
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
        detail = getattr(error, "detail", None)
        if detail:  # what the engine said: for the owner only, never for the analyst
            details["error_detail"] = detail
        if not complete:
            details["complete"] = False
        self.audit.safe_append(QUERY, principal.user, details)

    def execute(
        self,
        principal: Principal,
        sql: str,
        parameters: ParameterValues = None,
        *,
        dialect: str | None = None,
        epsilon: float | None = None,
        unclamped: bool = False,
    ) -> pa.RecordBatchReader:
        """Run ``sql`` as ``principal`` (DoGet); audited once.

        ``parameters``: one row of values, a mapping of named values, or an Arrow
        batch whose rows are run one after another as one request: the role's time
        limit covers planning and every run, and its ``max_rows`` the rows of all
        of them (:mod:`gateway.results`). An answer computed at GetFlightInfo for
        the same request (:meth:`answer_schema`) is returned as it was computed.
        The stream reads the engine of the policy that was live when the query
        started, to its end; it is audited when it ends (a refusal at once, an
        answer held or read whole where it was computed).
        """
        started = time.perf_counter()
        with self.pinned() as state:
            request = self._request(state, principal, sql, parameters, dialect, epsilon,
                                    started, unclamped)
            if request.dp is not None:
                paid = state.paid.pop((principal.user, request.dp.key))
                if paid is None:
                    paid = self._dp_answer(state, principal, request.dp, sql, request.deadline)
                return pa.RecordBatchReader.from_batches(paid.schema, paid.to_batches())
            assert request.plan is not None
            log.info("query by %s: %s", principal.user, request.plan.display_sql)
            held = state.answers.pop(request.key)
            if held is not None:
                return pa.RecordBatchReader.from_batches(held.schema, held.to_batches())
            # Not read whole at GetFlightInfo (or not asked there): read ahead here.
            answer = self._answer(state, request, truncated=state.truncation.pop(request.key))
            if answer.table is not None:
                return answer.reader()
        plan, batches = request.plan, answer.reader()

        def audited() -> Iterator[pa.RecordBatch]:
            rows, complete, error = 0, False, None
            try:
                with redacting(plan):
                    for batch in batches:
                        rows += batch.num_rows
                        yield batch
                complete = True
            except Exception as exc:
                error = exc
                raise
            finally:
                answer.close()
                self._audit(principal, sql, started, plan=plan, rows=rows,
                            complete=complete or error is not None, error=error)

        return pa.RecordBatchReader.from_batches(answer.schema, audited())


@dataclass
class _Request:
    """One query request, planned: its deadline, row cap, and plan with its bindings."""

    principal: Principal
    sql: str
    started: float
    deadline: Deadline
    max_rows: int
    dp: DpPlan | None = None
    plan: QueryPlan | None = None
    bindings: list[Binding] = field(default_factory=list)

    @property
    def key(self) -> tuple[Any, ...]:
        """Which request an answer held between GetFlightInfo and DoGet belongs to."""
        assert self.plan is not None
        return answer_key(self.principal.user, self.plan.sql, self.bindings)


@dataclass(frozen=True)
class Replacement:
    """What :meth:`Domain.replace_policy` did: the state now live and the one before.

    ``changed`` is false when the text was the live policy's already (nothing
    was recorded or swapped).
    """

    state: PolicyState
    previous: PolicyState
    changed: bool


def build_engine(
    policy: Policy, work_dir: str | Path, *, limits: EngineLimits | None = None
) -> Engine:
    """Build and start the locked engine over the policy's sources, in ``work_dir``.

    Relative source paths were resolved against the policy file by the loader;
    ``base_dir`` below only matters to connectors that resolve more themselves.
    Datasets declaring ``engine: {type: spark}`` are registered in one Spark
    engine (in ``work_dir/spark``) and the two are routed as one
    (:class:`gateway.engine_routed.RoutedEngine`, which has the engine's interface).
    """
    engine = Engine(Path(work_dir), limits=limits)
    spark_specs = {ds: d.engine for ds, d in policy.datasets.items()
                   if d.engine is not None and d.engine.type == "spark"}
    spark: Any = None
    if spark_specs:
        from gateway.engine_spark import SparkEngine, SparkSettings

        specs = {(s.master, s.remote) for s in spark_specs.values()}
        if len(specs) > 1:
            raise ConfigError("All Spark datasets of a domain use the same engine (one Spark "
                              "session per process): give them the same 'master' or 'remote'")
        master, remote = specs.pop()
        spark = SparkEngine(Path(work_dir) / "spark",
                            SparkSettings(master=master, remote=remote))
    base_dir = Path(policy.file).resolve().parent if policy.file else Path.cwd()
    # Bounded dp snapshots (gateway.snapshots); a routed engine samples in every query.
    units = dp_units(policy) if not spark_specs else {}
    for number, (ds_name, dataset) in enumerate(sorted(policy.datasets.items())):
        for t_number, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            options = {k: v for k, v in asdict(table.source).items() if v is not None}
            connector = connectors.get(table.source.format)
            alias = f"src_{number}_{t_number}_{_UNSAFE.sub('_', t_name)}"
            plan = connector.plan(options, base_dir=base_dir, alias=alias)
            if ds_name in spark_specs:
                spark.add_table(ds_name, t_name, plan, options)
            else:
                unit = units.get((ds_name, t_name))
                engine.add_table(ds_name, t_name, plan,
                                 bound=ContributionBound(*unit) if unit else None)
    engine.start()
    if spark is None:
        return engine
    try:
        spark.start()
    except BaseException:
        engine.close()
        spark.close()
        raise
    from gateway.engine_routed import RoutedEngine

    routed = RoutedEngine(engine, {ds: ("spark", spark) for ds in spark_specs})
    return cast(Engine, routed)  # the same reading interface
