"""The policy file as frozen dataclasses.

A :class:`Policy` is what :func:`policy.loader.load_policy` returns: plain data,
already validated, with relative source paths resolved and ``{"$env": NAME}``
secrets read. Nothing here does I/O.

>>> Limits().max_rows, Limits().timeout_s
(1000000, 60.0)
>>> Limits(max_rows=10).merged(LimitsOverride(timeout_s=5.0))
Limits(max_rows=10, timeout_s=5.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Access modes, from least to most permissive for row-level reads.
MODES = ("deny", "raw", "aggregate", "dp")

#: Source formats a table may be read from (``postgres`` and ``sqlite`` through
#: DuckDB's scanner extensions; ``memory`` from a frame given to ``gateway.serve``).
FORMATS = ("parquet", "csv", "json", "arrow", "duckdb", "postgres", "sqlite", "memory")

#: Formats whose ``path`` is a file relative to the policy file.
FILE_FORMATS = ("parquet", "csv", "json", "arrow", "duckdb", "sqlite")


def _frozen_map(value: Mapping[str, object] | None) -> Mapping[str, object]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class Limits:
    """Result-size and time limits for one query."""

    max_rows: int = 1_000_000
    timeout_s: float = 60.0

    def merged(self, override: LimitsOverride | None) -> Limits:
        """These limits with the fields ``override`` sets replaced."""
        if override is None:
            return self
        return Limits(
            max_rows=self.max_rows if override.max_rows is None else override.max_rows,
            timeout_s=self.timeout_s if override.timeout_s is None else override.timeout_s,
        )


@dataclass(frozen=True)
class LimitsOverride:
    """Per-role limits; ``None`` keeps the domain's value."""

    max_rows: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Source:
    """Where a table's rows come from.

    ``path`` is absolute (resolved against the policy file's directory) for file
    formats; ``table`` names a table inside a database source (``query``, a
    ``postgres`` source's SELECT, replaces it); ``dsn`` is a
    connection string (usually given as a ``{"$env": NAME}`` secret).
    """

    format: str
    path: str | None = None
    table: str | None = None
    dsn: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class ColumnPolicy:
    """What the policy says about one column of a table."""

    hidden: bool = False
    mask: str | None = None
    lower: float | None = None
    upper: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Table:
    """One table of a dataset.

    ``join_keys`` ``None`` lets a query join the table on any visible column;
    a tuple (possibly empty) limits every join condition to equality on those
    columns (see :mod:`policy.rules.check_joins`). ``public_keys`` declares the
    full set of values of grouping columns, for ``dp`` mode.
    """

    name: str
    source: Source
    description: str = ""
    privacy_unit: str | None = None
    max_rows_per_unit: int | None = None
    row_filter: str | None = None
    columns: Mapping[str, ColumnPolicy] = field(default_factory=dict)
    join_keys: tuple[str, ...] | None = None
    #: column -> every value it can take (dp GROUP BY releases all of them, see
    #: :mod:`gateway.dp.aggregate`); declared by the owner, never read from the data.
    public_keys: Mapping[str, tuple[str | int | float | bool, ...]] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", _frozen_map(self.columns))
        object.__setattr__(self, "public_keys", _frozen_map(self.public_keys))


@dataclass(frozen=True)
class Budget:
    """An amount of privacy budget, ε and δ (used by ``dp`` mode)."""

    epsilon: float
    delta: float = 0.0


