"""The owner's tools over a policy: ``stockade policy check`` and ``policy explain``.

:func:`open_domain` loads a policy and builds its engine in a private temporary
directory (never in a data directory a running gateway may be using), with the
users of ``data_dir`` when one is given. Then:

- :func:`check_types` binds every row filter (as a condition) and every mask on
  DuckDB, for every table and every role that can read it, and the rewritten
  ``SELECT *`` of each ``raw`` table, for a sample principal whose ``{user.X}``
  attributes are NULL. A NULL has no type of its own in DuckDB (it converts to
  whatever it meets), so this checks everything *around* the attributes —
  columns, operators, functions, literals — and never fails because the
  attribute's type is unknown. :func:`check_users` then binds the attributes of
  each real user, which checks the attributes themselves.
- :func:`explain` shows, without running it, what a query becomes for a user;
  for a query on ``dp`` tables, also its aggregate query, the noise of each
  column, its ε/δ cost and the user's remaining budget, charging nothing.

Errors are :class:`~gateway.errors.PolicyError` located at the YAML line:

>>> text = "datasets:\\n  s:\\n    tables:\\n      t:\\n        row_filter: x > 1\\n"
>>> yaml_line(text, "datasets.s.tables.t.row_filter")
5
>>> yaml_line(text, "roles.r.datasets.s.row_filter (t)") is None
True
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
import yaml
from sqlglot import exp

from gateway.domain import Domain, build_engine
from gateway.dp import DpPlan
from gateway.dp.release import META as DP_META
from gateway.engine import EngineLimits, engine_error
from gateway.errors import ConfigError, PolicyError, StockadeError
from gateway.ledger import DELTA_UNIT, EPSILON_UNIT, to_units
from gateway.state import STATE_FILE, StateStore
from policy.access import dataset_grant, table_access
from policy.expressions import (
    attributes_used,
    bind_attributes,
    bind_secrets,
    parse_fragment,
)
from policy.loader import load_policy
from policy.model import Policy
from policy.principal import Principal

#: The sample principal's user name in type checks.
SAMPLE_USER = "policy-check"
_WHERE_SUFFIX = re.compile(r"\s*\(.*\)\s*$")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


# -- locating errors in the YAML ------------------------------------------------------


def yaml_node(text: str, where: str) -> yaml.Node | None:
    """The YAML node at a dotted path (``a.b[0].c``; a trailing ``(…)`` is ignored)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for name, index in _SEGMENT.findall(_WHERE_SUFFIX.sub("", where)):
        if node is None:
            return None
        if index:
            if not isinstance(node, yaml.SequenceNode) or int(index) >= len(node.value):
                return None
            node = node.value[int(index)]
            continue
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if getattr(k, "value", None) == name), None)
    return node


def yaml_line(text: str, where: str) -> int | None:
    """The 1-based line of the YAML node at ``where``, or ``None``."""
    node = yaml_node(text, where)
    return None if node is None else int(node.start_mark.line) + 1


def _policy_text(policy: Policy) -> str:
    if policy.file is None:
        return ""
    try:
        return Path(policy.file).read_text(encoding="utf-8")
    except OSError:
        return ""


def located(err: PolicyError, text: str) -> PolicyError:
    """``err`` with its YAML line added, when it has a path but no line."""
    if err.line is not None or not err.where or not text:
        return err
    line = yaml_line(text, err.where)
    if line is None:
        return err
    prefix = f"{err.file}: " if err.file is not None else ""
    prefix += f"{err.where}: "
    message = err.message[len(prefix):] if err.message.startswith(prefix) else err.message
    return PolicyError(message, where=err.where, file=err.file, line=line)


# -- opening --------------------------------------------------------------------------


@contextmanager
def open_domain(
    policy_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    limits: EngineLimits | None = None,
) -> Iterator[Domain]:
    """A :class:`Domain` for the tools: engine in a temporary directory, users from
    ``data_dir`` (which must hold a state store) or none."""
    if data_dir is not None and not (Path(data_dir) / STATE_FILE).exists():
        raise ConfigError(
            f"No Stockade state store in {data_dir}: give the --data-dir the gateway uses "
            "(users are added there with `stockade users add … --data-dir DIR`)."
        )
    policy = load_policy(policy_path)
    with tempfile.TemporaryDirectory(prefix="stockade-policy-") as tmp:
        engine = build_engine(policy, Path(tmp) / "engine",
                              limits=limits or EngineLimits(memory_limit="1GB", threads=1))
        try:
            store = StateStore(data_dir if data_dir is not None else Path(tmp) / "state")
        except BaseException:
            engine.close()
            raise
        try:
            domain = Domain(policy, engine, store)
        except PolicyError as err:
            engine.close()
            store.close()
            raise located(err, _policy_text(policy)) from None
        except BaseException:
            engine.close()
            store.close()
            raise
        try:
            yield domain
        finally:
            domain.close()


