"""Helpers for network tests: real domains with their own data and policies, a network.

Three domains with the same dataset ``oncology.screenings`` but their own data
(sizes, seeds and distributions differ) and their own policy:

| role       | st_marys                     | city_general | northern (policy: northern_clinic) |
|------------|------------------------------|--------------|------------------------------------|
| researcher | raw                          | raw          | raw                                |
| analyst    | dp (ε 0.5/query)             | dp (ε 0.4)   | dp (ε 0.6)                         |
| auditor    | aggregate (min_group_size 10)| raw          | raw                                |

The same users and passwords exist everywhere, except ``zoe`` (researcher),
who exists in st_marys and city_general only. st_marys has a rare ``test``
value (``biopsy``, 3 patients) that aggregate mode suppresses.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.flight as flight

USERS = {
    "owner": ("owner", "owner-password"),
    "rita": ("researcher", "rita-password"),
    "ann": ("analyst", "ann-password"),
    "aud": ("auditor", "aud-password"),
}
ZOE = ("zoe", "researcher", "zoe-password")

#: name → (policy domain name, rows, seed, age base, positive rate, analyst ε per query,
#:         auditor mode, has zoe)
DOMAINS: dict[str, dict[str, Any]] = {
    "st_marys": {"policy_name": "st_marys", "rows": 3000, "seed": 0.11, "age_base": 30,
                 "positive": 0.06, "epsilon": 0.5, "auditor": "aggregate", "zoe": True,
                 "rare": True},
    "city_general": {"policy_name": "city_general", "rows": 2400, "seed": 0.52,
                     "age_base": 40, "positive": 0.10, "epsilon": 0.4, "auditor": "raw",
                     "zoe": True, "rare": False},
    "northern": {"policy_name": "northern_clinic", "rows": 1800, "seed": 0.93, "age_base": 50,
                 "positive": 0.15, "epsilon": 0.6, "auditor": "raw", "zoe": False,
                 "rare": False},
}

POLICY = """\
version: 1
domain: {{name: {policy_name}, description: "{policy_name} (network test domain)"}}
datasets:
  oncology:
    description: Cancer screening results at {policy_name}
    tags: [cancer, screening]
    tables:
      screenings:
        description: One row per screening
        source: {{format: parquet, path: data/screenings.parquet}}
        privacy_unit: patient_id
        max_rows_per_unit: 5
        columns:
          patient_id: {{hidden: true}}
          age: {{lower: 0, upper: 110}}
          tumor_size_mm: {{lower: 0, upper: 50}}
roles:
  researcher:
    datasets:
      oncology: {{mode: raw}}
  analyst:
    datasets:
      oncology: {{mode: dp, epsilon_per_query: {epsilon}, budget: {{epsilon: 20.0, delta: 1.0e-3}}}}
  auditor:
    datasets:
      oncology: {auditor}
  owner: {{admin: true}}
