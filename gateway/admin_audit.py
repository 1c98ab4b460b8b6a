"""The owner's view of the domain: status, the audit log, budgets overall, schemas per role.

These are owner actions of :mod:`gateway.admin` (``docs/api.md``, "Audit, status
and budgets"). All but ``stockade.budget.cap`` only read, and are not audited.

Row counts in ``stockade.status`` are counted by the engine (``COUNT(*)`` over the
table's view, which DuckDB answers from Parquet metadata without a scan) and kept
per engine while the source file is unchanged, or for :data:`ROW_COUNT_TTL_S`
when the source is not one file (a directory, a database server).

>>> parse_time("2025-05-02", key="since")
1746144000.0
>>> parse_time("2025-05-02", key="until")  # a day given as 'until' includes that day
1746230400.0
>>> parse_time("2025-05-02T09:30:00+02:00", key="since")
1746171000.0
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from connectors._sql import identifier
from gateway.admin import _action, _amount, _dataset, _iso, _role, _text, _user, check_fields
from gateway.audit import KINDS, AuditFilter, export_csv, export_jsonl
from gateway.audit_tally import tally
from gateway.domain import Domain
from gateway.engine import Engine
from gateway.errors import InputError, StockadeError, did_you_mean
from gateway.flightsql.sqlinfo import DEFAULT_SQL_INFO, SqlInfo
from gateway.ledger import DELTA_UNIT, EPSILON_UNIT
from policy.access import catalog_for
from policy.model import Budget, Source
from policy.principal import Principal

log = logging.getLogger("stockade.admin")

FILTER_FIELDS = ("user", "kind", "since", "until", "contains", "refused", "before_id")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_EXPORT = 100_000
EXPORT_FORMATS = ("csv", "jsonl")
DEFAULT_STATS_DAYS = 30
MAX_STATS_DAYS = 3660
#: How long a row count of a source that is not one file is kept, in seconds.
ROW_COUNT_TTL_S = 300.0
#: How long counting one table's rows may take before status gives up on it.
ROW_COUNT_TIMEOUT_S = 30.0
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# ---------------------------------------------------------------- body checking


def parse_time(value: Any, *, key: str) -> float:
    """Epoch seconds of an ISO 8601 date or time (UTC unless it says otherwise).

    A bare day as ``until`` means the end of that day.
    """
    if not isinstance(value, str):
        raise InputError(f"Field '{key}' must be an ISO date or time, e.g. 2025-05-02 or "
                         f"2025-05-02T09:00:00Z, not {json.dumps(value)}.")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"Field '{key}' must be an ISO date or time, e.g. 2025-05-02 or "
                         f"2025-05-02T09:00:00Z, not {json.dumps(value)}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if key == "until" and _DAY.fullmatch(text):
        moment += timedelta(days=1)
    return moment.timestamp()


def _int(body: Mapping[str, Any], key: str, *, default: int | None, minimum: int,
         maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"≥ {minimum}"
        raise InputError(f"Field '{key}' must be a whole number {bound}, "
                         f"not {json.dumps(value)}.")
    return value


def _filter(body: Mapping[str, Any]) -> AuditFilter:
    kind = _text(body, "kind", required=False)
    if kind is not None and kind not in KINDS:
        raise InputError(f"Field 'kind': unknown kind '{kind}'.{did_you_mean(kind, KINDS)} "
                         f"Kinds: {', '.join(KINDS)}.")
    refused = body.get("refused")
    if refused is not None and not isinstance(refused, bool):
        raise InputError("Field 'refused' must be true or false.")
    since = parse_time(body["since"], key="since") if body.get("since") is not None else None
    until = parse_time(body["until"], key="until") if body.get("until") is not None else None
    if since is not None and until is not None and since >= until:
        raise InputError(f"Field 'since' ({body['since']}) must be before 'until' "
                         f"({body['until']}).")
    return AuditFilter(
        user=_text(body, "user", required=False),
        kind=kind, since=since, until=until,
        contains=_text(body, "contains", required=False, max_length=1000),
        refused=refused,
        before_id=_int(body, "before_id", default=None, minimum=1),
    )


# ---------------------------------------------------------------- the audit log


@_action("stockade.audit.query",
         'Audit records, newest first: {"user"?, "kind"?, "since"?, "until"?, "contains"?, '
         '"refused"?, "limit"?, "before_id"?}', owner=True, audited=False)
def audit_query(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, (*FILTER_FIELDS, "limit"))
    where = _filter(body)
    limit = _int(body, "limit", default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    assert limit is not None
    records = domain.audit.query(where, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit]
    return {"records": [r.to_json() for r in records],
            "next_before_id": records[-1].id if more else None}


@_action("stockade.audit.export",
         'Audit records as CSV or JSON lines, oldest first: {filters of stockade.audit.query, '
         '"format"?: "csv"|"jsonl", "limit"?}', owner=True, audited=False)
def audit_export(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, (*FILTER_FIELDS, "limit", "format"))
    fmt = _text(body, "format", required=False) or "csv"
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"Field 'format': unknown format '{fmt}'."
                         f"{did_you_mean(fmt, EXPORT_FORMATS)} Formats: csv, jsonl.")
    where = _filter(body)
    limit = _int(body, "limit", default=MAX_EXPORT, minimum=1, maximum=MAX_EXPORT)
    assert limit is not None
    records = domain.audit.query(where, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit][::-1]
    content = export_csv(records) if fmt == "csv" else export_jsonl(records)
    return {"format": fmt, "records": len(records), "content": content,
            # More records match: export again with this before_id for the older ones.
            "next_before_id": records[0].id if more else None}


@_action("stockade.audit.verify", "Check the audit log's hash chain", owner=True,
         audited=False)
def audit_verify(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ())
    result = domain.audit.verify()
    return {"ok": result.ok, "records": result.count, "first_bad_record": result.bad_id,
            "problem": result.problem or None}


@_action("stockade.audit.stats",
         'Queries per day and ε spent per user and dataset: {"days"?}', owner=True,
         audited=False)
def audit_stats(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ("days",))
    days = _int(body, "days", default=DEFAULT_STATS_DAYS, minimum=1, maximum=MAX_STATS_DAYS)
    assert days is not None
    today = datetime.fromtimestamp(domain.store._clock(), UTC).date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
    counts = tally(domain.audit).per_day(since=start)
    per_day = []
    for n in range(days):
        day = (first + timedelta(days=n)).isoformat()
        queries, refused = counts.get(day, (0, 0))
        per_day.append({"day": day, "queries": queries, "refused": refused})
    with domain.store._pool.connection() as con:
        rows = con.execute(
            "SELECT user_name, dataset, SUM(epsilon), SUM(delta), COUNT(*) FROM budget_charges"
            " GROUP BY user_name COLLATE NOCASE, dataset"
            " ORDER BY user_name COLLATE NOCASE, dataset").fetchall()
    spent = [{"user": u, "dataset": d, "epsilon": e / EPSILON_UNIT, "delta": dl / DELTA_UNIT,
              "queries": n} for u, d, e, dl, n in rows]
    return {"queries_per_day": per_day, "epsilon_by_user": spent}


# ---------------------------------------------------------------- budgets


def _dp_budgets(domain: Domain, principal: Principal) -> dict[str, Budget | None]:
    """Dataset → the role's default budget, for each dataset the principal reads in dp."""
    out: dict[str, Budget | None] = {}
    for access in catalog_for(domain.policy, principal).values():
        if access.mode == "dp":
            out.setdefault(access.dataset, access.budget)
    return out