def summary(domain: Domain) -> str:
    """One line saying what the policy holds."""
    policy = domain.policy
    tables = sum(len(d.tables) for d in policy.datasets.values())
    return (f"{policy.file}: OK — domain '{domain.name}', {len(policy.datasets)} dataset(s), "
            f"{tables} table(s), {len(policy.roles)} role(s)")


# -- typed checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Fragment:
    kind: str  # "row filter" or "mask"
    text: str
    where: str


def _fragments(policy: Policy, role: str, dataset: str, table: str) -> list[_Fragment]:
    """The row filters and masks that apply when ``role`` reads ``dataset.table``."""
    found = policy.datasets[dataset].tables[table]
    out: list[_Fragment] = []
    base = f"datasets.{dataset}.tables.{table}"
    if found.row_filter:
        out.append(_Fragment("row filter", found.row_filter, f"{base}.row_filter"))
    grant = dataset_grant(policy, Principal(SAMPLE_USER, role), dataset)
    if grant is not None and grant.row_filter:
        out.append(_Fragment("row filter", grant.row_filter,
                             f"roles.{role}.datasets.{dataset}.row_filter"))
    t_grant = grant.tables.get(table) if grant is not None else None
    if t_grant is not None and t_grant.row_filter:
        out.append(_Fragment("row filter", t_grant.row_filter,
                             f"roles.{role}.datasets.{dataset}.tables.{table}.row_filter"))
    for column, policy_column in found.columns.items():
        if policy_column.mask is not None:
            out.append(_Fragment("mask", policy_column.mask, f"{base}.columns.{column}.mask"))
    return out


def _sample_principal(role: str, fragments: list[_Fragment]) -> Principal:
    names = {n for f in fragments for n in attributes_used(parse_fragment(f.text))}
    return Principal(SAMPLE_USER, role, {name: None for name in names})