"""


def write_domain(root: Path, name: str) -> Path:
    """Write domain ``name``'s data and policy under ``root``; the policy's path."""
    spec = DOMAINS[name]
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = spec["rows"]
    patients = rows // 3
    con = duckdb.connect()
    con.execute(f"SELECT setseed({spec['seed']})")
    # Each patient has at most 3 screenings here, within max_rows_per_unit.
    con.execute(f"""
        COPY (
          SELECT s.range AS screening_id,
                 s.range % {patients} AS patient_id,
                 ['north', 'south', 'east', 'west'][1 + (s.range % {patients}) % 4] AS site,
                 {spec['age_base']} + CAST(floor(random() * 40) AS INTEGER) AS age,
                 CASE WHEN random() < 0.4 THEN 'mammography'
                      WHEN random() < 0.5 THEN 'colonoscopy'
                      WHEN random() < 0.6 THEN 'psa' ELSE 'cervical' END AS test,
                 CASE WHEN random() < {spec['positive']} THEN 'positive' ELSE 'negative' END
                   AS result,
                 round(5 + random() * 40, 1) AS tumor_size_mm
          FROM range({rows}) s
          {"UNION ALL SELECT 1000000 + range, 900000 + range, 'north', 60, 'biopsy', "
           "'positive', 10.0 FROM range(3)" if spec["rare"] else ""}
        ) TO '{data / "screenings.parquet"}' (FORMAT parquet)
    """)
    con.close()
    auditor = ("{mode: aggregate, min_group_size: 10}" if spec["auditor"] == "aggregate"
               else "{mode: raw}")
    policy = root / "policy.yaml"
    policy.write_text(POLICY.format(policy_name=spec["policy_name"], epsilon=spec["epsilon"],
                                    auditor=auditor))
    return policy


@dataclass
class RunningDomain:
    name: str
    root: Path
    url: str
    server: Any
    domain: Any
    stopped: bool = False

    @property
    def parquet(self) -> Path:
        return self.root / "data" / "screenings.parquet"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.domain.close()


def start_domain(root: Path, name: str, *, users: bool = True) -> RunningDomain:
    """Write (if needed) and start domain ``name`` on loopback, with the test users."""
    from gateway.serving import start_server
    from gateway.settings import load_settings

    policy = root / "policy.yaml"
    if not policy.exists():
        write_domain(root, name)
    settings = load_settings({"policy": str(policy), "data_dir": str(root / "state"),
                              "port": 0, "memory_limit": "512MB", "threads": 1}, env={})
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    server, domain, url, _ = start_server(settings)
    if users:
        store = domain.store
        wanted = {n: (role, pw) for n, (role, pw) in USERS.items()}
        if DOMAINS[name]["zoe"]:
            wanted[ZOE[0]] = (ZOE[1], ZOE[2])
        for user, (role, password) in wanted.items():
            try:
                store.get_user(user)
                store.set_password(user, password)
            except LookupError:
                store.add_user(user, role, password, {})
    return RunningDomain(name, root, url, server, domain)


def network_yaml(domains: dict[str, str], *, timeout_s: float = 10.0,
                 settings: str = "{health_interval_s: 0.5, metadata_cache_s: 30}",
                 own_names: dict[str, str] | None = None) -> str:
    """A network config over ``domains`` (name → url).

    ``own_names`` gives the policy name of a domain listed under another name (the
    network derives its credentials for that name); by default a domain of
    :data:`DOMAINS` gets its ``policy_name``.
    """
    own = {n: spec["policy_name"] for n, spec in DOMAINS.items() if spec["policy_name"] != n}
    own.update(own_names or {})
    lines = ["version: 1", "network: {name: test_net, description: \"Three test domains\"}",
             "domains:"]
    for name, url in domains.items():
        extra = f", domain_name: {own[name]}" if name in own and own[name] != name else ""
        lines.append(f"  - {{name: {name}, url: \"{url}\", timeout_s: {timeout_s}{extra}}}")
    lines.append(f"settings: {settings}")
    return "\n".join(lines) + "\n"


def start_network(domains: dict[str, str], **kwargs: Any) -> tuple[Any, str]:
    from network.config import load_config_text
    from network.serve import start_network as start

    return start(load_config_text(network_yaml(domains, **kwargs)), port=0)


def connect(url: str, user: str, password: str | None = None, **db_kwargs: str) -> Any:
    import adbc_driver_flightsql.dbapi as flight_sql

    kwargs = {"username": user, "password": password or USERS[user][1], **db_kwargs}
    return flight_sql.connect(url, db_kwargs=kwargs, autocommit=True)


@dataclass
class DelayProxy:
    """A TCP proxy on loopback that forwards to ``target`` after ``delay_s`` per chunk.

    Set ``delay_s`` at any time: 0 forwards at once. With ``source`` (another
    loopback address, e.g. ``127.0.0.2``) the target sees the clients of the
    proxy come from there: a second client address on one machine.
    """

    target: tuple[str, int]
    delay_s: float = 0.0
    port: int = 0
    source: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None

    def start(self) -> DelayProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="delay-proxy").start()
        return self

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(
                    self.target, source_address=(self.source, 0) if self.source else None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([source], [], [], 0.2)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                if self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: the other direction closed both sockets
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()


def ground_truth(paths: list[Path], sql: str) -> list[tuple[Any, ...]]:
    """``sql`` over the union of the domains' screenings (``screenings`` in the SQL)."""
    con = duckdb.connect()
    union = " UNION ALL ".join(f"SELECT * FROM '{p}'" for p in paths)
    con.execute(f"CREATE VIEW screenings AS {union}")
    rows = con.execute(sql).fetchall()
    con.close()
    return rows


