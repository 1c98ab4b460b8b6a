"""A connection to a Stockade domain gateway or network node.

Queries go over Arrow Flight SQL through ADBC (one login per connection);
budgets, requests and search are the gateway's JSON actions
(:class:`gateway.remote.GatewayClient`). A query's ε, dialect and (on a network)
partial results are sent as the statement's ``x-stockade-*`` call headers, so the
SQL reaches the gateway exactly as written and the line and column of an error
point into it. A leading options comment in the SQL (``/* epsilon: 0.5 */``)
still works, and wins over the arguments; both at once must agree.

>>> _leading_options("/* epsilon: 0.5; dialect: postgres */ SELECT 1")
{'epsilon': '0.5', 'dialect': 'postgres'}
>>> _with_options("SELECT 1", {"dialect": "tsql"})
'/* dialect: tsql */ SELECT 1'
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pandas as pd
import polars as pl
import pyarrow as pa
from sqlglot import exp

from gateway.errors import (
    ConfigError,
    InputError,
    NotSupportedError,
    StockadeError,
    TableNotFoundError,
    UnavailableError,
)
from gateway.limits import truncated_at
from gateway.remote import GatewayClient
from stockade.dataframe import DataFrame, as_pandas, as_polars
from stockade.errors import TruncatedAnswerWarning, from_driver

if TYPE_CHECKING:
    from stockade.frame import Source, Table

PASSWORD_ENV = "STOCKADE_PASSWORD"
FEDERATED = "federated"
_SCHEMES = ("grpc://", "grpc+tls://", "grpc+tcp://")
_HEADER = "adbc.flight.sql.rpc.call_header.x-stockade-"
_TLS_ROOTS = "adbc.flight.sql.client_option.tls_root_certs"
_LEADING = re.compile(r"\A\s*(?:/\*(?P<block>.*?)\*/|--(?P<line>[^\r\n]*))", re.DOTALL)
_OPTION = re.compile(r"\A\s*(?P<key>[A-Za-z_]+)\s*:(?P<value>.*)\Z", re.DOTALL)
_CATALOG_SCHEMA: dict[str, Any] = {
    "catalog": pl.Utf8, "dataset": pl.Utf8, "table": pl.Utf8, "mode": pl.Utf8,
    "description": pl.Utf8, "columns": pl.List(pl.Utf8), "types": pl.List(pl.Utf8)}


def connect(url: str, user: str, password: str | None = None, *,
            tls_root_certs: str | os.PathLike[str] | bytes | None = None) -> Connection:
    """Log in to the gateway or network at ``url`` (``grpc://HOST:PORT``, ``grpc+tls://…``).

    ``password`` None reads ``$STOCKADE_PASSWORD``. ``tls_root_certs`` is the CA
    to trust for a ``grpc+tls`` server with a private certificate: a PEM file's
    path, or the PEM itself as bytes.
    """
    return Connection(url, user, password, tls_root_certs=tls_root_certs)


def _password(password: str | None) -> str:
    if password is not None:
        return password
    found = os.environ.get(PASSWORD_ENV)
    if found is None:
        raise ConfigError(f"No password given: pass password=… or set ${PASSWORD_ENV}.")
    return found


def _certs(value: str | os.PathLike[str] | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the TLS root certificates {text!r}: "
                          f"{exc.strerror}.") from None


def _leading_options(sql: str) -> dict[str, str]:
    """The options of the SQL's leading options comment (empty when it has none)."""
    match = _LEADING.match(sql)
    if match is None:
        return {}
    body = match.group("block") if match.group("block") is not None else match.group("line")
    parts = [_OPTION.match(p) for p in re.split(r"[;,]", body) if p.strip()]
    if not parts or not all(parts):
        return {}
    return {m.group("key").lower(): m.group("value").strip() for m in parts if m}


def _with_options(sql: str, options: Mapping[str, str]) -> str:
    """``sql`` with ``options`` as its leading options comment (merged with its own)."""
    own = _leading_options(sql)
    merged = {**options, **own}
    if not merged:
        return sql
    text = _LEADING.sub("", sql, count=1).lstrip() if own else sql
    return "/* " + "; ".join(f"{k}: {v}" for k, v in merged.items()) + " */ " + text


def _split(name: str) -> tuple[str | None, str, str]:
    """``(catalog, dataset, table)`` of a name written ``[catalog.]dataset.table``."""
    try:
        table = exp.to_table(name, dialect="duckdb")
    except Exception:  # noqa: BLE001 - sqlglot raises several kinds for a bad name
        table = None
    if table is None or not table.name or not table.db:
        raise InputError(f"Name a table as dataset.table (or catalog.dataset.table), "
                         f"not {name!r}.")
    return (table.catalog or None), table.db, table.name


class Connection:
    """A logged-in connection: SQL and dataframe queries, catalog, budget, requests."""

    def __init__(self, url: str, user: str, password: str | None = None, *,
                 tls_root_certs: str | os.PathLike[str] | bytes | None = None) -> None:
        if not url.startswith(_SCHEMES):
            raise ConfigError(f"Bad URL {url!r}: use grpc://HOST:PORT, or grpc+tls://HOST:PORT "
                              "for a server with TLS.")
        self.url = url
        self.user = user
        self._password = _password(password)
        self._certs = _certs(tls_root_certs)
        db_kwargs = {"username": user, "password": self._password}
        if self._certs is not None:
            db_kwargs[_TLS_ROOTS] = self._certs.decode()
        try:
            self._adbc = flight_sql.connect(url, db_kwargs=db_kwargs, autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise from_driver(exc, url) from None
        self._actions: GatewayClient | None = None
        self._catalogs: list[str] | None = None
        self._source: Source | None = None
        self.closed = False

    # -- queries --------------------------------------------------------------------

    def arrow(self, query: str, *, epsilon: float | None = None, dialect: str | None = None,
              partial_results: bool | None = None) -> pa.Table:
        """The answer to ``query`` as a :class:`pyarrow.Table`, schema metadata intact.

        ``epsilon`` is the ε per noisy value for ``dp`` tables (else the policy's
        ``epsilon_per_query``); ``dialect`` the SQL dialect (else DuckDB's);
        ``partial_results`` (network only) answers from the domains that answered.
        An answer cut at the role's ``max_rows`` warns
        (:class:`~stockade.errors.TruncatedAnswerWarning`) and says so in its schema
        (``stockade.truncated``, ``stockade.max_rows``).
        """
        self._check_open()
        headers = self._headers(query, epsilon=epsilon, dialect=dialect,
                                partial_results=partial_results)
        try:
            cursor = self._adbc.cursor()
            try:
                if headers:
                    cursor.adbc_statement.set_options(**headers)
                cursor.execute(query)
                table = cursor.fetch_arrow_table()
            finally:
                cursor.close()
        except adbc_driver_manager.Error as exc:
            raise from_driver(exc, self.url) from None
        cut = truncated_at(table.schema)
        if cut is not None:
            warnings.warn(TruncatedAnswerWarning(
                f"The answer stops at {cut} rows, the most your role may fetch (max_rows); "
                "rows past them were not sent. Filter or aggregate, or ask the data owner "
                "for a higher limit."), stacklevel=2)
        return table

    def sql(self, query: str, *, epsilon: float | None = None, dialect: str | None = None,
            partial_results: bool | None = None) -> DataFrame:
        """The answer as a polars :class:`~stockade.DataFrame`, with ``.privacy``."""
        return as_polars(self.arrow(query, epsilon=epsilon, dialect=dialect,
                                    partial_results=partial_results))

    def pandas(self, query: str, *, epsilon: float | None = None, dialect: str | None = None,
               partial_results: bool | None = None) -> pd.DataFrame:
        """The answer as a pandas DataFrame; its privacy is in ``df.attrs["privacy"]``."""
        return as_pandas(self.arrow(query, epsilon=epsilon, dialect=dialect,
                                    partial_results=partial_results))

    def _headers(self, query: str, **options: Any) -> dict[str, str]:
        given = {k: v for k, v in options.items() if v is not None}
        written = _leading_options(query)
        headers = {}
        for key, value in given.items():
            if key == "epsilon":
                text = repr(float(value))
            elif key == "partial_results":
                text = "true" if value else "false"
            else:
                text = str(value)
            if key in written and written[key].strip().lower() != text.lower() and not (
                    key == "epsilon" and _same_number(written[key], value)):
                raise InputError(f"The query's options comment says {key}: {written[key]}, "
                                 f"but {key}={value!r} was passed; give it once.")
            headers[_HEADER + key.replace("_", "-")] = text
        return headers

    # -- what exists ----------------------------------------------------------------

    @property
    def is_network(self) -> bool:
        """True when ``url`` is a network node (it has the ``federated`` catalog)."""
        return FEDERATED in self._catalog_names()

    def _catalog_names(self) -> list[str]:
        if self._catalogs is None:
            objects = self._driver(lambda: self._adbc.adbc_get_objects(depth="catalogs"))
            self._catalogs = [str(c) for c in objects.read_all().column("catalog_name")
                              .to_pylist()]
        return self._catalogs

    def catalog(self) -> pl.DataFrame:
        """The tables you may query: one row per table, with its columns as you see them.

        Columns: ``catalog`` (the domain; on a network also ``federated``),
        ``dataset``, ``table``, ``mode`` and ``description`` (your access mode and
        the table's description; from a domain only), ``columns`` and ``types``.
        """
        reader = self._driver(lambda: self._adbc.adbc_get_objects(depth="columns"))
        about: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        if not self.is_network:
            for dataset in self._action("stockade.catalog") or ():
                for t in dataset.get("tables") or ():
                    about[(dataset["dataset"], t["table"])] = (t.get("mode"),
                                                               t.get("description"))
        rows = []
        for cat in reader.read_all().to_pylist():
            for schema in cat["catalog_db_schemas"] or ():
                for t in schema["db_schema_tables"] or ():
                    columns = sorted(t["table_columns"] or (),
                                     key=lambda c: c["ordinal_position"] or 0)
                    mode, description = about.get((schema["db_schema_name"], t["table_name"]),
                                                  (None, None))
                    rows.append({"catalog": cat["catalog_name"],
                                 "dataset": schema["db_schema_name"],
                                 "table": t["table_name"], "mode": mode,
                                 "description": description or None,
                                 "columns": [c["column_name"] for c in columns],
                                 "types": [c["xdbc_type_name"] for c in columns]})
        return pl.DataFrame(rows, schema=_CATALOG_SCHEMA)

    def schema(self, name: str) -> pa.Schema:
        """The columns of table ``name`` (``dataset.table``, or ``catalog.dataset.table``)
        as your role sees them: hidden columns absent, masked columns with the mask's type.

        On a network, name the domain (``st_marys.oncology.screenings``) or
        ``federated.oncology.screenings``.
        """
        catalog, dataset, table = _split(name)
        self._check_open()
        if catalog is None and self.is_network:
            domains = [c for c in self._catalog_names() if c != FEDERATED]
            first = domains[0] if domains else "DOMAIN"
            raise InputError(f"Name the domain of table '{name}': write {first}.{name} to ask "
                             f"one domain, or {FEDERATED}.{name} to ask every domain that "
                             f"holds it.")
        try:
            found = self._adbc.adbc_get_table_schema(table, catalog_filter=catalog,
                                                     db_schema_filter=dataset)
        except adbc_driver_manager.Error as exc:
            if getattr(exc, "status_code", None) != adbc_driver_manager.AdbcStatusCode.NOT_FOUND:
                raise from_driver(exc, self.url) from None
            raise TableNotFoundError(name, candidates=self._table_names(qualified=bool(
                catalog))) from None
        return pa.schema([f.remove_metadata() for f in found])

    def _table_names(self, *, qualified: bool) -> list[str]:
        names = []
        for row in self.catalog().iter_rows(named=True):
            base = f"{row['dataset']}.{row['table']}"
            names.append(f"{row['catalog']}.{base}" if qualified else base)
        return names

    def table(self, name: str) -> Table:
        """A lazy dataframe expression over table ``name`` (see :mod:`stockade.frame`)."""
        from stockade.frame import Table

        return Table.over(self, name)

    @property
    def ibis_source(self) -> Source:
        """The Ibis backend that this connection's tables are bound to."""
        if self._source is None:
            from stockade.frame import Source

            self._source = Source(self)
        return self._source

    # -- budget, requests, search ---------------------------------------------------

    def budget(self) -> list[dict[str, Any]]:
        """Your ε/δ budget per ``dp`` dataset: allowance, spent, remaining.

        On a network node, each domain's, asked with your login, each entry with
        its ``domain`` (a domain that cannot be asked is named in a warning).
        """
        if not self.is_network:
            return list(self._action("stockade.budget") or ())
        status = self._action("stockade.network.status") or {}
        budgets: list[dict[str, Any]] = []
        failed = []
        for domain in status.get("domains") or ():
            name, url = domain["name"], domain["url"]
            try:
                with GatewayClient(url, self.user, self._password,
                                   tls_root_certs=self._certs) as there:
                    entries = there.action("stockade.budget") or ()
            except StockadeError as exc:
                failed.append(f"{name}: {exc.message}")
                continue
            budgets += [{"domain": name, **entry} for entry in entries]
        if failed and len(failed) == len(status.get("domains") or ()):
            raise UnavailableError("No domain of the network gave a budget: "
                                   + "; ".join(failed))
        if failed:
            warnings.warn("No budget from " + "; ".join(failed), stacklevel=2)
        return budgets

    def cost(self, query: str, *, epsilon: float | None = None,
             dialect: str | None = None) -> dict[str, Any]:
        """What ``query`` would cost (ε, δ) and leave, without running or charging it."""
        self._domain_only("cost()")
        body: dict[str, Any] = {"query": _with_options(query, {"dialect": dialect}
                                                       if dialect else {})}
        if epsilon is not None:
            body["epsilon"] = float(epsilon)
        return dict(self._action("stockade.cost", body))

    def request_budget(self, dataset: str, epsilon: float, reason: str,
                       delta: float = 0.0) -> dict[str, Any]:
        """Ask the data owner for ``epsilon`` (and ``delta``) more on ``dataset``."""
        self._domain_only("request_budget()")
        return dict(self._action("stockade.request_budget", {
            "dataset": dataset, "epsilon": epsilon, "delta": delta, "reason": reason}))

    def requests(self) -> list[dict[str, Any]]:
        """Your requests to the data owner, oldest first, with their decisions."""
        self._domain_only("requests()")
        return list(self._action("stockade.my_requests") or ())

    def search(self, term: str) -> list[dict[str, Any]]:
        """Datasets of the network's domains matching ``term`` (metadata only), best first.

        Each result names its ``domain``, ``dataset``, ``mode``, ``tables`` and
        columns, and what ``matched``. Domains that could not be searched are
        named in a warning; when none could, the search fails.
        """
        if not self.is_network:
            raise NotSupportedError("Dataset search runs on a network node: connect to the "
                                    "network's URL to search its domains.")
        answer = self._action("stockade.search", {"term": term}) or {}
        failed = {n: s for n, s in (answer.get("domains") or {}).items() if s != "ok"}
        if failed and len(failed) == len(answer.get("domains") or {}):
            raise UnavailableError("No domain of the network could be searched: " + "; ".join(
                f"{n}: {s}" for n, s in failed.items()))
        if failed:
            warnings.warn("Not searched: " + "; ".join(f"{n}: {s}" for n, s in failed.items()),
                          stacklevel=2)
        return list(answer.get("results") or ())

    def _domain_only(self, what: str) -> None:
        if not self.is_network:
            return
        try:
            status = self._action("stockade.network.status") or {}
            where = ", ".join(f"{d['name']} at {d['url']}" for d in status.get("domains", ()))
        except StockadeError:
            where = ""
        raise NotSupportedError(
            f"{what} asks one domain, and this is a network node: each domain keeps its own "
            f"budgets and requests. Connect to the domain itself"
            + (f" ({where})." if where else "."))

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("This connection is closed: open another with stockade.connect().")

    def _action(self, name: str, body: Mapping[str, Any] | None = None) -> Any:
        self._check_open()
        if self._actions is None:
            self._actions = GatewayClient(self.url, self.user, self._password,
                                          tls_root_certs=self._certs)
        return self._actions.action(name, body)

    def _driver(self, call: Any) -> Any:
        self._check_open()
        try:
            return call()
        except adbc_driver_manager.Error as exc:
            raise from_driver(exc, self.url) from None

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Log out (ends the Flight SQL session) and close the connection."""
        if self.closed:
            return
        self.closed = True
        if self._actions is not None:
            self._actions.close()
        try:
            self._adbc.close()
        except adbc_driver_manager.Error:
            pass  # the server is gone already: nothing left to end

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<stockade.Connection {self.user}@{self.url}{' (closed)' if self.closed else ''}>"


def _same_number(text: str, value: object) -> bool:
    try:
        return float(text) == float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