def _quoted(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql("duckdb")


def _bind_fragment(domain: Domain, fragment: _Fragment, principal: Principal,
                   dataset: str, table: str) -> str | None:
    """Why ``fragment`` does not bind on DuckDB for ``principal``, or ``None``.

    The fragment is evaluated on one row of NULLs with the table's exact types
    (an empty outer join), which reads no data and still evaluates constants.
    """
    parsed = parse_fragment(fragment.text)
    try:
        value = bind_secrets(bind_attributes(parsed, principal), domain.policy.secrets)[0]
    except StockadeError as err:
        return err.message
    reason = _bind_sql(domain, fragment, parsed, value.sql("duckdb"), dataset, table)
    for name, secret in domain.policy.secrets.items():
        if reason and secret:
            reason = reason.replace(secret, f"{{secret.{name}}}")
    return reason


def _bind_sql(domain: Domain, fragment: _Fragment, parsed: exp.Expr, value: str,
              dataset: str, table: str) -> str | None:
    source = f"{_quoted(dataset)}.{_quoted(table)}"
    row = (f"(SELECT {_quoted(table)}.* FROM (SELECT 1) AS one LEFT JOIN "
           f"(SELECT * FROM {source} LIMIT 0) AS {_quoted(table)} ON true) AS {_quoted(table)}")
    sql = f'SELECT ({value}) AS "value" FROM {row}'
    try:
        cursor = domain.engine.cursor()
        try:
            described = cursor.execute(f"DESCRIBE {sql}").fetchall()
        except duckdb.Error as exc:
            raise engine_error(exc) from None
        finally:
            cursor.close()
        domain.engine.execute(sql, timeout_s=30).read_all()
    except StockadeError as err:
        return f"it does not type-check on DuckDB: {err.message}"
    duck_type = str(described[0][1])
    if (fragment.kind == "row filter" and duck_type not in ("BOOLEAN", '"NULL"', "NULL")
            and not isinstance(parsed, exp.Placeholder)):
        return (f"a row filter must be a condition (true or false), but this one gives "
                f"{duck_type}; compare it with something, e.g. \"{fragment.text} = …\"")
    return None


def _error(policy: Policy, text: str, where: str, message: str) -> PolicyError:
    return located(PolicyError(message, where=where, file=policy.file), text)


def check_types(domain: Domain, *, text: str | None = None) -> list[PolicyError]:
    """Bind every filter and mask, and each ``raw`` table's rewrite, on the real engine.

    ``text`` is the policy's YAML, to locate errors (default: the policy file's).
    """
    policy = domain.policy
    text = _policy_text(policy) if text is None else text
    # (where, what, reason) -> the roles it fails for, in order
    problems: dict[tuple[str, str, str], list[str]] = {}
    failed: set[tuple[str, str, str]] = set()
    for role in sorted(policy.roles):
        for (dataset, table) in sorted(domain.schemas):
            if table_access(policy, Principal(SAMPLE_USER, role), dataset, table) is None:
                continue
            fragments = _fragments(policy, role, dataset, table)
            principal = _sample_principal(role, fragments)
            for fragment in fragments:
                reason = _bind_fragment(domain, fragment, principal, dataset, table)
                if reason is None:
                    continue
                failed.add((role, dataset, table))
                what = f"The {fragment.kind} {fragment.text!r} of table '{dataset}.{table}'"
                problems.setdefault((fragment.where, what, reason), []).append(role)
    errors = []
    for (where, what, reason), roles in problems.items():
        who = ("role " if len(roles) == 1 else "roles ") + ", ".join(f"'{r}'" for r in roles)
        errors.append(_error(policy, text, where, f"{what}, read by {who}: {reason}"))
    for role in sorted(policy.roles):
        for (dataset, table) in sorted(domain.schemas):
            access = table_access(policy, Principal(SAMPLE_USER, role), dataset, table)
            if access is None or access.mode != "raw" or (role, dataset, table) in failed:
                continue
            principal = _sample_principal(role, _fragments(policy, role, dataset, table))
            try:
                plan = domain.plan(principal, f"SELECT * FROM {_quoted(dataset)}.{_quoted(table)}",
                                   for_schema=True)
                domain.engine.result_schema(plan.sql)
            except StockadeError as err:
                errors.append(_error(
                    policy, text, f"roles.{role}.datasets.{dataset}",
                    f"SELECT * FROM {dataset}.{table} as role '{role}' fails: {err.message}"))
    return errors


def check_users(domain: Domain, *, text: str | None = None
                ) -> tuple[list[PolicyError], list[str]]:
    """Bind each stored user's attributes into the filters they are under.

    Returns ``(errors, warnings)``: a filter that fails for a real user is an
    error; a user whose role the policy lacks is a warning (they cannot log in).
    ``text`` is as for :func:`check_types`.
    """
    policy = domain.policy
    text = _policy_text(policy) if text is None else text
    errors: list[PolicyError] = []
    warnings: list[str] = []
    for user in domain.store.list_users():
        if user.role not in policy.roles:
            warnings.append(f"user '{user.name}' has role '{user.role}', which this policy "
                            "does not define: they cannot log in")
            continue
        principal = Principal(user.name, user.role, user.attributes)
        for (dataset, table) in sorted(domain.schemas):
            if table_access(policy, principal, dataset, table) is None:
                continue
            for fragment in _fragments(policy, user.role, dataset, table):
                if not attributes_used(parse_fragment(fragment.text)):
                    continue
                reason = _bind_fragment(domain, fragment, principal, dataset, table)
                if reason is not None:
                    errors.append(_error(
                        policy, text, fragment.where,
                        f"The {fragment.kind} of table '{dataset}.{table}' for user "
                        f"'{user.name}' (role '{user.role}'): {reason}"))
    return errors, warnings


# -- explain --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableDecision:
    """What the policy does to one table a query reads."""

    dataset: str
    table: str
    mode: str
    row_filters: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    masks: Mapping[str, str] = field(default_factory=dict)
    min_group_size: int | None = None
    # dp mode only: the privacy unit, its rows bound and each bounded column's bounds.
    privacy_unit: str | None = None
    max_rows_per_unit: int | None = None
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset, "table": self.table, "mode": self.mode,
            "row_filters": list(self.row_filters), "hidden": list(self.hidden),
            "masks": dict(self.masks), "min_group_size": self.min_group_size,
        }
        if self.mode == "dp":
            out["privacy_unit"] = self.privacy_unit
            out["max_rows_per_unit"] = self.max_rows_per_unit
            out["bounds"] = {c: {"lower": lo, "upper": hi} for c, (lo, hi) in self.bounds.items()}
        return out

    def to_text(self) -> list[str]:
        lines = [f"table {self.dataset}.{self.table}: {self.mode}"]
        if self.min_group_size is not None:
            lines.append(f"  min group size: {self.min_group_size}")
        if self.mode == "dp":
            unit = (f"{self.privacy_unit} (at most {self.max_rows_per_unit or 1} row(s) per "
                    "unit)" if self.privacy_unit else "none (each row is a unit)")
            lines.append(f"  privacy unit: {unit}")
            lines.append("  bounds: " + (", ".join(
                f"{c} [{_number(lo)}, {_number(hi)}]" for c, (lo, hi) in self.bounds.items())
                or "none (only COUNT is possible)"))
        lines.append("  row filters: " + (" AND ".join(f"({f})" for f in self.row_filters)
                                          if self.row_filters else "none"))
        lines.append("  hidden columns: " + (", ".join(self.hidden) or "none"))
        lines.append("  masks:" + ("" if self.masks else " none"))
        lines.extend(f"    {column}: {mask}" for column, mask in self.masks.items())
        return lines


