"""Check a loaded policy against the real source schemas.

Every column a policy names must exist in its source; row filters must be
conditions and masks must type-check where sqlglot can tell (the gateway also
binds them on DuckDB). Messages carry the file, the YAML line and the path:

>>> from policy.loader import parse_policy
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   s:
...     tables:
...       t:
...         source: {format: csv, path: t.csv}
...         row_filter: "sitee = 'x'"
... ''', filename="p.yaml", base_dir="/")
>>> check_against_schemas(policy, {("s", "t"): {"site": "VARCHAR"}})
Traceback (most recent call last):
...
gateway.errors.PolicyError: p.yaml:9: datasets.s.tables.t.row_filter: Unknown column 'sitee'. Did you mean 'site'?
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.schema import MappingSchema

from gateway.errors import PolicyError, did_you_mean
from policy.expressions import FragmentError, parse_fragment
from policy.model import Policy

SchemaMap = Mapping[tuple[str, str], Mapping[str, str]]

_TEXT = exp.DataType.TEXT_TYPES
_NUMBERS = exp.DataType.REAL_TYPES | exp.DataType.INTEGER_TYPES
_TEMPORAL = exp.DataType.TEMPORAL_TYPES
_NOT_TEXT = _NUMBERS | _TEMPORAL | {exp.DType.BOOLEAN}

# Functions whose first argument must be text (DuckDB does not cast numbers,
# dates or booleans to text implicitly).
_TEXT_FUNCTIONS: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, name)
    for name in (
        "Left", "Right", "Upper", "Lower", "Initcap", "Trim", "Substring", "StrPosition",
        "MD5", "MD5Digest", "SHA", "SHA2", "RegexpLike", "RegexpILike", "RegexpReplace",
        "RegexpExtract", "StartsWith", "EndsWith", "Like", "ILike", "SplitPart",
    )
    if hasattr(exp, name)
)  # fmt: skip
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


class _Checker:
    """Builds located :class:`PolicyError` s for one policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def error(self, message: str, where: str) -> PolicyError:
        path = where.split(" ", 1)[0]
        return PolicyError(
            message, where=where, file=self.policy.file, line=self.policy.line_of(path)
        )

    def names(self, names: Iterable[str], columns: Mapping[str, str], *, where: str) -> None:
        """Each name must be a column; ``where`` + ``.NAME`` / ``[i]`` locates it."""
        known = {c.lower() for c in columns}
        for i, name in enumerate(names):
            if name.lower() not in known:
                located = f"{where}[{i}]" if where.endswith(("hidden", "join_keys")) else where
                raise self.error(f"Unknown column '{name}'.{did_you_mean(name, columns)}", located)

    def fragment(
        self, text: str | None, columns: Mapping[str, str], *, where: str, condition: bool
    ) -> None:
        """Columns, then types, of a row filter (``condition``) or a mask."""
        if text is None:
            return
        try:
            parsed = parse_fragment(text)
        except FragmentError as err:
            raise self.error(err.message, where) from None
        self.names([c.name for c in parsed.find_all(exp.Column)], columns, where=where)
        problem = type_problem(parsed, columns, condition=condition)
        if problem is not None:
            raise self.error(problem, where)


def _sql(node: exp.Expr) -> str:
    """``node`` as the owner wrote it (without the table the checker adds)."""
    bare = node.copy()
    for column in bare.find_all(exp.Column):
        column.set("table", None)
    return bare.sql("duckdb")


def _label(node: exp.Expr, columns: Mapping[str, str]) -> str:
    """``'age' (INTEGER)`` for a column, ``'x + 1' (INT)`` for anything else."""
    kind = node.type.sql("duckdb") if node.type else "UNKNOWN"
    if isinstance(node, exp.Column):
        source = {c.lower(): t for c, t in columns.items()}.get(node.name.lower())
        return f"'{node.name}' ({source or kind})"
    return f"'{_sql(node)}' ({kind})"


