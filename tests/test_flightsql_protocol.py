"""The Flight SQL protocol layer, driven by real clients (ADBC, pyarrow.flight).

A test-only subclass serves an in-memory DuckDB through the hooks, with no
policy: what is checked here is the protocol, not what a user may see.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import adbc_driver_flightsql.dbapi as adbc
import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.errors import InputError
from gateway.flightsql import flight_session_pb2 as session_pb
from gateway.flightsql import flight_sql_pb2 as pb
from gateway.flightsql import schemas
from gateway.flightsql.server import FlightSqlServer, TableInfo, pack, unpack
from gateway.flightsql.sqlinfo import DEFAULT_SQL_INFO, INFO_MEMBERS, MEMBER_NAMES, SqlInfo

CATALOG = "memory"


class _Owner(flight.ServerMiddleware):
    def __init__(self, owner: str) -> None:
        self.owner = owner


class _OwnerFactory(flight.ServerMiddlewareFactory):
    """Reads the caller's name from an ``x-owner`` header (tests play two users)."""

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> _Owner:
        return _Owner(headers.get("x-owner", ["anonymous"])[0])


class DuckDBServer(FlightSqlServer):
    """Serves every table of an in-memory DuckDB, with no policy."""

    def __init__(self, db: duckdb.DuckDBPyConnection, **kwargs: object) -> None:
        middleware = {"owner": _OwnerFactory()}
        super().__init__("grpc://127.0.0.1:0", middleware=middleware, **kwargs)  # type: ignore[arg-type]
        self.db = db
        self.lock = threading.Lock()

    def session_owner(self, context: flight.ServerCallContext) -> str:
        return context.get_middleware("owner").owner

    def _relations(self) -> list[tuple[str, str, str]]:
        rows = (
            self.db.cursor()
            .execute(
                "SELECT schema_name, table_name, 'TABLE' FROM duckdb_tables() "
                "UNION ALL SELECT schema_name, view_name, 'VIEW' FROM duckdb_views() "
                "WHERE NOT internal"
            )
            .fetchall()
        )
        return [(s, t, k) for s, t, k in rows]

    def list_catalogs(self, context: flight.ServerCallContext) -> Sequence[str]:
        return [CATALOG]

    def list_schemas(self, context, catalog, schema_pattern):  # type: ignore[no-untyped-def]
        return [(CATALOG, "main"), (CATALOG, "sales")]

    def list_tables(self, context, catalog, schema_pattern, table_pattern, table_types):  # type: ignore[no-untyped-def]
        out = []
        for sch, name, kind in self._relations():
            schema = self.db.cursor().execute(f'SELECT * FROM "{sch}"."{name}" LIMIT 0')
            out.append(TableInfo(CATALOG, sch, name, kind, schema.to_arrow_table().schema))
        return out

    def primary_keys(self, context, catalog, db_schema, table):  # type: ignore[no-untyped-def]
        return [(CATALOG, "main", "numbers", "id", "pk_numbers", 1)] if table == "numbers" else []

    @staticmethod
    def _params(query: str, parameters: pa.RecordBatch | None) -> list[object]:
        if parameters is None:
            return [None] * query.count("?")
        return [col[0].as_py() for col in parameters.columns]

    def _check(self, query: str) -> None:
        if "boom_input" in query:
            raise InputError("Bad input: fix the query")
        if "boom_internal" in query:
            raise RuntimeError("secret internal detail")

    def query_schema(self, context, query, parameters):  # type: ignore[no-untyped-def]
        self._check(query)
        cur = self.db.cursor()
        sql = f"SELECT * FROM ({query}) AS q LIMIT 0"
        return cur.execute(sql, self._params(query, parameters)).to_arrow_table().schema

    def execute_query(self, context, query, parameters):  # type: ignore[no-untyped-def]
        self._check(query)
        if "boom_stream" in query:
            schema = pa.schema([("x", pa.int64())])

            def failing() -> Iterator[pa.RecordBatch]:
                yield pa.record_batch([pa.array([1])], schema=schema)
                raise InputError("Failed while streaming")

            return pa.RecordBatchReader.from_batches(schema, failing())
        if parameters is None or parameters.num_rows <= 1:
            cur = self.db.cursor()
            return cur.execute(query, self._params(query, parameters)).to_arrow_reader(100_000)
        # One run per parameter row, in row order, as one answer.
        rows = [parameters.slice(i, 1) for i in range(parameters.num_rows)]
        readers = [self.db.cursor().execute(query, self._params(query, row)).to_arrow_reader()
                   for row in rows]
        return pa.RecordBatchReader.from_batches(
            readers[0].schema, (batch for reader in readers for batch in reader))