def _number(value: float | None) -> str:
    """A bound or an amount as written: ``110`` rather than ``110.0``.

    >>> _number(110.0), _number(0.25), _number(None), _number(1e-06)
    ('110', '0.25', 'none', '1e-06')
    """
    return "none" if value is None else f"{value:.12g}"


@dataclass(frozen=True)
class DpDecision:
    """What a query on a ``dp`` table would cost and release; nothing is charged."""

    epsilon: float  # per mechanism
    delta: float
    cost_epsilon: float
    cost_delta: float
    answered_before: bool  # a repeat is answered from the stored answer at no cost
    allowance_epsilon: float
    allowance_delta: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    columns: tuple[Mapping[str, Any], ...]  # per noisy column: mechanism, scale, half-width
    aggregate_sql: str  # over ``dp.rel``: the relation is the explanation's ``sql``

    @property
    def charge(self) -> tuple[float, float]:
        """What running the query now would charge (ε, δ)."""
        if self.answered_before:
            return (0.0, 0.0)
        return (self.cost_epsilon, self.cost_delta)

    @property
    def affordable(self) -> bool:
        """Whether the remaining budget covers :attr:`charge` (exactly, in ledger units)."""
        eps, delta = self.charge
        return (to_units(eps, EPSILON_UNIT) <= to_units(self.remaining_epsilon, EPSILON_UNIT)
                and to_units(delta, DELTA_UNIT) <= to_units(self.remaining_delta, DELTA_UNIT))

    def to_json(self) -> dict[str, Any]:
        eps, delta = self.charge
        return {
            "epsilon_per_query": self.epsilon,
            "delta_per_query": self.delta,
            "cost": {"epsilon": self.cost_epsilon, "delta": self.cost_delta},
            "answered_before": self.answered_before,
            "charge": {"epsilon": eps, "delta": delta},
            "affordable": self.affordable,
            "budget": {
                "epsilon_allowance": self.allowance_epsilon,
                "epsilon_spent": self.spent_epsilon,
                "epsilon_remaining": self.remaining_epsilon,
                "delta_allowance": self.allowance_delta,
                "delta_spent": self.spent_delta,
                "delta_remaining": self.remaining_delta,
            },
            "columns": [dict(c) for c in self.columns],
            "aggregate_sql": self.aggregate_sql,
        }

    def to_text(self) -> list[str]:
        eps, delta = self.charge
        lines = [
            f"dp: ε {_number(self.epsilon)} and δ {_number(self.delta)} per mechanism",
            f"  cost: ε {_number(self.cost_epsilon)}, δ {_number(self.cost_delta)} "
            "(explain charges nothing)",
        ]
        if self.answered_before:
            lines.append("  answered before: running it again returns the stored answer "
                         "at no cost")
        lines.append(
            f"  budget: ε {_number(self.remaining_epsilon)} of {_number(self.allowance_epsilon)}"
            f" left ({_number(self.spent_epsilon)} spent), δ {_number(self.remaining_delta)} "
            f"of {_number(self.allowance_delta)} left")
        if not self.affordable:
            lines.append(f"  not enough budget: running it needs ε {_number(eps)}, "
                         f"δ {_number(delta)}")
        lines.append("  noise per column (95% confidence half-width):"
                     + ("" if self.columns else " none"))
        for c in self.columns:
            scales = ", ".join(f"{s:.4g}" for s in c["scale"])
            widths = ", ".join(f"{w:.4g}" for w in c["ci95_half_width"])
            if c["derived"]:
                lines.append(f"    {c['column']}: derived from {c['mechanism']} noise of "
                             f"scales {scales} (half-widths ±{widths})")
            else:
                coverage = c.get("ci95_coverage")
                note = (f" (a whole number: covers {coverage:.1%})"
                        if coverage is not None and coverage != 0.95 else "")
                lines.append(f"    {c['column']}: {c['mechanism']}, scale {scales}, "
                             f"±{widths}{note}")
        return lines


