"""``stockade query``: run one SQL query through a domain or a network, as an analyst.

The query goes over Flight SQL (ADBC) and the answer streams back as Arrow. On a
terminal it is shown as an aligned table (the first ``--max-rows`` rows), with,
under it, what a ``dp`` answer cost and how precise each noisy column is, and for a
federated answer how each domain answered. ``--format csv|json|parquet`` writes
the whole answer instead, to ``--output FILE`` (written whole or not at all) or to
standard output; the privacy summary then goes to standard error.

``--epsilon`` and ``--dialect`` travel as the connection's ``x-stockade-epsilon``
and ``x-stockade-dialect`` headers, so the SQL reaches the gateway exactly as
written and the line and column of an SQL error point into it. Logging in follows
:mod:`gateway.cli_remote` (``$STOCKADE_PASSWORD``, ``--password-stdin`` or a
prompt). Every failure is one ``error:`` line and exit code 2.

>>> print(render_table(pa.table({"site": ["north", "east"], "n": [1200, 450]}), 2))
site      n
-----  ----
north  1200
east    450
(2 rows)
>>> format_value(53.56150690304048), format_value(None), format_value(0.1 + 0.2)
('53.561507', 'NULL', '0.3')
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from gateway.cli_remote import _tls_ca, add_remote_options, login_password, login_user
from gateway.dialects import (
    DIALECT_HEADER,
    EPSILON_HEADER,
    check_dialect,
    check_epsilon,
    query_options,
)
from gateway.errors import (
    AuthenticationError,
    InputError,
    NotSupportedError,
    PermissionDeniedError,
    QueryTimeoutError,
    StockadeError,
    UnavailableError,
)
from gateway.limits import truncated_at
from gateway.remote import clean_message

FORMATS = ("table", "csv", "json", "parquet")
#: The format an ``--output`` file's name implies when ``--format`` is not given.
SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json",
            ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_MAX_ROWS = 50
#: The widest a cell of the terminal table gets before it is cut with "…".
MAX_CELL = 60

DP = b"stockade.dp."
FEDERATED = b"stockade.federated."


# -- connecting --------------------------------------------------------------------------

_STATUS_PREFIX = re.compile(r"\A[A-Z_]+: (?:\[FlightSQL\] )?")
_ADBC_SUFFIX = re.compile(r"\s*\((?:\w+); \w+\)(?:\. Vendor code: \d+)?\s*\Z")
_DIAL = re.compile(r'desc = "(?:transport: )?(?:Error while dialing:? )?(?P<reason>[^"]*)"')


def adbc_message(exc: BaseException) -> str:
    """The server's own message of an ADBC error, without the driver's decorations.

    >>> import adbc_driver_manager as m
    >>> adbc_message(m.ProgrammingError(
    ...     "INVALID_ARGUMENT: [FlightSQL] Unknown column 'x' (line 2, column 10). "
    ...     "Detail: Python exception: StockadeError\\n (InvalidArgument; Prepare)",
    ...     status_code=m.AdbcStatusCode.INVALID_ARGUMENT))
    "Unknown column 'x' (line 2, column 10)."
    """
    for key, value in getattr(exc, "details", None) or ():
        if key == "x-arrow-status-message-bin":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return clean_message(" ".join(text.split()))
    text = _ADBC_SUFFIX.sub("", _STATUS_PREFIX.sub("", str(exc).strip()))
    return clean_message(" ".join(text.split()))


def unreachable(url: str, reason: str) -> UnavailableError:
    """The error for a gateway that cannot be reached, or whose certificate is not trusted.

    >>> print(unreachable("grpc+tls://h:1", "x509: certificate signed by unknown authority"))
    Cannot verify the TLS certificate of grpc+tls://h:1 (x509: certificate signed by \