def type_problem(
    expression: exp.Expr, columns: Mapping[str, str], *, condition: bool
) -> str | None:
    """What sqlglot can tell is ill-typed in a filter or mask over ``columns``, if anything.

    >>> cols = {"age": "INTEGER", "site": "VARCHAR"}
    >>> type_problem(parse_fragment("age"), cols, condition=True)
    "A row filter must be a condition (BOOLEAN), but 'age' (INTEGER) is INT; compare it, e.g. age > 0"
    >>> type_problem(parse_fragment("left(age, 2)"), cols, condition=False)
    "'left' needs text, but 'age' (INTEGER) is not text; write CAST(age AS VARCHAR)"
    >>> type_problem(parse_fragment("age > 3 AND site = 'x'"), cols, condition=True) is None
    True
    """  # noqa: E501
    typed = expression.copy()
    for column in typed.find_all(exp.Column):
        column.set("table", exp.to_identifier("t"))
    schema = MappingSchema(
        {"t": {c: t for c, t in columns.items()}}, dialect="duckdb", normalize=False
    )
    select = exp.select(typed).from_("t")
    try:
        annotated = annotate_types(select, schema=schema, dialect="duckdb")
    except (SqlglotError, ValueError, KeyError):
        return None
    root = annotated.expressions[0]
    for node in root.walk():
        if isinstance(node, _TEXT_FUNCTIONS):
            arg = node.this
            if isinstance(arg, exp.Expr) and arg.type and arg.type.this in _NOT_TEXT:
                rendered = node.sql("duckdb")
                name = rendered.split("(", 1)[0].lower() if "(" in rendered else node.key
                return (
                    f"'{name}' needs text, but {_label(arg, columns)} is not text; "
                    f"write CAST({_sql(arg)} AS VARCHAR)"
                )
        if isinstance(node, _ARITHMETIC):
            for side in (node.this, node.expression):
                if side.type and side.type.this in _TEXT and not isinstance(side, exp.Literal):
                    return (
                        f"Arithmetic on text: {_label(side, columns)} in "
                        f"'{_sql(node)}'; cast it to a number first"
                    )
        if isinstance(node, _COMPARISONS):
            left, right = node.this, node.expression
            kinds = [
                "text" if s.type and s.type.this in _TEXT
                else "number" if s.type and s.type.this in _NUMBERS
                else None
                for s in (left, right)
            ]  # fmt: skip
            if set(kinds) == {"text", "number"}:
                return (
                    f"'{_sql(node)}' compares text with a number "
                    f"({_label(left, columns)} and {_label(right, columns)}); "
                    "quote the value or cast one side"
                )
    if condition:
        kind = root.type.this if root.type else exp.DType.UNKNOWN
        if kind not in (exp.DType.BOOLEAN, exp.DType.UNKNOWN, exp.DType.NULL):
            return (
                f"A row filter must be a condition (BOOLEAN), but {_label(root, columns)} is "
                f"{root.type.sql('duckdb')}; compare it, e.g. {_sql(root)} > 0"
            )
    return None


def check_against_schemas(policy: Policy, schemas: SchemaMap) -> None:
    """Raise :class:`PolicyError` when the policy does not fit its sources.

    ``schemas`` maps ``(dataset, table)`` to ``{column: DuckDB type name}``.
    Unknown columns (with suggestions), row filters that are not conditions and
    masks sqlglot can tell are ill-typed are refused, with the YAML line.
    """
    check = _Checker(policy)
    for ds_name, dataset in policy.datasets.items():
        for t_name, table in dataset.tables.items():
            where = f"datasets.{ds_name}.tables.{t_name}"
            columns = schemas.get((ds_name, t_name))
            if columns is None:
                raise check.error("No schema is known for this table's source", where)
            for c_name in table.columns:
                check.names([c_name], columns, where=f"{where}.columns.{c_name}")
            if table.privacy_unit is not None:
                check.names([table.privacy_unit], columns, where=f"{where}.privacy_unit")
            if table.join_keys is not None:
                check.names(table.join_keys, columns, where=f"{where}.join_keys")
            for c_name in table.public_keys:
                check.names([c_name], columns, where=f"{where}.public_keys.{c_name}")
            check.fragment(
                table.row_filter, columns, where=f"{where}.row_filter", condition=True
            )
            for c_name, column in table.columns.items():
                check.fragment(
                    column.mask, columns, where=f"{where}.columns.{c_name}.mask", condition=False
                )
    for r_name, role in policy.roles.items():
        for ds_name, grant in role.datasets.items():
            where = f"roles.{r_name}.datasets.{ds_name}"
            for t_name in policy.datasets[ds_name].tables:
                columns = schemas.get((ds_name, t_name), {})
                check.fragment(
                    grant.row_filter,
                    columns,
                    where=f"{where}.row_filter ({t_name})",
                    condition=True,
                )
            for t_name, t_grant in grant.tables.items():
                columns = schemas.get((ds_name, t_name), {})
                t_where = f"{where}.tables.{t_name}"
                check.names(t_grant.hidden, columns, where=f"{t_where}.hidden")
                check.fragment(
                    t_grant.row_filter, columns, where=f"{t_where}.row_filter", condition=True
                )