@dataclass(frozen=True)
class Explanation:
    """A query as the gateway would run it for one user (nothing is run)."""

    user: str
    role: str
    attributes: Mapping[str, Any]
    dialect: str
    tables: tuple[TableDecision, ...]
    sql: str
    max_rows: int
    timeout_s: float
    dp: DpDecision | None = None  # for a query on dp tables; ``sql`` is then the relation

    def to_json(self) -> dict[str, Any]:
        out = {
            "user": self.user,
            "role": self.role,
            "attributes": dict(self.attributes),
            "dialect": self.dialect,
            "tables": [t.to_json() for t in self.tables],
            "sql": self.sql,
            "limits": {"max_rows": self.max_rows, "timeout_s": self.timeout_s},
        }
        if self.dp is not None:
            out["dp"] = self.dp.to_json()
        return out

    def to_text(self) -> str:
        attributes = ", ".join(f"{k}={v!r}" for k, v in sorted(self.attributes.items()))
        lines = [
            f"user: {self.user}",
            f"role: {self.role}" + (f" (attributes: {attributes})" if attributes else ""),
            f"dialect: {self.dialect}",
            f"limits: at most {self.max_rows:,} rows, {self.timeout_s:g} s",
        ]
        for t in self.tables:
            lines.extend(t.to_text())
        if self.dp is not None:
            lines.extend(self.dp.to_text())
            lines.append("Aggregate query (over dp.rel, the relation below):")
            lines.append(self.dp.aggregate_sql)
            lines.append("relation dp.rel (the table under the policy):")
            lines.append(self.sql)
            return "\n".join(lines)
        lines.append("rewritten SQL:")
        lines.append(self.sql)
        return "\n".join(lines)