unknown authority): pass the CA that signed it with --tls-ca FILE.
    """
    reason = reason.strip().rstrip(".")
    if "certificate" in reason.lower():
        return UnavailableError(f"Cannot verify the TLS certificate of {url} ({reason}): pass "
                                "the CA that signed it with --tls-ca FILE.")
    return UnavailableError(f"Cannot reach the gateway at {url}: is it running? ({reason})")


def adbc_error(exc: BaseException, url: str) -> StockadeError:
    """The :class:`StockadeError` for an error of the ADBC driver talking to ``url``."""
    from adbc_driver_manager import AdbcStatusCode

    code = getattr(exc, "status_code", None)
    raw = str(exc)
    message = adbc_message(exc)
    if code == AdbcStatusCode.UNAUTHENTICATED:
        return AuthenticationError(message or "Wrong user name or password.")
    if code == AdbcStatusCode.UNAUTHORIZED:
        return PermissionDeniedError(message)
    if code == AdbcStatusCode.IO and ("(Unavailable;" in raw or "connection error" in raw):
        dial = _DIAL.search(raw)
        reason = dial.group("reason") if dial else message
        return unreachable(url, reason)
    if code == AdbcStatusCode.TIMEOUT:
        return QueryTimeoutError(message)
    if code == AdbcStatusCode.NOT_IMPLEMENTED:
        return NotSupportedError(message)
    if code in (AdbcStatusCode.INVALID_ARGUMENT, AdbcStatusCode.NOT_FOUND,
                AdbcStatusCode.INVALID_DATA):
        return InputError(message)
    return StockadeError(message)


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    """``(user, password)`` to log in with (see :func:`gateway.cli_remote.login_password`)."""
    user = login_user(args)
    return user, login_password(args, user)


def open_sql(args: argparse.Namespace, user: str, password: str,
             headers: Mapping[str, str] | None = None) -> Any:
    """An ADBC Flight SQL connection to ``args.url``, sending ``headers`` with every call."""
    import adbc_driver_flightsql.dbapi as flight_sql
    import adbc_driver_manager

    url = str(args.url)
    if not url.startswith(("grpc://", "grpc+tcp://", "grpc+tls://")):
        raise InputError(f"Bad gateway URL {url!r}: use grpc://HOST:PORT or "
                         "grpc+tls://HOST:PORT.")
    db_kwargs = {"username": user, "password": password}
    tls = _tls_ca(args)
    if tls is not None:
        db_kwargs["adbc.flight.sql.client_option.tls_root_certs"] = tls.decode()
    for name, value in (headers or {}).items():
        db_kwargs[f"adbc.flight.sql.rpc.call_header.{name}"] = value
    try:
        return flight_sql.connect(url, db_kwargs=db_kwargs, autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise adbc_error(exc, url) from None


@contextlib.contextmanager
def driver_errors(url: str) -> Iterator[None]:
    """Turn the driver's and Arrow's exceptions into :class:`StockadeError`."""
    import adbc_driver_manager

    try:
        yield
    except adbc_driver_manager.Error as exc:
        raise adbc_error(exc, url) from None
    except pa.ArrowException as exc:
        raise StockadeError(clean_message(" ".join(str(exc).split()))) from None


# -- the command --------------------------------------------------------------------------

def add_query_parser(sub: Any) -> None:
    """Add ``stockade query`` to the CLI's subcommands."""
    parser = sub.add_parser(
        "query", help="run SQL through a domain or a network (analysts)",
        description="Run one SQL query through a domain gateway or a network node and show "
                    "the answer: a table on the terminal (with the privacy cost and noise of "
                    "a dp answer, and each domain's status for a federated one), or the "
                    "whole answer as CSV, JSON lines or Parquet.")
    parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    parser.add_argument("sql", metavar="SQL", nargs="?",
                        help="the query; - reads it from standard input")
    parser.add_argument("--file", "-f", metavar="FILE", help="read the query from FILE")
    parser.add_argument("--dialect", metavar="D",
                        help="the SQL's dialect (postgres, tsql, spark, …; default duckdb)")
    parser.add_argument("--epsilon", metavar="E",
                        help="ε of a dp query (default: the policy's epsilon_per_query)")
    parser.add_argument("--format", choices=FORMATS,
                        help="table (default), csv, json (one object per line) or parquet; "
                             "else implied by --output's suffix")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write the whole answer to FILE (csv, json or parquet)")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, metavar="N",
                        help=f"rows the table shows (default {DEFAULT_MAX_ROWS}; 0: all)")
    add_remote_options(parser, required=True)
    parser.set_defaults(func=cmd_query)