#: The engines a dataset's tables can run on (``engine: {type: ...}``).
ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class EngineSpec:
    """Which engine runs a dataset's queries (see docs/scaling.md).

    ``type`` ``duckdb`` is the default (the domain's locked DuckDB engine);
    ``spark`` registers the dataset's tables in Spark, reached through exactly
    one of ``master`` (``local[2]``, ``spark://HOST:PORT``) or ``remote`` (a
    Spark Connect URL, ``sc://HOST:PORT``).
    """

    type: str = "duckdb"
    master: str | None = None
    remote: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One dataset: its tables and, for ``dp`` mode, an optional cap shared by all users.

    ``budget_cap`` bounds the ε and δ all users together may spend on the
    dataset, whatever their own allowances (see :mod:`gateway.ledger`).
    ``engine`` ``None`` (or type ``duckdb``) runs it on the domain's DuckDB engine.
    """

    name: str
    tables: Mapping[str, Table]
    description: str = ""
    tags: tuple[str, ...] = ()
    budget_cap: Budget | None = None
    engine: EngineSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", _frozen_map(self.tables))


@dataclass(frozen=True)
class TableGrant:
    """A role's per-table override inside a dataset grant.

    ``mode`` ``None`` keeps the dataset grant's mode.
    """

    mode: str | None = None
    row_filter: str | None = None
    hidden: tuple[str, ...] = ()
    min_group_size: int | None = None


@dataclass(frozen=True)
class DatasetGrant:
    """What a role may do with one dataset.

    ``dp`` mode: ``epsilon_per_query`` is the ε of a query whose caller does not
    choose one; a caller's ε must lie within ``min_epsilon_per_query`` and
    ``max_epsilon_per_query`` (``None``: no bound beyond the budget). ``budget``
    is each user's initial allowance for the dataset.

    >>> DatasetGrant("dp", epsilon_per_query=0.1, max_epsilon_per_query=1.0).epsilon_bounds
    (None, 1.0)
    """

    mode: str
    row_filter: str | None = None
    min_group_size: int | None = None
    epsilon_per_query: float | None = None
    min_epsilon_per_query: float | None = None
    max_epsilon_per_query: float | None = None
    budget: Budget | None = None
    tables: Mapping[str, TableGrant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", _frozen_map(self.tables))

    @property
    def epsilon_bounds(self) -> tuple[float | None, float | None]:
        """``(min_epsilon_per_query, max_epsilon_per_query)``."""
        return (self.min_epsilon_per_query, self.max_epsilon_per_query)


@dataclass(frozen=True)
class Functions:
    """DuckDB function names added to the built-in allow-list (lowercased).

    >>> Functions(allow=("Jaccard",)).allow
    ('jaccard',)
    """

    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(n.lower() for n in self.allow))


@dataclass(frozen=True)
class Role:
    """A role: its dataset grants, whether it is an admin, its limit overrides.

    An admin role sees every dataset in ``raw`` mode, except the datasets it
    lists, which use the listed grant (so an admin can still be denied one).
    """

    name: str
    datasets: Mapping[str, DatasetGrant] = field(default_factory=dict)
    admin: bool = False
    description: str = ""
    limits: LimitsOverride | None = None
    functions: Functions = field(default_factory=Functions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", _frozen_map(self.datasets))


@dataclass(frozen=True)
class Policy:
    """A whole, validated policy file.

    ``secrets`` holds the values of the ``secrets:`` section (read from the
    environment at load); they are left out of ``repr`` so that they cannot
    reach a log or an error by accident. ``lines`` maps a path in the file
    (``datasets.oncology.tables.screenings.columns.zip``) to its YAML line, for
    messages about a policy already loaded; it takes no part in equality.

    >>> p = Policy(Domain("d"), {}, {}, secrets={"salt": "pepper"})
    >>> "pepper" in repr(p), p.secrets["salt"]
    (False, 'pepper')
    >>> p.line_of("datasets.s.tables.t.row_filter") is None
    True
    """

    domain: Domain
    datasets: Mapping[str, Dataset]
    roles: Mapping[str, Role]
    version: int = 1
    limits: Limits = field(default_factory=Limits)
    file: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    functions: Functions = field(default_factory=Functions)
    lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", _frozen_map(self.datasets))
        object.__setattr__(self, "roles", _frozen_map(self.roles))
        object.__setattr__(self, "secrets", MappingProxyType(dict(self.secrets)))
        object.__setattr__(self, "lines", MappingProxyType(dict(self.lines)))

    def line_of(self, path: str) -> int | None:
        """The YAML line of ``path``, or of its nearest ancestor the file names."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    def functions_for(self, role: str) -> frozenset[str]:
        """Function names the policy adds to the allow-list for ``role``."""
        found = self.roles.get(role)
        extra = found.functions.allow if found else ()
        return frozenset((*self.functions.allow, *extra))

    def limits_for(self, role: str) -> Limits:
        """The domain limits with the role's overrides applied."""
        found = self.roles.get(role)
        return self.limits.merged(found.limits if found else None)