_SHOWN_SECRET = re.compile(r"\{secret\.([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_STANDIN = "__stockade_shown_secret_"


def pretty_sql(sql: str) -> str:
    """``sql`` pretty-printed; ``{secret.NAME}`` markers are kept as they are.

    >>> print(pretty_sql("SELECT md5(x || {secret.salt}) AS h FROM t"))
    SELECT
      MD5(x || {secret.salt}) AS h
    FROM t
    """
    text = _SHOWN_SECRET.sub(lambda m: _SECRET_STANDIN + m.group(1), sql)
    try:
        pretty = sqlglot.transpile(text, read="duckdb", write="duckdb", pretty=True)[0]
    except Exception:  # shown as is when sqlglot cannot read it back
        return sql
    return re.sub(_SECRET_STANDIN + r"(\w+)", lambda m: f"{{secret.{m.group(1)}}}", pretty)


def _mask_as_written(text: str, dataset: str, table: str, column: str, fallback: str) -> str:
    """A mask as the owner wrote it in the YAML (so no secret's value is shown)."""
    node = yaml_node(text, f"datasets.{dataset}.tables.{table}.columns.{column}.mask")
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    if node is not None:
        return text[node.start_mark.index:node.end_mark.index]
    return fallback


def _decision(domain: Domain, principal: Principal, text: str, dataset: str, table: str,
              mode: str) -> TableDecision:
    """What the policy does to ``dataset.table`` for ``principal``, as shown to the owner."""
    access = table_access(domain.policy, principal, dataset, table)
    if access is None:  # pragma: no cover - plans only hold readable tables
        raise PolicyError(f"Table '{dataset}.{table}' is not readable by this user")
    secrets = domain.policy.secrets
    filters = tuple(  # as shown: a secret reads {secret.NAME}
        bind_secrets(bind_attributes(parse_fragment(f), principal), secrets)[1].sql("duckdb")
        for f in access.row_filters
    )
    columns = domain.schemas.get((dataset, table), {})
    hidden = tuple(c for c in columns if access.is_hidden(c))
    masks = {c: _mask_as_written(text, dataset, table, c, m)
             for c, m in access.masks.items() if not access.is_hidden(c)}
    if mode != "dp":
        return TableDecision(dataset, table, mode, filters, hidden, masks, access.min_group_size)
    bounds = {c: (p.lower, p.upper) for c, p in access.columns.items()
              if (p.lower is not None or p.upper is not None) and not access.is_hidden(c)}
    return TableDecision(dataset, table, mode, filters, hidden, masks, access.min_group_size,
                         privacy_unit=access.privacy_unit,
                         max_rows_per_unit=access.max_rows_per_unit or 1, bounds=bounds)


def _shown(domain: Domain, sql: str) -> str:
    """``sql`` pretty-printed, any secret value of the policy written ``{secret.NAME}``."""
    for name, value in domain.policy.secrets.items():
        if value:
            quoted = "'" + value.replace("'", "''") + "'"
            sql = sql.replace(quoted, f"{{secret.{name}}}").replace(value, f"{{secret.{name}}}")
    return pretty_sql(sql)


def explain(
    domain: Domain,
    user_name: str,
    sql: str,
    *,
    dialect: str | None = None,
    epsilon: float | str | None = None,
    text: str | None = None,
) -> Explanation:
    """What ``sql`` becomes for the stored user ``user_name``; raises if it is refused.

    ``epsilon`` is the per-query ε of a query on ``dp`` tables (default: the
    grant's ``epsilon_per_query``; a leading ``/* epsilon: … */`` comment wins).
    ``text`` is the policy's YAML, to show masks as written (default: the
    policy file's). Nothing is run and nothing is charged.
    """
    from gateway.dialects import check_epsilon, resolve_dialect

    user = domain.store.get_user(user_name)
    principal = domain.principal_for(user)
    resolved, _ = resolve_dialect(sql, session=dialect)
    chosen = check_epsilon(epsilon) if epsilon is not None else None
    limits = domain.policy.limits_for(principal.role)
    text = _policy_text(domain.policy) if text is None else text
    dp = domain.dp_plan(principal, sql, dialect=dialect, epsilon=chosen)
    if dp is not None:
        decision = _decision(domain, principal, text, dp.dataset, dp.table, "dp")
        return Explanation(
            user=user.name, role=user.role, attributes=dict(user.attributes), dialect=resolved,
            tables=(decision,), sql=_shown(domain, dp.query.relation_sql),
            max_rows=limits.max_rows, timeout_s=limits.timeout_s,
            dp=_dp_decision(domain, principal, dp),
        )
    plan = domain.plan(principal, sql, dialect=dialect)
    decisions = tuple(_decision(domain, principal, text, use.dataset, use.table, use.mode)
                      for use in plan.tables)
    shown = plan.display_sql or plan.sql
    return Explanation(
        user=user.name, role=user.role, attributes=dict(user.attributes), dialect=resolved,
        tables=decisions, sql=pretty_sql(shown), max_rows=limits.max_rows,
        timeout_s=limits.timeout_s,
    )


def _dp_decision(domain: Domain, principal: Principal, plan: DpPlan) -> DpDecision:
    """The cost, the noise and the budget of ``plan``: read only, nothing is charged."""
    cost = domain.dp.cost(plan)
    schema = domain.dp.result_schema(plan)
    columns = json.loads((schema.metadata or {}).get(f"{DP_META}columns".encode(), b"[]"))
    balance = domain.ledger.balance(principal.user, plan.dataset,
                                    default=plan.query.access.budget)
    return DpDecision(
        epsilon=plan.epsilon, delta=plan.delta,
        cost_epsilon=cost.epsilon, cost_delta=cost.delta,
        answered_before=domain.ledger.answer(plan.key) is not None,
        allowance_epsilon=balance.allowance_epsilon, allowance_delta=balance.allowance_delta,
        spent_epsilon=balance.spent_epsilon, spent_delta=balance.spent_delta,
        remaining_epsilon=balance.remaining_epsilon, remaining_delta=balance.remaining_delta,
        columns=tuple(columns),
        aggregate_sql=plan.query.aggregate_sql,
    )


def explanation_json(explanation: Explanation) -> str:
    return json.dumps(explanation.to_json(), indent=2, default=str)
