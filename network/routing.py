"""Where a network query goes: one domain (routing) or every holder (federation).

Every table a network query reads is named with its catalog:
``st_marys.oncology.screenings`` reads that domain, and the query goes to
``st_marys`` with the catalog taken out (blanked, so that line and column
numbers in the domain's messages still point into the text the analyst wrote);
``federated.oncology.screenings`` reads every domain that holds that table.
One query reads one catalog.

>>> t = route("SELECT count(*) FROM st_marys.oncology.screenings", "duckdb",
...           ["st_marys", "city_general"])
>>> t.catalog, t.sql
('st_marys', 'SELECT count(*) FROM          oncology.screenings')
>>> route("SELECT 1 FROM a.d.t JOIN b.d.t USING (x)", "duckdb", ["a", "b"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.SqlError: Queries may not mix catalogs: this one reads a and b. ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from gateway.errors import SqlError, did_you_mean
from gateway.limits import RequestLimits
from network.config import FEDERATED
from policy.locate import location
from policy.rules.parse import parse


@dataclass(frozen=True)
class Target:
    """``catalog`` is a domain's name or ``federated``; ``sql`` what to send it."""

    catalog: str
    sql: str


def route(sql: str, dialect: str, domains: Sequence[str], *,
          for_domain: str | None = None, limits: RequestLimits | None = None) -> Target:
    """The catalog ``sql`` reads and the SQL for it.

    ``sql`` is the query with its options comment blanked out (it is parsed,
    within ``limits``); ``for_domain`` is the text a domain gets (the same
    positions, the options comment kept), by default ``sql``.
    """
    expression = parse(sql, dialect=dialect, limits=limits)
    ctes = {cte.alias_or_name.lower() for cte in expression.find_all(exp.CTE)}
    by_lower = {name.lower(): name for name in [*domains, FEDERATED]}
    found: dict[str, list[exp.Table]] = {}
    for table in expression.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function: the domain refuses it, with its reasons
        catalog = table.catalog
        if not catalog:
            if not table.db and table.name.lower() in ctes:
                continue
            raise _missing_catalog(table, domains)
        name = by_lower.get(catalog.lower())
        if name is None:
            line, col = location(table.args["catalog"])
            raise SqlError(
                f"Unknown catalog '{catalog}'.{did_you_mean(catalog, by_lower.values())} "
                f"The network's catalogs are {', '.join(sorted(domains))} and {FEDERATED}",
                line=line, col=col)
        found.setdefault(name, []).append(table)
    if not found:
        raise SqlError("This query reads no table. The network sends a query to the domain "
                       "its tables name (st_marys.dataset.table) or to every domain that "
                       f"holds them ({FEDERATED}.dataset.table)")
    if len(found) > 1:
        names = sorted(found)
        second = found[list(found)[1]][0]
        line, col = location(second.args["catalog"])
        raise SqlError(
            f"Queries may not mix catalogs: this one reads {', '.join(names[:-1])} and "
            f"{names[-1]}. Query one domain at a time, or {FEDERATED}.DATASET.TABLE to run "
            "one aggregate over every domain that holds the table", line=line, col=col)
    catalog = next(iter(found))
    text = sql if for_domain is None else for_domain
    if catalog == FEDERATED:
        return Target(catalog, sql)
    return Target(catalog, strip_catalogs(text, found[catalog], dialect))


def _missing_catalog(table: exp.Table, domains: Sequence[str]) -> SqlError:
    first = table.args.get("db") or table.this
    line, col = location(first) if isinstance(first, exp.Expr) else (None, None)
    parts = [p for p in (table.db, table.name) if p]
    rest = ".".join(parts)
    example = domains[0] if domains else "DOMAIN"
    return SqlError(
        f"Name the domain of table '{rest}': write {example}.{rest} to ask one domain, or "
        f"{FEDERATED}.{rest} to ask every domain that holds it", line=line, col=col)


def strip_catalogs(text: str, tables: Sequence[exp.Table], dialect: str) -> str:
    """``text`` with the catalog part of each table name blanked out.

    Blanking (not deleting) keeps every other token at its line and column.
    """
    spans = []
    for table in tables:
        catalog = table.args.get("catalog")
        db = table.args.get("db")
        start = catalog.meta.get("start") if isinstance(catalog, exp.Expr) else None
        end = db.meta.get("start") if isinstance(db, exp.Expr) else None
        if not isinstance(start, int) or not isinstance(end, int) or not start < end:
            return _regenerated(tables, dialect, text)
        spans.append((start, end))
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            if chars[i] not in "\r\n":
                chars[i] = " "
    return "".join(chars)


def _regenerated(tables: Sequence[exp.Table], dialect: str, text: str) -> str:
    """The fallback when sqlglot recorded no positions: the query printed again."""
    root = tables[0].root()
    for table in tables:
        table.set("catalog", None)
    comment = re.match(r"\A\s*/\*.*?\*/", text, re.S)
    return (comment.group(0) + " " if comment else "") + root.sql(dialect=dialect)