def make_db() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect(":memory:")
    db.execute("CREATE SCHEMA sales")
    db.execute(
        "CREATE TABLE numbers AS SELECT range::BIGINT AS id, (range % 7)::INTEGER AS x, "
        "'n' || range::VARCHAR AS label, range * 0.5 AS half FROM range(1000)"
    )
    db.execute("CREATE TABLE sales.orders (order_id INTEGER, amount DECIMAL(10,2), day DATE)")
    db.execute("INSERT INTO sales.orders VALUES (1, 9.99, DATE '2024-01-02'), (2, 5.00, NULL)")
    db.execute("CREATE VIEW small AS SELECT * FROM numbers WHERE id < 10")
    db.execute("CREATE TABLE wide AS SELECT range AS id, repeat('x', 200) AS pad FROM range(20000)")
    return db


@pytest.fixture(scope="module")
def db() -> duckdb.DuckDBPyConnection:
    return make_db()


@pytest.fixture(scope="module")
def server(db: duckdb.DuckDBPyConnection) -> Iterator[DuckDBServer]:
    srv = DuckDBServer(db, max_batch_bytes=64 * 1024)
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def uri(server: DuckDBServer) -> str:
    return f"grpc://127.0.0.1:{server.port}"


@pytest.fixture()
def conn(uri: str) -> Iterator[adbc.Connection]:
    with adbc.connect(uri, autocommit=True) as c:
        yield c


@pytest.fixture()
def client(uri: str) -> Iterator[flight.FlightClient]:
    c = flight.connect(uri)
    yield c
    c.close()


def test_smoke(conn: adbc.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]


def _opts(owner: str = "alice") -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"x-owner", owner.encode())])


def _cmd(message: object) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(pack(message))  # type: ignore[arg-type]


def _action(client: flight.FlightClient, kind: str, body: bytes, owner: str = "alice") -> list:
    return [r.body.to_pybytes() for r in client.do_action(flight.Action(kind, body), _opts(owner))]


def _prepare(client: flight.FlightClient, query: str, owner: str = "alice") -> bytes:
    [raw] = _action(
        client,
        "CreatePreparedStatement",
        pack(pb.ActionCreatePreparedStatementRequest(query=query)),
        owner,
    )
    name, result = unpack(raw)
    assert name == "ActionCreatePreparedStatementResult"
    return bytes(result.prepared_statement_handle)


# ---- ADBC -------------------------------------------------------------------------


def test_adbc_get_info(conn: adbc.Connection) -> None:
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Stockade"
    assert info["vendor_version"] == DEFAULT_SQL_INFO[SqlInfo.FLIGHT_SQL_SERVER_VERSION]
    assert info["vendor_arrow_version"] == pa.__version__
    assert "Flight SQL" in info["driver_name"]


@pytest.mark.parametrize("depth", ["catalogs", "db_schemas", "tables", "columns", "all"])
def test_adbc_get_objects(conn: adbc.Connection, depth: str) -> None:
    objects = conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == [CATALOG]
    if depth == "catalogs":
        return
    schemas_ = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert set(schemas_) == {"main", "sales"}
    if depth == "db_schemas":
        return
    tables = {t["table_name"]: t for t in schemas_["main"]["db_schema_tables"]}
    assert set(tables) == {"numbers", "small", "wide"}
    assert tables["small"]["table_type"] == "VIEW"
    if depth == "tables":
        return
    columns = [c["column_name"] for c in tables["numbers"]["table_columns"]]
    assert columns == ["id", "x", "label", "half"]
    id_column = tables["numbers"]["table_columns"][0]
    assert id_column["xdbc_type_name"] == "BIGINT"
    assert id_column["ordinal_position"] == 1


