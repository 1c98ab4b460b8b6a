"""Source schemas and the sqlglot schema of what a principal may see.

``Schemas`` maps ``(dataset, table)`` to the table's source columns and their
DuckDB type names, in source order (the engine reads them from the sources).

>>> from policy.access import TableAccess
>>> access = TableAccess("s", "t", "raw", hidden=frozenset({"pid"}))
>>> ms = visible_schema({("s", "t"): access}, {("s", "t"): {"pid": "INT", "age": "INT"}})
>>> ms.column_names("s.t")
['age']
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.schema import MappingSchema

from gateway.errors import StockadeError
from policy.access import TableAccess, visible_columns

Schemas = Mapping[tuple[str, str], Mapping[str, str]]
Catalog = Mapping[tuple[str, str], TableAccess]


def source_columns(schemas: Schemas, dataset: str, table: str) -> Mapping[str, str]:
    """The source columns of a catalog table; a missing schema is a gateway bug."""
    found = schemas.get((dataset, table))
    if found is None:
        raise StockadeError(f"No schema is known for table '{dataset}.{table}'")
    return found


def _type(name: str) -> str:
    try:
        exp.DataType.build(name, dialect="duckdb")
    except (ParseError, ValueError):
        return "UNKNOWN"
    return name


def visible_schema(catalog: Catalog, schemas: Schemas) -> MappingSchema:
    """A sqlglot schema ``{dataset: {table: {column: type}}}`` of visible columns only."""
    nested: dict[str, object] = {}
    for (dataset, table), access in catalog.items():
        if (dataset, table) not in schemas:
            continue
        columns = visible_columns(access, schemas[(dataset, table)])
        tables = nested.setdefault(dataset, {})
        assert isinstance(tables, dict)
        tables[table] = {c: _type(t) for c, t in columns.items()}
    return MappingSchema(nested, dialect="duckdb")


def access_for(catalog: Catalog, table: exp.Table) -> TableAccess:
    """The access of a resolved (canonical) protected table, matched case-insensitively."""
    key = (table.db.lower(), table.name.lower())
    for (dataset, name), access in catalog.items():
        if (dataset.lower(), name.lower()) == key:
            return access
    raise StockadeError(f"Table '{table.db}.{table.name}' was not resolved")


def columns_for(schemas: Schemas, access: TableAccess) -> Mapping[str, str]:
    """The source columns of the table ``access`` is about."""
    return source_columns(schemas, access.dataset, access.table)