@_action("stockade.budget.list",
         'Every user\'s ε/δ budget per dp dataset: {"user"?, "dataset"?}', owner=True,
         audited=False)
def budget_list(domain: Domain, principal: Principal, body: dict[str, Any]
                ) -> list[dict[str, Any]]:
    check_fields(body, ("user", "dataset"))
    only_user = _user(domain, body, "user").name if body.get("user") is not None else None
    only_dataset = _dataset(domain, body) if body.get("dataset") is not None else None
    pairs: dict[tuple[str, str], Budget | None] = {}
    users = {u.name.lower(): u for u in domain.store.list_users()}
    for user in users.values():
        for dataset, budget in _dp_budgets(domain, Principal(user.name, user.role,
                                                              user.attributes)).items():
            pairs[(user.name, dataset)] = budget
    for name, dataset in domain.ledger.allowances():
        known = users.get(name.lower())
        pairs.setdefault((known.name if known else name, dataset), None)
    out = []
    for (name, dataset), default in sorted(pairs.items(),
                                           key=lambda p: (p[0][0].lower(), p[0][1])):
        if only_user is not None and name.lower() != only_user.lower():
            continue
        if only_dataset is not None and dataset != only_dataset:
            continue
        balance = domain.ledger.balance(name, dataset, default=default)
        out.append({**balance.to_json(), "cap_epsilon": balance.cap_epsilon,
                    "cap_delta": balance.cap_delta})
    return out


