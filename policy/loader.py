"""Read and validate a policy file.

Every problem is a :class:`~gateway.errors.PolicyError` naming the file, the
YAML line and the path inside the file, with a suggestion for misspelt names.

>>> p = parse_policy('''
... version: 1
... domain: {name: demo}
... datasets:
...   sales:
...     tables:
...       orders: {source: {format: csv, path: orders.csv}}
... roles:
...   analyst: {datasets: {sales: {mode: raw}}}
... ''', filename="demo.yaml", base_dir="/srv")
>>> p.datasets["sales"].tables["orders"].source.path
'/srv/orders.csv'
>>> parse_policy("version: 1\\ndomain: {name: d}\\ndatasets: {}\\nrolse: {}",
...              filename="p.yaml", base_dir="/")
Traceback (most recent call last):
...
gateway.errors.PolicyError: p.yaml:4: rolse: Unknown key 'rolse'. Did you mean 'roles'?
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import yaml
from sqlglot import exp

from gateway.errors import PolicyError, did_you_mean
from policy.check import check_against_schemas
from policy.expressions import FragmentError, parse_fragment, secrets_used
from policy.functions import allowed_names, function_name, is_allowed, policy_function_problem
from policy.model import (
    ENGINES,
    FILE_FORMATS,
    FORMATS,
    MODES,
    Budget,
    ColumnPolicy,
    Dataset,
    DatasetGrant,
    Domain,
    EngineSpec,
    Functions,
    Limits,
    LimitsOverride,
    Policy,
    Role,
    Source,
    Table,
    TableGrant,
)

__all__ = [
    "check_against_schemas", "load_policy", "parse_policy", "parse_policy_for",
    "read_policy_file",
]

T = TypeVar("T")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
log = logging.getLogger("stockade.policy")


@dataclass(frozen=True)
class _Context:
    """What a filter or mask may use: the policy's secrets and extra functions."""

    secrets: Collection[str] = ()
    functions: Collection[str] = ()


@dataclass(frozen=True)
class _Node:
    """A YAML node with where it is (file, line, path) for error messages.

    ``lines`` is shared by every node of one file: each path met is recorded
    with its line, for :attr:`Policy.lines`.
    """

    node: yaml.Node
    path: str
    file: str | None
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, message: str) -> PolicyError:
        return PolicyError(message, where=self.path or None, file=self.file, line=self.line)

    def child(self, node: yaml.Node, key: str, *, line_node: yaml.Node | None = None) -> _Node:
        child = _Node(node, f"{self.path}.{key}" if self.path else key, self.file, self.lines)
        self.lines.setdefault(child.path, int((line_node or node).start_mark.line) + 1)
        return child

    def mapping(
        self, allowed: Collection[str], *, required: Collection[str] = ()
    ) -> dict[str, _Node]:
        """The mapping's entries, refusing unknown, duplicate and missing keys."""
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"Expected a mapping with keys {_keys(allowed)}")
        out: dict[str, _Node] = {}
        for key_node, value_node in self.node.value:
            key = self._key(key_node)
            if key in out:
                raise _Node(key_node, self.child(key_node, key).path, self.file).error(
                    f"Duplicate key '{key}'"
                )
            if allowed and key not in allowed:
                where = self.child(key_node, key)
                raise _Node(key_node, where.path, self.file).error(
                    f"Unknown key '{key}'.{did_you_mean(key, allowed)}"
                    + ("" if did_you_mean(key, allowed) else f" Allowed keys: {_keys(allowed)}")
                )
            out[key] = self.child(value_node, key, line_node=key_node)
        for key in required:
            if key not in out:
                raise self.error(f"Missing required key '{key}'")
        return out

    def names(self) -> dict[str, _Node]:
        """A mapping whose keys are free names (datasets, tables, roles, ...)."""
        if isinstance(self.node, yaml.ScalarNode) and self.node.tag.endswith(":null"):
            return {}
        return self.mapping(())

    def _key(self, key_node: yaml.Node) -> str:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Node(key_node, self.path, self.file).error("Keys must be plain names")
        return str(key_node.value)

    def value(self) -> object:
        return cast(object, _CONSTRUCTOR.construct_object(self.node, deep=True))

    def as_str(self) -> str:
        value = self.value()
        if not isinstance(value, str):
            raise self.error(f"Expected text, got {_describe(value)}")
        return value

    def as_name(self) -> str:
        value = self.as_str()
        if not value or not value.replace("_", "a").isalnum() or value[0].isdigit():
            raise self.error(
                f"'{value}' is not a valid name; use letters, digits and '_' "
                "(not starting with a digit)"
            )
        return value

    def as_bool(self) -> bool:
        value = self.value()
        if not isinstance(value, bool):
            raise self.error(f"Expected true or false, got {_describe(value)}")
        return value

    def as_int(self, *, minimum: int | None = None) -> int:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"Expected a whole number, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise self.error(f"Expected a number >= {minimum}, got {value}")
        return value

    def as_number(self, *, positive: bool = False, nonnegative: bool = False) -> float:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"Expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise self.error("Expected a finite number")
        if positive and value <= 0:
            raise self.error(f"Expected a number > 0, got {value}")
        if nonnegative and value < 0:
            raise self.error(f"Expected a number >= 0, got {value}")
        return float(value)

    def as_str_list(self) -> tuple[str, ...]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("Expected a list of names")
        out = []
        for i, item in enumerate(self.node.value):
            child = _Node(item, f"{self.path}[{i}]", self.file, self.lines)
            self.lines.setdefault(child.path, child.line)
            out.append(child.as_str())
        return tuple(out)

    def as_secret(self) -> str:
        """Text, or ``{"$env": NAME}`` read from the environment now."""
        if isinstance(self.node, yaml.MappingNode):
            entries = self.mapping(("$env",), required=("$env",))
            name = entries["$env"].as_str()
            if name not in os.environ:
                raise self.error(f"{name} is not set (the policy reads it from the environment)")
            return os.environ[name]
        return self.as_str()