def iter_rows(table: Any) -> Iterator[dict[str, Any]]:
    yield from table.to_pylist()


class _NoCredentials(flight.ClientAuthHandler):  # type: ignore[misc]
    """A Handshake that sends no credentials at all."""

    def authenticate(self, outgoing: Any, incoming: Any) -> None:
        return None

    def get_token(self) -> bytes:
        return b""


def unauthenticated(exc: BaseException | None) -> bool:
    """Whether a call failed with gRPC UNAUTHENTICATED (pyarrow's GetSchema raises it as a
    plain OSError whose detail names the status)."""
    return isinstance(exc, flight.FlightUnauthenticatedError) or (
        isinstance(exc, OSError) and "Detail: Unauthenticated" in str(exc))


def anonymous_call_errors(url: str) -> dict[str, BaseException | None]:
    """Every kind of Flight call, made without credentials: what each raised (None: answered)."""
    from gateway.flightsql import flight_sql_pb2 as pb
    from gateway.flightsql.server import pack

    client = flight.FlightClient(url)
    options = flight.FlightCallOptions(timeout=30)
    metadata = {
        "GetSqlInfo": pb.CommandGetSqlInfo(),
        "GetXdbcTypeInfo": pb.CommandGetXdbcTypeInfo(),
        "GetCatalogs": pb.CommandGetCatalogs(),
        "GetDbSchemas": pb.CommandGetDbSchemas(),
        "GetTables": pb.CommandGetTables(include_schema=True),
        "GetTableTypes": pb.CommandGetTableTypes(),
        "GetPrimaryKeys": pb.CommandGetPrimaryKeys(table="screenings"),
        "GetExportedKeys": pb.CommandGetExportedKeys(table="screenings"),
        "GetCrossReference": pb.CommandGetCrossReference(pk_table="a", fk_table="b"),
        "StatementQuery": pb.CommandStatementQuery(query="SELECT 1"),
    }
    calls: dict[str, Callable[[], object]] = {}
    for name, command in metadata.items():
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        calls[f"GetFlightInfo {name}"] = functools.partial(client.get_flight_info, descriptor,
                                                           options)
        calls[f"GetSchema {name}"] = functools.partial(client.get_schema, descriptor, options)
        ticket = flight.Ticket(pack(command))
        calls[f"DoGet {name}"] = functools.partial(
            lambda t: client.do_get(t, options).read_all(), ticket)
    for kind, body in [
        ("stockade.network.status", b"{}"), ("stockade.search", b'{"term": "a"}'),
        ("stockade.catalog", b"{}"), ("stockade.whoami", b"{}"),
        ("CreatePreparedStatement", pack(pb.ActionCreatePreparedStatementRequest(
            query="SELECT 1"))),
        ("CancelQuery", b""), ("CloseSession", b""), ("BeginTransaction", b""),
        ("no.such.action", b""),
    ]:
        calls[f"DoAction {kind}"] = functools.partial(
            lambda a: list(client.do_action(a, options)), flight.Action(kind, body))
    calls["ListActions"] = lambda: client.list_actions(options)
    calls["ListFlights"] = lambda: list(client.list_flights(options=options))
    calls["Handshake"] = lambda: client.authenticate(_NoCredentials(), options)

    def do_put() -> None:
        command = pb.CommandPreparedStatementQuery(prepared_statement_handle=b"x")
        schema = pa.schema([("p", pa.int64())])
        writer, _ = client.do_put(flight.FlightDescriptor.for_command(pack(command)), schema,
                                  options)
        writer.write_batch(pa.record_batch([pa.array([1])], schema=schema))
        writer.close()

    def do_exchange() -> None:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"x"), options)
        writer.done_writing()
        reader.read_all()

    calls["DoPut"] = do_put
    calls["DoExchange"] = do_exchange
    out: dict[str, BaseException | None] = {}
    try:
        for name, call in calls.items():
            try:
                call()
                out[name] = None
            except Exception as exc:
                out[name] = exc
    finally:
        client.close()
    return out