#: A cap's δ when none is given: δ sums stay far below 1, so this caps ε alone.
UNCAPPED_DELTA = 1.0


@_action("stockade.budget.cap",
         'Cap what all users together may spend on a dataset (null ε removes it): '
         '{"dataset", "epsilon", "delta"?}', owner=True, audited=True)
def budget_cap(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ("dataset", "epsilon", "delta"))
    dataset = _dataset(domain, body)
    if "epsilon" not in body:
        raise InputError("Field 'epsilon' is required: the cap's ε, or null to remove the cap.")
    epsilon = _amount(body, "epsilon", required=False)
    delta = _amount(body, "delta", required=False)
    if epsilon is None:
        if delta is not None:
            raise InputError("Field 'delta' needs an 'epsilon': a cap is removed as a whole.")
        domain.ledger.set_dataset_cap(dataset, None, policy=domain.policy)
    else:
        if delta is None:  # the current cap's δ, else the policy's, else δ is not capped
            current = domain.ledger.dataset_caps().get(dataset)
            declared = domain.policy.datasets[dataset].budget_cap
            delta = (current[1] if current is not None
                     else declared.delta if declared is not None else UNCAPPED_DELTA)
        domain.ledger.set_dataset_cap(dataset, epsilon, delta)
    cap = domain.ledger.dataset_caps().get(dataset)
    spent = _dataset_spent(domain, dataset)
    return {"dataset": dataset,
            "cap_epsilon": None if cap is None else cap[0],
            "cap_delta": None if cap is None else cap[1],
            "spent_epsilon": spent[0], "spent_delta": spent[1]}


def _dataset_spent(domain: Domain, dataset: str) -> tuple[float, float]:
    with domain.store._pool.connection() as con:
        eps, delta = con.execute(
            "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM budget_charges"
            " WHERE dataset = ?", (dataset,)).fetchone()
    return int(eps) / EPSILON_UNIT, int(delta) / DELTA_UNIT


# ---------------------------------------------------------------- schemas per role


def _sample_principal(domain: Domain, role: str) -> Principal:
    """A principal of ``role``: a user of it if there is one (their attributes bind
    masks that use ``{user.…}``), else a nameless one."""
    for user in domain.store.list_users():
        if user.role == role and not user.disabled:
            return Principal(user.name, role, user.attributes)
    return Principal(f"<{role}>", role, {})


@_action("stockade.catalog.roles",
         'Each table\'s schema as each role sees it: {"role"?}', owner=True, audited=False)
def catalog_roles(domain: Domain, principal: Principal, body: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    check_fields(body, ("role",))
    only = _role(domain, body, required=False)
    out: list[dict[str, Any]] = []
    for role in sorted(domain.policy.roles):
        if only is not None and role != only:
            continue
        try:
            tables = domain.catalog(_sample_principal(domain, role))
        except StockadeError as exc:
            out.append({"role": role, "dataset": None, "table": None, "mode": None,
                        "columns": [], "error": exc.message})
            continue
        for table in tables:
            out.append({"role": role, "dataset": table.dataset, "table": table.name,
                        "mode": table.access.mode,
                        "columns": [{"name": f.name, "type": str(f.type)}
                                    for f in table.schema]})
    return out


# ---------------------------------------------------------------- status


def _raw_sources(text: str | None, policy_file: str | None) -> dict[tuple[str, str], Any]:
    """(dataset, table) → the ``source`` mapping as written in the policy's YAML."""
    try:
        if text is None and policy_file:
            text = Path(policy_file).read_text()
        document = yaml.safe_load(text or "")
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, str], Any] = {}
    datasets = document.get("datasets") if isinstance(document, dict) else None
    for ds, dataset in (datasets or {}).items():
        tables = dataset.get("tables") if isinstance(dataset, dict) else None
        for name, table in (tables or {}).items():
            if isinstance(table, dict):
                out[(str(ds), str(name))] = table.get("source")
    return out