def output_format(args: argparse.Namespace) -> str:
    """The format asked for, checked against ``--output``."""
    chosen = args.format
    if args.output and chosen is None:
        chosen = SUFFIXES.get(Path(args.output).suffix.lower())
        if chosen is None:
            raise InputError(f"Which format for {args.output}? Give --format csv, json or "
                             "parquet (or name the file .csv, .json or .parquet).")
    chosen = chosen or "table"
    if chosen == "table" and args.output:
        raise InputError("--output writes csv, json or parquet, not a table: add --format "
                         "csv, json or parquet.")
    if chosen == "parquet" and not args.output:
        raise InputError("Parquet is binary: write it to a file with --output FILE.")
    if args.max_rows < 0:
        raise InputError(f"--max-rows must be 0 (all) or more, not {args.max_rows}.")
    return str(chosen)


def _sql_source(args: argparse.Namespace) -> str | None:
    """The SQL given on the command line or in ``--file``; None for standard input."""
    if args.file and args.sql is not None:
        raise InputError("Give the query as an argument or with --file, not both.")
    if args.file:
        if args.file == "-":
            return None
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise InputError(f"Cannot read --file {args.file}: {reason}.") from None
    if args.sql is None:
        raise InputError('No query: give it as an argument ("SELECT …"), with --file FILE, '
                         "or on standard input with -.")
    return None if args.sql == "-" else str(args.sql)


def _checked_sql(sql: str) -> str:
    if not sql.strip():
        raise InputError("The query is empty.")
    return sql


def _headers(args: argparse.Namespace, sql: str | None) -> dict[str, str]:
    headers = {}
    if args.dialect is not None:
        headers[DIALECT_HEADER] = check_dialect(args.dialect)
    if args.epsilon is not None:
        headers[EPSILON_HEADER] = repr(check_epsilon(args.epsilon, what="--epsilon"))
    if sql is not None:
        try:
            own = query_options(sql)[0]
        except InputError:  # options only a network reads; it answers for them
            own = {}
        for option in ("dialect", "epsilon"):
            if option in own and getattr(args, option) is not None:
                raise InputError(f"The query's own /* {option}: {own[option]} */ comment and "
                                 f"--{option} both set the {option}: give one.")
    return headers


def cmd_query(args: argparse.Namespace) -> int:
    """``query [SQL | - | --file FILE] --url URL [--format F] [--output FILE] …``."""
    fmt = output_format(args)
    sql = _sql_source(args)
    headers = _headers(args, sql)
    user, password = credentials(args)  # before the query: --password-stdin is line one
    if sql is None:
        sql = sys.stdin.read()
        headers = _headers(args, sql)
    sql = _checked_sql(sql)
    url = str(args.url)
    conn = open_sql(args, user, password, headers)
    try:
        return _run(conn, url, sql, fmt, args)
    except BrokenPipeError:  # the reader of standard output stopped (`| head`): fine
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _run(conn: Any, url: str, sql: str, fmt: str, args: argparse.Namespace) -> int:
    """Run ``sql`` on ``conn`` and show or write the answer."""
    with driver_errors(url):
        cur = conn.cursor()
        try:
            cur.execute(sql)
            reader = cur.fetch_record_batch()
            schema = reader.schema
            if fmt == "table":
                print(render_reader(reader, args.max_rows))
                footer = privacy_footer(schema)
                if footer:
                    print()
                    print(footer)
                return 0
            rows = write_answer(reader, fmt, args.output)
        finally:
            cur.close()
    footer = privacy_footer(schema)
    if footer:
        print(footer, file=sys.stderr)
    if args.output:
        print(f"Wrote {_count(rows)} to {args.output}.", file=sys.stderr)
    return 0


