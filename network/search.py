"""Dataset search across the domains of a network: metadata only, as the analyst sees it.

Each domain describes what the calling analyst may see with its analyst action
``stockade.catalog`` (:mod:`gateway.admin_catalog`); the network asks every
domain for it with the analyst's own credentials (:func:`answer`), so a
search never shows a dataset, table or column that the domain would not show
the analyst directly. :func:`search` is the pure part: it matches a term against
those catalogs.

The network server (:mod:`network.server`) answers its action ``stockade.search``
``{"term": "…"}`` with :func:`answer`, given one fetch per domain (that domain's
``stockade.catalog`` called with the analyst's token there):
``{"term", "results": [...], "domains": {name: status}}``,
where a domain's status is ``ok`` or why it was not searched (``unavailable: …``,
``rejected: …``, ``error: …``). ``stockade search`` (:mod:`gateway.cli_search`)
prints it.

Matching is case-insensitive. The term is split into words; a dataset matches
when every word is a substring of at least one of: the dataset's name,
description or tags, a table's name or description, a column's name or
description. Results say which kinds of field matched (``matched``, in the
order of :data:`FIELDS`), per dataset and per table, and come best first:

1. the whole term equals the dataset's name, one of its tags, or a table's name;
2. it equals a column's name;
3. every word is found in a name or tag (not only in descriptions);
4. the rest;

then by domain and dataset name.

>>> catalogs = {
...     "st_marys": [{"dataset": "oncology", "description": "Cancer screening results",
...                   "tags": ["cancer"], "mode": "dp",
...                   "tables": [{"table": "screenings", "description": "", "mode": "dp",
...                               "columns": [{"name": "tumor_size_mm", "type": "double"}]}]}],
...     "city_general": [{"dataset": "cancer", "description": "", "tags": [], "mode": "raw",
...                       "tables": []}]}
>>> [(r["domain"], r["dataset"], r["matched"]) for r in search(catalogs, "Cancer")]
[('city_general', 'cancer', ['dataset']), ('st_marys', 'oncology', ['description', 'tag'])]
>>> [(r["dataset"], r["tables"][0]["matched"]) for r in search(catalogs, "tumor size")]
[('oncology', ['column'])]
>>> search(catalogs, "genome")
[]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.errors import InputError, StockadeError

#: Kinds of field a term can match, in the order ``matched`` lists them.
FIELDS = ("dataset", "description", "tag", "table", "table_description", "column",
          "column_description")
#: Fields that are names (a match there ranks above a match in descriptions only).
NAME_FIELDS = frozenset({"dataset", "tag", "table", "column"})
MAX_TERM_LENGTH = 200
#: The domain action that lists what the caller may see.
CATALOG_ACTION = "stockade.catalog"

Catalog = list[dict[str, Any]]
_WORDS = re.compile(r"\S+")


def words(term: str) -> list[str]:
    """The lower-cased words of a search term; refuses an empty or overlong one.

    >>> words("  Tumor SIZE ")
    ['tumor', 'size']
    """
    if not isinstance(term, str) or not term.strip():
        raise InputError("Give a search term, e.g. 'cancer' or 'tumor_size'.")
    if len(term) > MAX_TERM_LENGTH:
        raise InputError(f"The search term must be at most {MAX_TERM_LENGTH} characters long.")
    return _WORDS.findall(term.lower())


def search(catalogs: Mapping[str, Sequence[Mapping[str, Any]]], term: str) -> list[dict[str, Any]]:
    """Datasets of ``catalogs`` (domain → its ``stockade.catalog`` answer) matching ``term``.

    Each result: ``{domain, dataset, description, tags, mode, tables: [{table,
    description, mode, columns, matched}], matched}``, best first (see the module doc).
    """
    wanted = words(term)
    whole = " ".join(wanted)
    ranked: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for domain, catalog in catalogs.items():
        for dataset in catalog:
            result = _match(domain, dataset, wanted, whole)
            if result is not None:
                ranked.append(result)
    ranked.sort(key=lambda item: item[0])
    return [result for _, result in ranked]


def _fields(dataset: Mapping[str, Any]) -> Iterable[tuple[str, str | None, str]]:
    """``(kind, table or None, text)`` of every searchable field of a dataset."""
    yield "dataset", None, str(dataset.get("dataset") or "")
    yield "description", None, str(dataset.get("description") or "")
    for tag in dataset.get("tags") or ():
        yield "tag", None, str(tag)
    for table in dataset.get("tables") or ():
        name = str(table.get("table") or "")
        yield "table", name, name
        yield "table_description", name, str(table.get("description") or "")
        for column in table.get("columns") or ():
            yield "column", name, str(column.get("name") or "")
            yield "column_description", name, str(column.get("description") or "")


def _match(domain: str, dataset: Mapping[str, Any], wanted: list[str], whole: str
           ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    found: set[str] = set()  # kinds that matched some word
    per_table: dict[str, set[str]] = {}
    words_found: set[str] = set()
    words_in_names: set[str] = set()
    exact_name = exact_column = False
    for kind, table, text in _fields(dataset):
        lowered = text.lower()
        if not lowered:
            continue
        hits = [w for w in wanted if w in lowered]
        if not hits:
            continue
        found.add(kind)
        words_found.update(hits)
        if kind in NAME_FIELDS:
            words_in_names.update(hits)
        if table is not None:
            per_table.setdefault(table, set()).add(kind)
        if lowered == whole:
            exact_name |= kind in ("dataset", "tag", "table")
            exact_column |= kind == "column"
    if len(words_found) < len(set(wanted)):
        return None
    tier = (0 if exact_name else 1 if exact_column
            else 2 if len(words_in_names) == len(set(wanted)) else 3)
    tables = [{**table, "matched": _ordered(per_table.get(str(table.get("table")), set()))}
              for table in dataset.get("tables") or ()]
    result = {"domain": domain, "dataset": dataset.get("dataset"),
              "description": dataset.get("description") or "",
              "tags": list(dataset.get("tags") or ()), "mode": dataset.get("mode"),
              "tables": tables, "matched": _ordered(found)}
    return (tier, domain, str(dataset.get("dataset"))), result


def _ordered(kinds: set[str]) -> list[str]:
    return [kind for kind in FIELDS if kind in kinds]


# ---------------------------------------------------------------- across the network


def gather(fetchers: Mapping[str, Callable[[], Catalog]], *, max_parallel: int = 16
           ) -> tuple[dict[str, Catalog], dict[str, str]]:
    """Run each domain's catalog fetch in parallel: ``(catalogs, status per domain)``.

    A domain that fails is left out of the catalogs and its status says why
    (``unavailable: …``, ``rejected: …``, ``error: …``); the others are ``ok``.

    >>> from gateway.errors import UnavailableError
    >>> def down() -> Catalog:
    ...     raise UnavailableError("domain 'b' is unavailable: connection refused")
    >>> gather({"a": lambda: [], "b": down})
    ({'a': []}, {'a': 'ok', 'b': "unavailable: domain 'b' is unavailable: connection refused"})
    """
    catalogs: dict[str, Catalog] = {}
    status: dict[str, str] = {}
    if not fetchers:
        return catalogs, status
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(fetchers))),
                            thread_name_prefix="stockade-search") as pool:
        futures = {name: pool.submit(fetch) for name, fetch in fetchers.items()}
        for name, future in futures.items():
            try:
                value = future.result()
            except StockadeError as exc:
                status[name] = f"{_status_kind(exc)}: {exc.message}"
                continue
            except Exception as exc:  # a domain's odd answer must not fail the search
                status[name] = f"error: {type(exc).__name__}: {exc}"
                continue
            if not isinstance(value, list):
                status[name] = f"error: '{CATALOG_ACTION}' answered {type(value).__name__}, " \
                               "not a list (is the domain's gateway older than the network?)"
                continue
            catalogs[name] = value
            status[name] = "ok"
    return catalogs, status


def _status_kind(exc: StockadeError) -> str:
    return {"unauthenticated": "rejected", "unauthorized": "rejected",
            "unavailable": "unavailable", "timed_out": "unavailable"}.get(exc.status, "error")


def answer(term: str, fetchers: Mapping[str, Callable[[], Catalog]], *,
           max_parallel: int = 16) -> dict[str, Any]:
    """The network's ``stockade.search`` answer: ``{term, results, domains}``.

    ``fetchers`` maps each domain to a call of its ``stockade.catalog`` action made
    with the analyst's credentials; ``domains`` is each domain's status (``ok`` or
    why it is not searched). The term is checked before any domain is asked.
    """
    words(term)
    catalogs, status = gather(fetchers, max_parallel=max_parallel)
    return {"term": term, "results": search(catalogs, term), "domains": status}