def describe_source(source: Source, written: Any) -> str:
    """``format path-or-table`` of a source: never a DSN, never a secret's value.

    ``written`` is the source as the policy file has it: a path read from the
    environment shows as ``$NAME``, a path written in the file as written.

    >>> describe_source(Source("parquet", "/srv/p/data/x.parquet"),
    ...                 {"format": "parquet", "path": "data/x.parquet"})
    'parquet data/x.parquet'
    >>> describe_source(Source("parquet", "s3://key:secret@bucket/x.parquet"),
    ...                 {"format": "parquet", "path": {"$env": "X_PATH"}})
    'parquet $X_PATH'
    >>> describe_source(Source("postgres", None, "public.visits", "postgresql://u:pw@db/h"),
    ...                 {"format": "postgres", "dsn": {"$env": "PG"}, "table": "public.visits"})
    'postgres public.visits'
    >>> describe_source(Source("postgres", None, None, "host=db password=pw", "SELECT 1"),
    ...                 {"format": "postgres", "dsn": "host=db password=pw", "query": "SELECT 1"})
    'postgres (query)'
    """
    parts = [source.format]
    path = written.get("path") if isinstance(written, dict) else None
    if isinstance(path, str):
        parts.append(path)
    elif isinstance(path, dict) and isinstance(path.get("$env"), str):
        parts.append("$" + path["$env"])
    elif source.path is not None:
        parts.append("(path not shown)")
    if source.table is not None:
        parts.append(source.table)
    elif getattr(source, "query", None) is not None:
        parts.append("(query)")
    return " ".join(parts)


_row_counts: weakref.WeakKeyDictionary[Engine, dict[tuple[str, str], tuple[Any, int | None]]] = (
    weakref.WeakKeyDictionary())
_row_counts_lock = threading.Lock()


def _stamp(source: Source) -> Any:
    """What must stay the same for a stored row count to hold."""
    if source.path is not None and source.format != "postgres":
        try:
            stat = os.stat(source.path)
        except OSError:
            stat = None
        if stat is not None and not os.path.isdir(source.path):
            return (source, stat.st_mtime_ns, stat.st_size)
    return (source, int(time.monotonic() // ROW_COUNT_TTL_S))


def row_count(engine: Engine, dataset: str, table: str, source: Source) -> int | None:
    """The table's rows (None if they cannot be counted in time), counted once per source."""
    stamp = _stamp(source)
    with _row_counts_lock:
        cached = _row_counts.setdefault(engine, {}).get((dataset, table))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    rows: int | None = None
    try:
        reader = engine.execute(f"SELECT COUNT(*) FROM {identifier(dataset)}.{identifier(table)}",
                                timeout_s=ROW_COUNT_TIMEOUT_S)
        rows = int(reader.read_all().column(0)[0].as_py())
    except StockadeError as exc:
        log.warning("could not count the rows of %s.%s: %s", dataset, table, exc.message)
    with _row_counts_lock:
        _row_counts.setdefault(engine, {})[(dataset, table)] = (stamp, rows)
    return rows


@_action("stockade.status",
         "The domain: datasets and sources, row counts, uptime, query counts, users",
         owner=True, audited=False)
def status(domain: Domain, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
    check_fields(body, ())
    with domain.pinned() as state:  # one policy version, its engine open meanwhile
        policy = state.policy
        written = _raw_sources(state.text, policy.file)
        datasets = []
        for ds_name, dataset in sorted(policy.datasets.items()):
            tables = []
            for name, table in sorted(dataset.tables.items()):
                tables.append({
                    "table": name, "description": table.description,
                    "source": describe_source(table.source, written.get((ds_name, name))),
                    "rows": row_count(state.engine, ds_name, name, table.source),
                    "columns": len(state.schemas.get((ds_name, name), {})),
                })
            datasets.append({"dataset": ds_name, "description": dataset.description,
                             "tags": list(dataset.tags), "tables": tables})
        version = state.version
    now = time.time()
    started = getattr(domain, "started_at", now)
    counts = tally(domain.audit).counts(since=now - 86_400)
    with domain.store._pool.connection() as con:
        (users,) = con.execute("SELECT COUNT(*) FROM users").fetchone()
        (pending,) = con.execute(
            "SELECT COUNT(*) FROM requests WHERE status = 'pending'").fetchone()
    return {
        "domain": policy.domain.name, "description": policy.domain.description,
        "started_at": _iso(started), "uptime_s": round(now - started, 3),
        "version": DEFAULT_SQL_INFO[SqlInfo.FLIGHT_SQL_SERVER_VERSION],
        "policy_version": version,
        "datasets": datasets,
        "queries": {"total": counts["total"], "refused": counts["refused"],
                    "last_24h": counts["since"]},
        "users": int(users), "pending_requests": int(pending),
        "audit_records": counts["records"],
    }