def test_adbc_get_objects_filters(conn: adbc.Connection) -> None:
    objects = (
        conn.adbc_get_objects(depth="tables", db_schema_filter="sal%", table_name_filter="ord_rs")
        .read_all()
        .to_pylist()
    )
    [sales] = objects[0]["catalog_db_schemas"]
    assert sales["db_schema_name"] == "sales"
    assert [t["table_name"] for t in sales["db_schema_tables"]] == ["orders"]


def test_adbc_get_table_schema(conn: adbc.Connection, db: duckdb.DuckDBPyConnection) -> None:
    schema = conn.adbc_get_table_schema("orders", catalog_filter=CATALOG, db_schema_filter="sales")
    expected = db.execute("SELECT * FROM sales.orders LIMIT 0").to_arrow_table().schema
    assert schema.names == expected.names
    assert schema.types == expected.types


def test_adbc_get_table_types(conn: adbc.Connection) -> None:
    assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]


QUERIES = [
    "SELECT * FROM numbers ORDER BY id",
    "SELECT x, count(*) AS n, sum(half) AS s FROM numbers GROUP BY x ORDER BY x",
    "SELECT * FROM sales.orders ORDER BY order_id",
    "SELECT 1 AS one, 'a' AS s, NULL::INTEGER AS n",
    "SELECT * FROM numbers WHERE id < 0",
]


@pytest.mark.parametrize("query", QUERIES)
def test_adbc_queries_match_duckdb(
    conn: adbc.Connection, db: duckdb.DuckDBPyConnection, query: str
) -> None:
    with conn.cursor() as cur:
        cur.execute(query)
        got = cur.fetch_arrow_table()
    expected = db.cursor().execute(query).to_arrow_table()
    assert got.schema.names == expected.schema.names
    assert got.to_pylist() == expected.to_pylist()


def test_adbc_prepared_with_parameters(
    conn: adbc.Connection, db: duckdb.DuckDBPyConnection
) -> None:
    query = "SELECT id, label FROM numbers WHERE x = ? AND id < ? ORDER BY id"
    with conn.cursor() as cur:
        cur.execute(query, (5, 100))
        got = cur.fetchall()
        cur.execute(query, (3, 20))
        again = cur.fetchall()
    assert got == db.cursor().execute(query, [5, 100]).fetchall()
    assert again == db.cursor().execute(query, [3, 20]).fetchall()
    assert got and again