def _count(rows: int) -> str:
    return f"{rows} row" if rows == 1 else f"{rows} rows"


# -- the terminal table ------------------------------------------------------------------

def format_value(value: Any) -> str:
    """One value as the terminal table shows it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-4 <= abs(value) < 1e15:
            text = f"{value:.6f}".rstrip("0").rstrip(".")
            return "0" if text == "-0" else text
        return f"{value:.6g}"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def _numeric(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_floating(type_)
                or pa.types.is_decimal(type_))


def render_table(table: pa.Table, total: int) -> str:
    """``table`` aligned (numbers to the right), then how many rows the answer has."""
    names = table.schema.names
    columns = [[format_value(v) for v in table.column(i).to_pylist()]
               for i in range(table.num_columns)]
    right = [_numeric(f.type) for f in table.schema]
    widths = [max([len(n), *map(len, c)]) for n, c in zip(names, columns, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if r else cell.ljust(w)
                         for cell, w, r in zip(cells, widths, right, strict=True)).rstrip()

    lines = [line(names), line(["-" * w for w in widths])]
    lines += [line(row) for row in zip(*columns, strict=True)]
    shown = table.num_rows
    if total > shown:
        more = total - shown
        lines.append(f"… {more} more {'row' if more == 1 else 'rows'} ({total} in all; "
                     "--max-rows N shows more, "
                     "--format csv --output FILE writes them all)")
    else:
        lines.append(f"({_count(total)})")
    return "\n".join(lines)


def render_reader(reader: pa.RecordBatchReader, max_rows: int) -> str:
    """The first ``max_rows`` rows of the answer (0: all) and the number of rows."""
    kept: list[pa.RecordBatch] = []
    shown = total = 0
    for batch in reader:
        total += batch.num_rows
        if max_rows == 0 or shown < max_rows:
            part = batch if max_rows == 0 else batch.slice(0, max_rows - shown)
            kept.append(part)
            shown += part.num_rows
    return render_table(pa.Table.from_batches(kept, schema=reader.schema), total)


# -- the privacy footer --------------------------------------------------------------------

def _num(value: float) -> str:
    return f"{value:.12g}"


def _width(value: float) -> str:
    return f"±{value:.6g}"


def _numbers(raw: bytes | None) -> list[float]:
    if not raw:
        return []
    return [float(v) for v in raw.decode().split(",") if v.strip()]


def noise_lines(schema: pa.Schema) -> list[str]:
    """One line per noisy column: its mechanism and 95% half-width."""
    rows = []
    for field in schema:
        meta = field.metadata or {}
        mechanism = meta.get(DP + b"mechanism")
        if mechanism is None:
            continue
        widths = _numbers(meta.get(DP + b"ci95_half_width"))
        derived = meta.get(DP + b"derived") == b"true"
        if not widths:
            about = "(no interval)"
        elif derived and len(widths) > 1:
            about = "derived from noisy parts " + ", ".join(_width(w) for w in widths)
        else:
            about = _width(max(widths)) + (" (derived)" if derived else "")
        mechanisms = ",".join(dict.fromkeys(mechanism.decode().split(",")))
        rows.append((field.name, mechanisms, about))
    if not rows:
        return []
    from gateway.cli_remote import format_table

    by_row = any((f.metadata or {}).get(DP + b"ci95_half_width_by_row") for f in schema)
    header = ("column", "mechanism", "95% half-width" + (" (largest row)" if by_row else ""))
    return format_table(header, rows).splitlines()


def _json_meta(meta: Mapping[bytes, bytes], key: str) -> Any:
    raw = meta.get(FEDERATED + key.encode())
    return json.loads(raw) if raw else None


def privacy_footer(schema: pa.Schema) -> str:
    """What an answer's metadata says, for people: its cut, its cost and noise, its domains.

    "" for an answer whole and without noise.
    """
    from gateway.cli_remote import format_table

    meta = schema.metadata or {}
    lines = []
    cut = truncated_at(schema)
    if cut is not None:
        lines.append(f"truncated: the answer stops at {cut} rows, the most your role may "
                     "fetch (max_rows); filter or aggregate, or ask the data owner for more")
    if DP + b"epsilon_spent" in meta:
        def value(key: str) -> float:
            return float(meta.get(DP + key.encode(), b"0"))

        if meta.get(DP + b"cached") == b"true":
            lines.append(f"privacy: the same answer as before, nothing spent; "
                         f"ε remaining {_num(value('epsilon_remaining'))}, "
                         f"δ remaining {_num(value('delta_remaining'))}")
        else:
            lines.append(f"privacy: ε spent {_num(value('epsilon_spent'))}, remaining "
                         f"{_num(value('epsilon_remaining'))}; δ spent "
                         f"{_num(value('delta_spent'))}, remaining "
                         f"{_num(value('delta_remaining'))}")
    status = _json_meta(meta, "status")
    merged = _json_meta(meta, "domains")
    if status is not None or merged is not None:
        status = dict(status or {})
        for name in merged or ():
            status.setdefault(name, "ok")
        spent = {k: _json_meta(meta, k) or {} for k in
                 ("epsilon_spent", "epsilon_remaining", "delta_spent", "delta_remaining")}
        dp = any(spent.values())
        header = ["domain", "status"] + (["ε spent", "ε remaining", "δ spent",
                                          "δ remaining"] if dp else [])
        rows = []
        for name, state in status.items():
            row = [name, str(state)]
            if dp:
                row += [_num(spent[k][name]) if name in spent[k] else "" for k in spent]
            rows.append(row)
        lines.append(f"federated: {len(merged or ())} of {len(status)} domains answered")
        lines += format_table(header, rows).splitlines()
    noise = noise_lines(schema)
    if noise:
        lines += noise
    return "\n".join(lines)


# -- files -------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def write_json_lines(reader: pa.RecordBatchReader, out: IO[str]) -> int:
    rows = 0
    for batch in reader:
        for row in batch.to_pylist():
            out.write(json.dumps({k: _json_value(v) for k, v in row.items()},
                                 ensure_ascii=False) + "\n")
        rows += batch.num_rows
    return rows


def write_csv(reader: pa.RecordBatchReader, out: IO[str]) -> int:
    import pyarrow.csv as csv

    rows = 0
    header = True
    for batch in reader:
        buffer = io.BytesIO()
        csv.write_csv(batch, buffer, csv.WriteOptions(include_header=header))
        out.write(buffer.getvalue().decode("utf-8"))
        header = False
        rows += batch.num_rows
    if header:  # no batch at all: still the header
        buffer = io.BytesIO()
        csv.write_csv(reader.schema.empty_table(), buffer)
        out.write(buffer.getvalue().decode("utf-8"))
    return rows


def write_parquet(reader: pa.RecordBatchReader, path: Path) -> int:
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(str(path), reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def write_answer(reader: pa.RecordBatchReader, fmt: str, output: str | None) -> int:
    """Write the whole answer in ``fmt`` to ``output`` (else standard output); its rows.

    A file is written under a temporary name and renamed when complete, so that a
    query that fails half way leaves no partial answer behind.
    """
    if output is None:
        return (write_csv if fmt == "csv" else write_json_lines)(reader, sys.stdout)
    target = Path(output)
    part = target.with_name(target.name + ".part")
    try:
        if fmt == "parquet":
            rows = write_parquet(reader, part)
        else:
            with part.open("w", encoding="utf-8", newline="") as out:
                rows = (write_csv if fmt == "csv" else write_json_lines)(reader, out)
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise StockadeError(f"Cannot write {output}: {exc.strerror or exc}.") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return rows
