r"""From the analyst's SQL to the DuckDB SQL the engine runs, under the policy.

:func:`plan_query` parses the SQL, then runs :data:`RULES` in order, each a pure
function of the expression and the policy context.

>>> from policy.loader import parse_policy
>>> from policy.principal import Principal
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   s:
...     tables:
...       t:
...         source: {format: csv, path: t.csv}
...         columns: {pid: {hidden: true}}
... roles:
...   reader: {datasets: {s: {mode: raw, row_filter: "site = {user.site}"}}}
... ''', base_dir="/")
>>> plan = plan_query("SELECT * FROM t WHERE age > ?", policy=policy,
...     principal=Principal("u", "reader", {"site": "x"}),
...     schemas={("s", "t"): {"pid": "INTEGER", "site": "VARCHAR", "age": "INTEGER"}},
...     max_rows=100)
>>> print(plan.sql.replace(" FROM", "\nFROM").replace(" WHERE", "\nWHERE"))
SELECT "t"."site" AS "site", "t"."age" AS "age"
FROM (SELECT "t"."site", "t"."age"
FROM "s"."t"
WHERE ("t"."site" = 'x')) AS "t"
WHERE "t"."age" > ? LIMIT 100
>>> plan.tables, plan.parameter_count
((TableUse(dataset='s', table='t', mode='raw'),), 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlglot import exp

from gateway.errors import StockadeError
from gateway.limits import Deadline, RequestLimits
from policy.access import catalog_for
from policy.expressions import bind_secrets, secrets_used
from policy.model import Policy
from policy.principal import Principal
from policy.rules.apply_table_policy import apply_table_policy
from policy.rules.check_costs import check_costs
from policy.rules.check_functions import check_functions
from policy.rules.check_joins import check_joins
from policy.rules.check_modes import check_modes
from policy.rules.check_types import check_types
from policy.rules.enforce_aggregate import enforce_aggregate
from policy.rules.enforce_limits import enforce_limits
from policy.rules.parse import parse
from policy.rules.qualify_columns import qualify_columns
from policy.rules.resolve_tables import resolve_tables
from policy.rules.validate_statement import validate_statement
from policy.schema import Schemas, access_for

Rule = Callable[..., exp.Expr]

#: The policy rules, in the order they run after :func:`parse`.
RULES: tuple[Rule, ...] = (
    validate_statement,
    resolve_tables,
    check_modes,
    check_functions,
    check_types,
    check_costs,
    qualify_columns,
    check_joins,
    enforce_aggregate,
    apply_table_policy,
    enforce_limits,
)


@dataclass(frozen=True)
class TableUse:
    """One protected table a query reads, and the mode it is read in."""

    dataset: str
    table: str
    mode: str


@dataclass(frozen=True)
class QueryPlan:
    """What to execute: DuckDB SQL (identifiers quoted) and what it touches.

    ``sql`` holds the policy's secrets as literals: run it, never show or log
    it (it and ``expression`` are left out of ``repr``). ``display_sql`` is the
    same query with each secret written ``{secret.NAME}`` (equal to ``sql``
    when no secret is used); ``redact`` does the same to any text, e.g. an
    engine error about this query.
    """

    sql: str = field(repr=False)
    expression: exp.Expr = field(repr=False)
    tables: tuple[TableUse, ...]
    parameter_count: int
    display_sql: str = ""
    secret_values: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.display_sql:
            object.__setattr__(self, "display_sql", self.sql)

    def redact(self, text: str) -> str:
        """``text`` with every secret value this plan binds replaced by its name."""
        for name, value in sorted(self.secret_values.items(), key=lambda kv: -len(kv[1])):
            if value:
                text = text.replace(value, f"{{secret.{name}}}")
        return text


def _placeholders(expression: exp.Expr) -> list[str]:
    return [p.sql(dialect="duckdb") for p in expression.find_all(exp.Placeholder)]


def plan_query(
    sql: str,
    *,
    policy: Policy,
    principal: Principal,
    schemas: Schemas,
    dialect: str = "duckdb",
    max_rows: int | None = None,
    limits: RequestLimits | None = None,
    deadline: Deadline | None = None,
) -> QueryPlan:
    """Check ``sql`` against the policy for ``principal`` and rewrite it for DuckDB.

    ``max_rows`` defaults to the role's limit from the policy. ``limits`` bound the
    text and its tree (:func:`policy.rules.parse.parse`); ``deadline``, when given,
    is checked after parsing and after each rule (each is bounded by the limits).
    """
    expression = parse(sql, dialect=dialect, limits=limits)
    parameters = _placeholders(expression)
    catalog = catalog_for(policy, principal)
    if max_rows is None:
        max_rows = policy.limits_for(principal.role).max_rows
    context = {
        "policy": policy,
        "principal": principal,
        "schemas": schemas,
        "catalog": catalog,
        "max_rows": max_rows,
    }
    uses: list[TableUse] = []
    for rule in RULES:
        if rule is apply_table_policy:
            for table in expression.find_all(exp.Table):
                if table.db:
                    access = access_for(catalog, table)
                    use = TableUse(access.dataset, access.table, access.mode)
                    if use not in uses:
                        uses.append(use)
        if deadline is not None:
            deadline.check()
        expression = rule(expression, **context)
    if deadline is not None:
        deadline.check()
    used = secrets_used(expression)
    expression, shown = bind_secrets(expression, policy.secrets)
    if _placeholders(expression) != parameters:
        raise StockadeError("The rewrite changed the query's parameters")
    return QueryPlan(
        sql=expression.sql(dialect="duckdb", identify=True),
        expression=expression,
        tables=tuple(uses),
        parameter_count=len(parameters),
        display_sql=shown.sql(dialect="duckdb", identify=True),
        secret_values={name: policy.secrets[name] for name in used},
    )