def test_adbc_large_result_is_sliced(conn: adbc.Connection, db: duckdb.DuckDBPyConnection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM wide")
        table = cur.fetch_arrow_table()
    assert table.num_rows == 20000
    assert table.column("id").to_pylist() == list(range(20000))


def test_pandas_read_sql(conn: adbc.Connection, db: duckdb.DuckDBPyConnection) -> None:
    pd = pytest.importorskip("pandas")
    query = "SELECT x, count(*) AS n FROM numbers GROUP BY x ORDER BY x"
    frame = pd.read_sql(query, conn)
    assert frame.to_dict("records") == db.cursor().execute(query).df().to_dict("records")


def test_polars_read_database(conn: adbc.Connection, db: duckdb.DuckDBPyConnection) -> None:
    pl = pytest.importorskip("polars")
    query = "SELECT id, label FROM numbers WHERE id < 5 ORDER BY id"
    frame = pl.read_database(query, conn)
    assert frame.rows() == db.cursor().execute(query).fetchall()


def test_adbc_error_reaches_client_without_traceback(conn: adbc.Connection) -> None:
    with conn.cursor() as cur, pytest.raises(Exception, match="Bad input: fix the query") as err:
        cur.execute("SELECT 'boom_input'")
    assert "Traceback" not in str(err.value)
    assert "INVALID_ARGUMENT" in str(err.value)


def test_adbc_close_session(uri: str) -> None:
    c = adbc.connect(uri, autocommit=True)
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    c.close()  # sends CloseSession


# ---- raw Flight clients --------------------------------------------------------------

METADATA_COMMANDS = [
    (pb.CommandGetSqlInfo(), schemas.SQL_INFO_SCHEMA),
    (pb.CommandGetSqlInfo(info=[0, 541, 508, 517]), schemas.SQL_INFO_SCHEMA),
    (pb.CommandGetXdbcTypeInfo(), schemas.XDBC_TYPE_INFO_SCHEMA),
    (pb.CommandGetXdbcTypeInfo(data_type=12), schemas.XDBC_TYPE_INFO_SCHEMA),
    (pb.CommandGetCatalogs(), schemas.CATALOGS_SCHEMA),
    (pb.CommandGetDbSchemas(catalog=CATALOG, db_schema_filter_pattern="%"),
     schemas.DB_SCHEMAS_SCHEMA),
    (pb.CommandGetTables(), schemas.TABLES_SCHEMA),
    (pb.CommandGetTables(include_schema=True, table_types=["TABLE"]),
     schemas.TABLES_SCHEMA_WITH_SCHEMA),
    (pb.CommandGetTableTypes(), schemas.TABLE_TYPES_SCHEMA),
    (pb.CommandGetPrimaryKeys(table="numbers"), schemas.PRIMARY_KEYS_SCHEMA),
    (pb.CommandGetExportedKeys(table="numbers"), schemas.FOREIGN_KEYS_SCHEMA),
    (pb.CommandGetImportedKeys(table="numbers"), schemas.FOREIGN_KEYS_SCHEMA),
    (pb.CommandGetCrossReference(pk_table="a", fk_table="b"), schemas.FOREIGN_KEYS_SCHEMA),
]  # fmt: skip


@pytest.mark.parametrize(("command", "schema"), METADATA_COMMANDS,
                         ids=[type(c).__name__ for c, _ in METADATA_COMMANDS])  # fmt: skip
def test_metadata_command_schema_and_ticket(
    client: flight.FlightClient, command: object, schema: pa.Schema
) -> None:
    descriptor = _cmd(command)
    info = client.get_flight_info(descriptor)
    assert info.schema.equals(schema, check_metadata=True)
    assert client.get_schema(descriptor).schema.equals(schema)
    [endpoint] = info.endpoints
    assert endpoint.ticket.ticket == descriptor.command  # the command round-trips
    table = client.do_get(endpoint.ticket).read_all()
    assert table.schema.equals(schema)


def test_metadata_answers(client: flight.FlightClient) -> None:
    def get(command: object) -> list[dict]:
        info = client.get_flight_info(_cmd(command))
        return client.do_get(info.endpoints[0].ticket).read_all().to_pylist()

    assert get(pb.CommandGetCatalogs()) == [{"catalog_name": CATALOG}]
    assert get(pb.CommandGetDbSchemas(db_schema_filter_pattern="s_les")) == [
        {"catalog_name": CATALOG, "db_schema_name": "sales"}
    ]
    assert get(pb.CommandGetDbSchemas(catalog="other")) == []
    tables = get(pb.CommandGetTables(table_types=["VIEW"]))
    assert [t["table_name"] for t in tables] == ["small"]
    [orders] = get(pb.CommandGetTables(table_name_filter_pattern="orders", include_schema=True))
    table_schema = pa.ipc.read_schema(pa.py_buffer(orders["table_schema"]))
    amount = table_schema.field("amount")
    assert amount.type == pa.decimal128(10, 2)
    assert amount.metadata[b"ARROW:FLIGHT:SQL:TABLE_NAME"] == b"orders"
    assert amount.metadata[b"ARROW:FLIGHT:SQL:DB_SCHEMA_NAME"] == b"sales"
    assert amount.metadata[b"ARROW:FLIGHT:SQL:PRECISION"] == b"10"
    assert amount.metadata[b"ARROW:FLIGHT:SQL:SCALE"] == b"2"
    assert get(pb.CommandGetPrimaryKeys(table="numbers"))[0]["column_name"] == "id"
    assert get(pb.CommandGetTableTypes()) == [{"table_type": "TABLE"}, {"table_type": "VIEW"}]
    assert [r["type_name"] for r in get(pb.CommandGetXdbcTypeInfo(data_type=-5))] == ["BIGINT"]


PATTERN_COMMANDS = [
    lambda p: pb.CommandGetDbSchemas(db_schema_filter_pattern=p),
    lambda p: pb.CommandGetTables(db_schema_filter_pattern=p),
    lambda p: pb.CommandGetTables(table_name_filter_pattern=p, include_schema=True),
]


@pytest.mark.parametrize("command", PATTERN_COMMANDS, ids=["schemas", "tables-schema",
                                                           "tables-name"])
def test_a_pattern_over_the_limit_is_refused(client: flight.FlightClient, command) -> None:  # type: ignore[no-untyped-def]
    # Thousands of %: a backtracking regex froze the server for every caller.
    descriptor = _cmd(command("%" * 5000))
    with pytest.raises(pa.ArrowInvalid, match=r"pattern is 5000 characters long; this server "
                                              r"accepts at most 256 \(setting max_pattern_length"):
        client.get_flight_info(descriptor)
    with pytest.raises(pa.ArrowInvalid, match="setting max_pattern_length"):
        client.do_get(flight.Ticket(descriptor.command)).read_all()
    with pytest.raises(pa.ArrowInvalid, match="ends with the escape character"):
        client.get_flight_info(_cmd(command("sales\\")))
    info = client.get_flight_info(_cmd(command("%" * 256)))  # at the limit: answered
    assert client.do_get(info.endpoints[0].ticket).read_all().num_rows > 0


def test_many_percent_signs_are_matched_in_linear_work(
        db: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.flightsql import like

    steps = [0]
    fits = like._fits

    def counted(piece: object, value: str, at: int) -> bool:
        steps[0] += 1
        return fits(piece, value, at)  # type: ignore[arg-type]

    monkeypatch.setattr(like, "_fits", counted)
    srv = DuckDBServer(db, max_pattern_length=100_000)
    c = flight.connect(f"grpc://127.0.0.1:{srv.port}")
    try:
        gaps = "%" * 2000
        for pattern, expected in [("%" * 5000 + "zz", []), (f"{gaps}s{gaps}s{gaps}", ["sales"])]:
            descriptor = _cmd(pb.CommandGetDbSchemas(db_schema_filter_pattern=pattern))
            info = c.get_flight_info(descriptor)
            names = c.do_get(info.endpoints[0].ticket).read_all().column(1).to_pylist()
            assert names == expected
        # Two schemas, two patterns of two pieces each: first and last piece once per name.
        assert steps[0] <= 2 * 2 * 2
    finally:
        c.close()
        srv.shutdown()


def test_sql_info_all_ids(client: flight.FlightClient) -> None:
    info = client.get_flight_info(_cmd(pb.CommandGetSqlInfo()))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    union_type = table.schema.field("value").type
    assert all(not child.nullable for child in union_type)
    union = table.column("value").combine_chunks()
    ids = table.column("info_name").to_pylist()
    assert set(ids) == set(DEFAULT_SQL_INFO)  # Substrait versions (6, 7) are absent
    for row, info_id in enumerate(ids):
        assert union.type_codes[row].as_py() == INFO_MEMBERS[info_id], info_id
    by_id = dict(zip(ids, union.to_pylist(), strict=True))
    assert by_id[SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY] is True
    assert by_id[SqlInfo.SQL_IDENTIFIER_QUOTE_CHAR] == '"'
    assert by_id[SqlInfo.SQL_TRANSACTIONS_SUPPORTED] is False
    for info_id in range(541, 563):
        assert MEMBER_NAMES[INFO_MEMBERS[info_id]] == "bigint_value"


def test_statement_query_and_stateless_ticket(client: flight.FlightClient) -> None:
    info = client.get_flight_info(_cmd(pb.CommandStatementQuery(query="SELECT 41 + 1 AS a")))
    assert info.schema.names == ["a"]
    assert client.do_get(info.endpoints[0].ticket).read_all().to_pylist() == [{"a": 42}]
    name, ticket = unpack(info.endpoints[0].ticket.ticket)
    assert name == "TicketStatementQuery"
    # a forged handle is just another query, run with the caller's identity
    forged = pb.TicketStatementQuery(statement_handle=b"stockade-q1:SELECT 7 AS b")
    assert client.do_get(flight.Ticket(pack(forged))).read_all().to_pylist() == [{"b": 7}]
    with pytest.raises(pa.ArrowInvalid, match="Invalid statement ticket"):
        client.do_get(flight.Ticket(pack(pb.TicketStatementQuery(statement_handle=b"x"))))


def test_batches_never_exceed_limit(client: flight.FlightClient, server: DuckDBServer) -> None:
    info = client.get_flight_info(_cmd(pb.CommandStatementQuery(query="SELECT * FROM wide")))
    reader = client.do_get(info.endpoints[0].ticket)
    rows = 0
    sizes = []
    for chunk in reader:
        sizes.append(chunk.data.nbytes)
        rows += chunk.data.num_rows
    assert rows == 20000
    assert len(sizes) > 1
    assert max(sizes) <= server.max_batch_bytes


def test_prepared_statement_raw(client: flight.FlightClient) -> None:
    handle = _prepare(client, "SELECT id FROM numbers WHERE id = ?")
    command = pb.CommandPreparedStatementQuery(prepared_statement_handle=handle)
    params = pa.record_batch({"p": pa.array([3, 1, 4], pa.int64())})
    writer, metadata = client.do_put(_cmd(command), params.schema, _opts())
    writer.write_batch(params)
    writer.done_writing()
    result = pb.DoPutPreparedStatementResult()
    result.ParseFromString(metadata.read().to_pybytes())  # raw protobuf, not Any
    assert result.prepared_statement_handle == handle
    writer.close()
    info = client.get_flight_info(_cmd(command), _opts())
    # The ticket names this execution (query and bound rows), not the statement.
    assert unpack(info.endpoints[0].ticket.ticket)[0] == "TicketStatementQuery"
    table = client.do_get(info.endpoints[0].ticket, _opts()).read_all()
    assert table.column("id").to_pylist() == [3, 1, 4]  # one execution per row, in order
    close = pack(pb.ActionClosePreparedStatementRequest(prepared_statement_handle=handle))
    assert _action(client, "ClosePreparedStatement", close) == []
    with pytest.raises(KeyError, match="Prepared statement not found"):
        client.get_flight_info(_cmd(command), _opts())


def test_prepared_statement_of_another_owner(client: flight.FlightClient) -> None:
    handle = _prepare(client, "SELECT 1 AS one", owner="alice")
    command = pb.CommandPreparedStatementQuery(prepared_statement_handle=handle)
    with pytest.raises(KeyError, match="Prepared statement not found"):
        client.get_flight_info(_cmd(command), _opts("mallory"))
    with pytest.raises(KeyError, match="Prepared statement not found"):
        client.do_get(flight.Ticket(pack(command)), _opts("mallory")).read_all()
    close = pack(pb.ActionClosePreparedStatementRequest(prepared_statement_handle=handle))
    with pytest.raises(KeyError, match="Prepared statement not found"):
        _action(client, "ClosePreparedStatement", close, owner="mallory")
    info = client.get_flight_info(_cmd(command), _opts("alice"))  # still alice's
    assert client.do_get(info.endpoints[0].ticket, _opts()).read_all().num_rows == 1


def test_prepared_statements_bounded_per_owner(
    client: flight.FlightClient, server: DuckDBServer
) -> None:
    limit = server.prepared.max_per_owner
    server.prepared.max_per_owner = 3
    try:
        handles = [_prepare(client, "SELECT 1", owner="bounded") for _ in range(5)]
        assert server.prepared.count("bounded") == 3
        oldest = pb.CommandPreparedStatementQuery(prepared_statement_handle=handles[0])
        with pytest.raises(KeyError, match="Prepared statement not found"):
            client.get_flight_info(_cmd(oldest), _opts("bounded"))
    finally:
        server.prepared.max_per_owner = limit


def test_input_error_is_invalid_argument_without_traceback(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid) as err:
        client.get_flight_info(_cmd(pb.CommandStatementQuery(query="SELECT 'boom_input'")))
    assert "Bad input: fix the query" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_unexpected_error_is_internal_without_traceback(client: flight.FlightClient) -> None:
    with pytest.raises(flight.FlightInternalError) as err:
        client.get_flight_info(_cmd(pb.CommandStatementQuery(query="SELECT 'boom_internal'")))
    message = str(err.value)
    assert "Internal error in the Stockade server (incident" in message
    assert "secret internal detail" not in message
    assert "Traceback" not in message


def test_error_while_streaming_is_mapped(client: flight.FlightClient) -> None:
    ticket = flight.Ticket(pack(pb.TicketStatementQuery(
        statement_handle=b"stockade-q1:SELECT 'boom_stream'")))  # fmt: skip
    with pytest.raises(pa.ArrowInvalid) as err:
        client.do_get(ticket).read_all()
    assert "Failed while streaming" in str(err.value)
    assert "Traceback" not in str(err.value)


@pytest.mark.parametrize(
    "command",
    [
        pb.CommandStatementUpdate(query="DELETE FROM numbers"),
        pb.CommandPreparedStatementUpdate(prepared_statement_handle=b"x"),
        pb.CommandStatementIngest(table="numbers"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_updates_refused(client: flight.FlightClient, command: object) -> None:
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(pa.ArrowInvalid, match="Stockade is read-only"):
        writer, _ = client.do_put(_cmd(command), schema)
        writer.write_batch(pa.record_batch([pa.array([1])], schema=schema))
        writer.close()
    with pytest.raises(pa.ArrowInvalid, match="Stockade is read-only"):
        client.get_flight_info(_cmd(command))


def test_substrait_and_transactions_refused(client: flight.FlightClient) -> None:
    plan = pb.CommandStatementSubstraitPlan(plan=pb.SubstraitPlan(plan=b"", version="0.1"))
    with pytest.raises(pa.ArrowInvalid, match="Substrait plans are not supported"):
        client.get_flight_info(_cmd(plan))
    with pytest.raises(pa.ArrowInvalid, match="Transactions are not supported"):
        _action(client, "BeginTransaction", pack(pb.ActionBeginTransactionRequest()))
    query = pb.CommandStatementQuery(query="SELECT 1", transaction_id=b"t")
    with pytest.raises(pa.ArrowInvalid, match="Transactions are not supported"):
        client.get_flight_info(_cmd(query))


def test_bad_commands(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match="Path descriptors are not supported"):
        client.get_flight_info(flight.FlightDescriptor.for_path("numbers"))
    with pytest.raises(pa.ArrowInvalid, match="Not a Flight SQL command"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\xff\xff garbage"))
    with pytest.raises(pa.ArrowInvalid, match="Unknown action 'nope'"):
        _action(client, "nope", b"")


def test_session_actions(client: flight.FlightClient) -> None:
    [raw] = _action(client, "CloseSession", session_pb.CloseSessionRequest().SerializeToString())
    result = session_pb.CloseSessionResult()
    result.ParseFromString(raw)
    assert result.status == session_pb.CloseSessionResult.Status.CLOSED
    request = session_pb.SetSessionOptionsRequest()
    request.session_options["catalog"].string_value = "x"
    [raw] = _action(client, "SetSessionOptions", request.SerializeToString())
    answer = session_pb.SetSessionOptionsResult()
    answer.ParseFromString(raw)
    assert answer.errors["catalog"].value == session_pb.SetSessionOptionsResult.INVALID_NAME
    [raw] = _action(client, "GetSessionOptions", b"")
    assert session_pb.GetSessionOptionsResult.FromString(raw).session_options == {}
    [raw] = _action(client, "CancelQuery", pack(pb.ActionCancelQueryRequest(info=b"")))
    assert unpack(raw)[1].result == pb.ActionCancelQueryResult.CANCEL_RESULT_NOT_CANCELLABLE


def test_list_actions(client: flight.FlightClient) -> None:
    kinds = {a.type for a in client.list_actions()}
    assert {"CreatePreparedStatement", "ClosePreparedStatement", "CloseSession"} <= kinds