def _keys(allowed: Collection[str]) -> str:
    return ", ".join(sorted(allowed))


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _opt(entries: dict[str, _Node], key: str, read: Callable[[_Node], T]) -> T | None:
    return read(entries[key]) if key in entries else None


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at ``path``."""
    return read_policy_file(path)[1]


def read_policy_file(path: str | os.PathLike[str]) -> tuple[str, Policy]:
    """The text of the policy file at ``path`` and the policy it holds (one read)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
        raise PolicyError(f"Cannot read the policy file: {reason}", file=str(p)) from None
    return text, parse_policy_for(text, p)


def parse_policy_for(text: str, path: str | os.PathLike[str]) -> Policy:
    """Validate ``text`` as the content of the policy file at ``path``.

    Messages name ``path`` and the line in ``text``; relative source paths
    resolve against the file's directory, as if ``text`` were in the file.
    """
    p = Path(path)
    return parse_policy(text, filename=str(p), base_dir=p.resolve().parent)


def parse_policy(
    text: str, *, filename: str | None = None, base_dir: str | os.PathLike[str] = "."
) -> Policy:
    """Validate policy YAML ``text``; relative source paths resolve against ``base_dir``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise PolicyError(f"Not valid YAML: {problem}", file=filename, line=line) from None
    if root is None:
        raise PolicyError("The policy file is empty", file=filename)
    lines: dict[str, int] = {}
    top = _Node(root, "", filename, lines).mapping(
        ("version", "domain", "datasets", "roles", "limits", "secrets", "functions"),
        required=("version", "domain", "datasets"),
    )
    version = top["version"].as_int()
    if version != 1:
        raise top["version"].error(f"Unsupported policy version {version}; this gateway reads 1")
    base = Path(base_dir)
    domain = _domain(top["domain"])
    secrets = _secrets(top["secrets"]) if "secrets" in top else {}
    functions = _functions(top["functions"]) if "functions" in top else Functions()
    context = _Context(secrets=tuple(secrets), functions=functions.allow)
    datasets = {
        name: _dataset(name, node, base, context)
        for name, node in top["datasets"].names().items()
    }
    _check_unique_ci("dataset", top["datasets"], datasets)
    limits = Limits()
    if "limits" in top:
        limits = limits.merged(_limits(top["limits"]))
    roles = {}
    if "roles" in top:
        roles = {
            name: _role(name, node, datasets, context)
            for name, node in top["roles"].names().items()
        }
    return Policy(
        domain=domain,
        datasets=datasets,
        roles=roles,
        version=version,
        limits=limits,
        file=filename,
        secrets=secrets,
        functions=functions,
        lines=lines,
    )


def _secrets(node: _Node) -> dict[str, str]:
    """``secrets:``: name → ``{"$env": NAME}`` (or, discouraged, literal text).

    Messages name the secret and the variable, never a value.
    """
    out: dict[str, str] = {}
    for name, entry in node.names().items():
        _name_node(entry, name)
        if isinstance(entry.node, yaml.MappingNode):
            value = entry.as_secret()
        elif isinstance(entry.node, yaml.ScalarNode) and entry.node.tag.endswith(":str"):
            value = str(entry.node.value)
            log.warning(
                "%s: secret '%s' is written in the policy file; read it from the "
                'environment instead: {"$env": NAME}',
                entry.file or "policy",
                name,
            )
        else:
            raise entry.error('Expected {"$env": NAME} (or text) for a secret')
        if not value:
            raise entry.error(f"Secret '{name}' is empty")
        out[name] = value
    return out


def _functions(node: _Node) -> Functions:
    """``functions: {allow: [...]}``: DuckDB functions added to the allow-list."""
    e = node.mapping(("allow",))
    names = _opt(e, "allow", _Node.as_str_list) or ()
    for i, name in enumerate(names):
        problem = policy_function_problem(name)
        if problem is not None:
            item = e["allow"]
            where = _Node(item.node.value[i], f"{item.path}[{i}]", item.file, item.lines)
            raise where.error(problem)
    return Functions(allow=names)


def _check_unique_ci(kind: str, node: _Node, names: Collection[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise node.error(
                f"{kind.capitalize()} names '{seen[name.lower()]}' and '{name}' differ only by "
                "case; SQL names are case-insensitive"
            )
        seen[name.lower()] = name


def _domain(node: _Node) -> Domain:
    e = node.mapping(("name", "description"), required=("name",))
    return Domain(name=e["name"].as_name(), description=_opt(e, "description", _Node.as_str) or "")


def _limits(node: _Node) -> LimitsOverride:
    e = node.mapping(("max_rows", "timeout_s"))
    return LimitsOverride(
        max_rows=_opt(e, "max_rows", lambda n: n.as_int(minimum=1)),
        timeout_s=_opt(e, "timeout_s", lambda n: n.as_number(positive=True)),
    )


def _dataset(name: str, node: _Node, base: Path, context: _Context) -> Dataset:
    _name_node(node, name)
    e = node.mapping(("description", "tags", "tables", "budget_cap", "engine"),
                     required=("tables",))
    tables = {t: _table(t, n, base, context) for t, n in e["tables"].names().items()}
    _check_unique_ci("table", e["tables"], tables)
    engine = _opt(e, "engine", _engine)
    if engine is not None and engine.type == "spark":
        for t_name, t_node in e["tables"].names().items():
            if tables[t_name].source.format not in SPARK_SOURCE_FORMATS:
                raise t_node.error(
                    f"Table '{t_name}' is on a Spark engine, which reads sources of format "
                    f"{', '.join(SPARK_SOURCE_FORMATS)}, not "
                    f"'{tables[t_name].source.format}'")
    return Dataset(
        name=name,
        tables=tables,
        description=_opt(e, "description", _Node.as_str) or "",
        tags=_opt(e, "tags", _Node.as_str_list) or (),
        budget_cap=_opt(e, "budget_cap", _budget),
        engine=engine,
    )


#: The source formats a dataset on a Spark engine may use (see gateway/engine_spark.py).
SPARK_SOURCE_FORMATS = ("parquet", "csv", "json", "arrow")


def _engine(node: _Node) -> EngineSpec:
    e = node.mapping(("type", "master", "remote"), required=("type",))
    kind = e["type"].as_str()
    if kind not in ENGINES:
        raise e["type"].error(
            f"Unknown engine type '{kind}'.{did_you_mean(kind, ENGINES)} "
            f"Engine types: {', '.join(ENGINES)}"
        )
    master = _opt(e, "master", _Node.as_str)
    remote = _opt(e, "remote", _Node.as_str)
    if kind == "duckdb" and (master is not None or remote is not None):
        raise node.error("A 'duckdb' engine takes no 'master' or 'remote'")
    if kind == "spark" and (master is None) == (remote is None):
        raise node.error("A 'spark' engine needs exactly one of 'master' (e.g. \"local[2]\", "
                         "\"spark://HOST:7077\") and 'remote' (\"sc://HOST:15002\")")
    if remote is not None and not remote.startswith("sc://"):
        raise e["remote"].error(f"'remote' is a Spark Connect URL (sc://HOST:PORT), not "
                                f"'{remote}'")
    return EngineSpec(type=kind, master=master, remote=remote)


def _name_node(node: _Node, name: str) -> None:
    if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise node.error(
            f"'{name}' is not a valid name; use letters, digits and '_' (not starting with a digit)"
        )


def _table(name: str, node: _Node, base: Path, context: _Context) -> Table:
    _name_node(node, name)
    e = node.mapping(
        (
            "source",
            "description",
            "privacy_unit",
            "max_rows_per_unit",
            "row_filter",
            "columns",
            "join_keys",
            "public_keys",
        ),
        required=("source",),
    )
    columns = {c: _column(n) for c, n in e["columns"].names().items()} if "columns" in e else {}
    if "columns" in e:
        _check_unique_ci("column", e["columns"], columns)
        for c, n in e["columns"].names().items():
            if columns[c].mask is not None:
                _check_fragment(n.mapping(())["mask"], columns[c].mask or "", context)
    row_filter = _opt(e, "row_filter", _Node.as_str)
    if row_filter is not None:
        _check_fragment(e["row_filter"], row_filter, context)
    return Table(
        name=name,
        source=_source(e["source"], base),
        description=_opt(e, "description", _Node.as_str) or "",
        privacy_unit=_opt(e, "privacy_unit", _Node.as_str),
        max_rows_per_unit=_opt(e, "max_rows_per_unit", lambda n: n.as_int(minimum=1)),
        row_filter=row_filter,
        columns=columns,
        join_keys=_opt(e, "join_keys", _Node.as_str_list),
        public_keys=_public_keys(e["public_keys"], base) if "public_keys" in e else {},
    )


def _public_keys(node: _Node, base: Path) -> dict[str, tuple[str | int | float | bool, ...]]:
    """``{column: [values…]}`` or ``{column: {file: PATH}}`` (one value per line)."""
    out: dict[str, tuple[str | int | float | bool, ...]] = {}
    for column, child in node.names().items():
        if isinstance(child.node, yaml.MappingNode):
            e = child.mapping(("file",), required=("file",))
            path = (base / e["file"].as_str()).resolve()
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise e["file"].error(f"Cannot read the public keys file '{path}': "
                                      f"{exc.strerror}") from None
            values: list[str | int | float | bool] = [v for v in lines if v.strip()]
        else:
            raw = child.value()
            if not isinstance(raw, list) or not raw:
                raise child.error(f"public_keys of '{column}' is a non-empty list of values "
                                  "or {file: PATH}")
            values = []
            for item in raw:
                if isinstance(item, dict | list) or item is None:
                    raise child.error(f"public_keys of '{column}' holds plain values "
                                      f"(text, numbers), not {_describe(item)}")
                values.append(item)
        kinds = {type(v) for v in values}
        if len(kinds) > 1 and not kinds <= {int, float}:
            raise child.error(f"public_keys of '{column}' mixes kinds of values; "
                              "write them all as text or all as numbers")
        if len(set(values)) != len(values):
            raise child.error(f"public_keys of '{column}' lists a value twice")
        if len(values) > 100_000:
            raise child.error(f"public_keys of '{column}' has more than 100000 values")
        out[column] = tuple(values)
    return out


def _source(node: _Node, base: Path) -> Source:
    e = node.mapping(("format", "path", "table", "dsn", "query"), required=("format",))
    fmt = e["format"].as_str()
    if fmt not in FORMATS:
        raise e["format"].error(
            f"Unknown source format '{fmt}'.{did_you_mean(fmt, FORMATS)} "
            f"Known formats: {', '.join(FORMATS)}"
        )
    path = _opt(e, "path", _Node.as_secret)
    if fmt in FILE_FORMATS:
        if path is None:
            raise node.error(f"A '{fmt}' source needs a 'path'")
        path = str((base / path).resolve())
    if fmt == "postgres" and "dsn" not in e:
        raise node.error("A 'postgres' source needs a 'dsn' (e.g. {\"$env\": PG_DSN})")
    if fmt == "postgres" and ("table" in e) == ("query" in e):
        raise node.error("A 'postgres' source needs either 'table: SCHEMA.TABLE' or "
                         "'query: SELECT ...'")
    if fmt == "sqlite" and "table" not in e:
        raise node.error("A 'sqlite' source needs a 'table'")
    if "query" in e and fmt != "postgres":
        raise e["query"].error("Only a 'postgres' source takes a 'query'")
    return Source(
        format=fmt,
        path=path,
        table=_opt(e, "table", _Node.as_str),
        dsn=_opt(e, "dsn", _Node.as_secret),
        query=_opt(e, "query", _Node.as_str),
    )


def _column(node: _Node) -> ColumnPolicy:
    e = node.mapping(("hidden", "mask", "lower", "upper", "description"))
    column = ColumnPolicy(
        hidden=_opt(e, "hidden", _Node.as_bool) or False,
        mask=_opt(e, "mask", _Node.as_str),
        lower=_opt(e, "lower", _Node.as_number),
        upper=_opt(e, "upper", _Node.as_number),
        description=_opt(e, "description", _Node.as_str) or "",
    )
    if column.lower is not None and column.upper is not None and column.lower > column.upper:
        raise node.error(f"lower ({column.lower}) is greater than upper ({column.upper})")
    return column


def _check_fragment(node: _Node, text: str, context: _Context) -> None:
    """Parse a filter or mask now so that syntax errors carry the YAML line."""
    try:
        parsed = parse_fragment(text)
    except FragmentError as err:
        raise node.error(err.message) from None
    for secret in secrets_used(parsed):
        if secret not in context.secrets:
            known = did_you_mean(secret, context.secrets)
            raise node.error(
                f"Unknown secret '{secret}'.{known}"
                + ("" if known else " Declare it under 'secrets:' at the top of the policy")
            )
    for func in parsed.find_all(exp.Func):
        if not is_allowed(func, extra_names=context.functions):
            name = function_name(func)
            suggestion = did_you_mean(name, allowed_names(context.functions))
            raise node.error(f"Function '{name}' is not allowed.{suggestion}")


def _mode(node: _Node) -> str:
    mode = node.as_str()
    if mode not in MODES:
        raise node.error(
            f"Unknown mode '{mode}'.{did_you_mean(mode, MODES)} Modes: {', '.join(MODES)}"
        )
    return mode


def _role(
    name: str, node: _Node, datasets: dict[str, Dataset], context: _Context
) -> Role:
    _name_node(node, name)
    e = node.mapping(("datasets", "admin", "description", "limits", "functions"))
    functions = _functions(e["functions"]) if "functions" in e else Functions()
    context = _Context(
        secrets=context.secrets, functions=(*context.functions, *functions.allow)
    )
    grants: dict[str, DatasetGrant] = {}
    if "datasets" in e:
        for ds_name, ds_node in e["datasets"].names().items():
            if ds_name not in datasets:
                raise ds_node.error(
                    f"Unknown dataset '{ds_name}'.{did_you_mean(ds_name, datasets)}"
                )
            grants[ds_name] = _dataset_grant(ds_node, datasets[ds_name], context)
    return Role(
        name=name,
        datasets=grants,
        admin=_opt(e, "admin", _Node.as_bool) or False,
        description=_opt(e, "description", _Node.as_str) or "",
        limits=_opt(e, "limits", _limits),
        functions=functions,
    )


def _dataset_grant(node: _Node, dataset: Dataset, context: _Context) -> DatasetGrant:
    e = node.mapping(
        (
            "mode",
            "row_filter",
            "min_group_size",
            "epsilon_per_query",
            "min_epsilon_per_query",
            "max_epsilon_per_query",
            "budget",
            "tables",
        ),
        required=("mode",),
    )
    mode = _mode(e["mode"])
    row_filter = _opt(e, "row_filter", _Node.as_str)
    if row_filter is not None:
        _check_fragment(e["row_filter"], row_filter, context)
    tables: dict[str, TableGrant] = {}
    table_nodes: dict[str, _Node] = e["tables"].names() if "tables" in e else {}
    if table_nodes:
        for t_name, t_node in table_nodes.items():
            if t_name not in dataset.tables:
                raise t_node.error(
                    f"Unknown table '{t_name}' in dataset '{dataset.name}'."
                    f"{did_you_mean(t_name, dataset.tables)}"
                )
            tables[t_name] = _table_grant(t_node, context)
    grant = DatasetGrant(
        mode=mode,
        row_filter=row_filter,
        min_group_size=_opt(e, "min_group_size", lambda n: n.as_int(minimum=1)),
        epsilon_per_query=_opt(e, "epsilon_per_query", lambda n: n.as_number(positive=True)),
        min_epsilon_per_query=_opt(
            e, "min_epsilon_per_query", lambda n: n.as_number(positive=True)
        ),
        max_epsilon_per_query=_opt(
            e, "max_epsilon_per_query", lambda n: n.as_number(positive=True)
        ),
        budget=_opt(e, "budget", _budget),
        tables=tables,
    )
    _check_epsilon_bounds(grant, e)
    for t_name, table in dataset.tables.items():
        t_grant = tables.get(t_name)
        t_mode = (t_grant.mode if t_grant else None) or mode
        where = table_nodes.get(t_name, node)
        if t_mode in ("aggregate", "dp") and table.privacy_unit is None:
            raise where.error(
                f"Table '{dataset.name}.{t_name}' has no privacy_unit, which '{t_mode}' mode "
                "needs; set privacy_unit on the table or grant another mode"
            )
        if t_mode == "aggregate":
            size = (t_grant.min_group_size if t_grant else None) or grant.min_group_size
            if size is None:
                raise where.error(
                    f"'aggregate' mode on '{dataset.name}.{t_name}' needs min_group_size"
                )
        if t_mode == "dp" and (grant.epsilon_per_query is None or grant.budget is None):
            raise node.error("'dp' mode needs epsilon_per_query and budget: {epsilon, delta}")
    return grant


def _check_epsilon_bounds(grant: DatasetGrant, e: dict[str, _Node]) -> None:
    """``min_epsilon_per_query`` ≤ ``epsilon_per_query`` ≤ ``max_epsilon_per_query``."""
    low, high = grant.min_epsilon_per_query, grant.max_epsilon_per_query
    if low is not None and high is not None and low > high:
        raise e["min_epsilon_per_query"].error(
            f"min_epsilon_per_query ({low:g}) is greater than max_epsilon_per_query ({high:g})"
        )
    eps = grant.epsilon_per_query
    if eps is None:
        return
    if high is not None and eps > high:
        raise e["epsilon_per_query"].error(
            f"epsilon_per_query ({eps:g}) is above max_epsilon_per_query ({high:g}); "
            "the default ε must be one an analyst may choose"
        )
    if low is not None and eps < low:
        raise e["epsilon_per_query"].error(
            f"epsilon_per_query ({eps:g}) is below min_epsilon_per_query ({low:g}); "
            "the default ε must be one an analyst may choose"
        )


def _table_grant(node: _Node, context: _Context) -> TableGrant:
    e = node.mapping(("mode", "row_filter", "hidden", "min_group_size"))
    row_filter = _opt(e, "row_filter", _Node.as_str)
    if row_filter is not None:
        _check_fragment(e["row_filter"], row_filter, context)
    return TableGrant(
        mode=_opt(e, "mode", _mode),
        row_filter=row_filter,
        hidden=_opt(e, "hidden", _Node.as_str_list) or (),
        min_group_size=_opt(e, "min_group_size", lambda n: n.as_int(minimum=1)),
    )


#: The largest ε a budget may hold: ε is kept in 1e-12 units in a 64-bit integer.
MAX_BUDGET_EPSILON = 1_000_000.0


def _budget(node: _Node) -> Budget:
    e = node.mapping(("epsilon", "delta"), required=("epsilon",))
    delta = _opt(e, "delta", lambda n: n.as_number(nonnegative=True)) or 0.0
    if delta >= 1:
        raise e["delta"].error(f"delta must be below 1, got {delta}")
    epsilon = e["epsilon"].as_number(positive=True)
    if epsilon > MAX_BUDGET_EPSILON:
        raise e["epsilon"].error(f"epsilon must be at most {MAX_BUDGET_EPSILON:g} "
                                 f"(budgets are kept exactly, in integer units), got {epsilon:g}")
    return Budget(epsilon=epsilon, delta=delta)
