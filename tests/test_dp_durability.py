"""Budget guarantees through real servers: concurrency, and a killed `stockade serve`.

- Fifty analysts' connections race for a budget that covers ten queries: exactly
  ten are answered, the total charged is exactly ten costs, never more.
- A gateway process killed with SIGKILL refunds nothing when it restarts on the
  same data directory, and still answers a repeated query from the stored answer
  for free.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_manager import AdbcStatusCode
from argon2 import PasswordHasher
from google.protobuf import any_pb2

from gateway.flightsql import flight_sql_pb2 as pb
from gateway.ledger import EPSILON_UNIT, Ledger, to_units
from gateway.state import StateStore
from policy.principal import Principal

STOCKADE = [sys.executable, "-m", "gateway.cli"]
PASSWORD = "analyst-password"
META = b"stockade.dp."
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def spent(table: pa.Table) -> float:
    return float(table.schema.metadata[META + b"epsilon_spent"])


def remaining(table: pa.Table) -> float:
    return float(table.schema.metadata[META + b"epsilon_remaining"])


def adbc_query(url: str, user: str, sql: str) -> pa.Table:
    conn = flight_sql.connect(url, db_kwargs={"username": user, "password": PASSWORD},
                              autocommit=True)
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            return cur.fetch_arrow_table()
        finally:
            cur.close()
    finally:
        conn.close()


class RawClient:
    """A plain pyarrow Flight client speaking Flight SQL by hand."""

    def __init__(self, url: str, user: str) -> None:
        self.client = flight.FlightClient(url)
        header = self.client.authenticate_basic_token(user, PASSWORD)
        self.options = flight.FlightCallOptions(headers=[header])

    def query(self, sql: str) -> pa.Table:
        command = any_pb2.Any()
        command.Pack(pb.CommandStatementQuery(query=sql), type_url_prefix="type.googleapis.com/")
        info = self.client.get_flight_info(
            flight.FlightDescriptor.for_command(command.SerializeToString()), self.options)
        [endpoint] = info.endpoints
        return self.client.do_get(endpoint.ticket, self.options).read_all()

    def action(self, kind: str, body: dict[str, Any]) -> Any:
        results = self.client.do_action(flight.Action(kind, json.dumps(body).encode()),
                                        self.options)
        return json.loads(next(iter(results)).body.to_pybytes())

    def close(self) -> None:
        self.client.close()


# -- 50 concurrent queries against a budget for 10 ---------------------------------------


def test_fifty_concurrent_queries_against_a_budget_for_ten(gateway):  # type: ignore[no-untyped-def]
    domain = gateway.domain
    user = "dp_racer"
    domain.store.add_user(user, "analyst", PASSWORD, {})
    try:
        sqls = [f"SELECT count(*) AS n FROM oncology.screenings WHERE age >= {i}"
                for i in range(50)]
        costs = {domain.dp_cost(Principal(user, "analyst"), sql)["epsilon"] for sql in sqls}
        [cost] = costs
        domain.ledger.set_allowance(user, "oncology", 10 * cost, 1e-6)
        allowance = domain.ledger.balance(user, "oncology").allowance_epsilon

        start = threading.Barrier(50, timeout=60)
        answers: dict[int, pa.Table] = {}
        refusals: dict[int, Exception] = {}
        unexpected: list[BaseException] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            # Each its own connection: even ones through ADBC, odd ones raw pyarrow Flight.
            try:
                if i % 2:
                    raw = RawClient(gateway.url, user)
                    start.wait()
                    try:
                        table = raw.query(sqls[i])
                    finally:
                        raw.close()
                else:
                    conn = flight_sql.connect(
                        gateway.url, db_kwargs={"username": user, "password": PASSWORD},
                        autocommit=True)
                    try:
                        cur = conn.cursor()
                        start.wait()
                        try:
                            cur.execute(sqls[i])
                            table = cur.fetch_arrow_table()
                        finally:
                            cur.close()
                    finally:
                        conn.close()
            except (flight.FlightUnauthorizedError, adbc_driver_manager.Error) as err:
                with lock:
                    refusals[i] = err
            except BaseException as err:  # reported below
                with lock:
                    unexpected.append(err)
            else:
                with lock:
                    answers[i] = table

        threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert unexpected == []
        assert len(answers) == 10 and len(refusals) == 40
        for i, err in refusals.items():
            # PERMISSION_DENIED: pyarrow's FlightUnauthorizedError, ADBC's UNAUTHORIZED.
            if i % 2:
                assert isinstance(err, flight.FlightUnauthorizedError), repr(err)
            else:
                assert isinstance(err, adbc_driver_manager.Error), repr(err)
                assert err.status_code == AdbcStatusCode.UNAUTHORIZED, str(err)
            assert "Budget for dataset 'oncology' exhausted" in str(err), str(err)
            assert f"this query needs {cost:g}" in str(err)
            assert "stockade requests budget" in str(err)
        # Each answer paid its cost, and the charges were serialised: the remaining
        # budgets the ten answers report are exactly 9, 8, …, 0 costs.
        assert all(spent(t) == cost for t in answers.values())
        units = to_units(cost, EPSILON_UNIT)
        assert sorted(to_units(remaining(t), EPSILON_UNIT) for t in answers.values()) == [
            k * units for k in range(10)]
        charges = domain.ledger.charges(user, "oncology")
        assert len(charges) == 10
        assert all(to_units(c[2], EPSILON_UNIT) == units for c in charges)
        balance = domain.ledger.balance(user, "oncology")
        assert to_units(balance.spent_epsilon, EPSILON_UNIT) == 10 * units
        assert balance.spent_epsilon == allowance and balance.remaining_epsilon == 0.0
    finally:
        domain.store.remove_user(user)


# -- a killed server refunds nothing -----------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["STOCKADE_ADMIN_PASSWORD"] = "owner-password"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


class Served:
    """`stockade serve` as a child process on one data directory."""

    def __init__(self, policy: Path, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [*STOCKADE, "serve", "--policy", str(policy), "--data-dir", str(data_dir),
             "--port", "0", "--memory-limit", "1GB"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.fullmatch(r"listening on (grpc://127\.0\.0\.1:\d+)\n", line)
        if match is None:
            self.stop()
            pytest.fail(f"the gateway did not start: {line!r}")
        self.url = match.group(1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung gateway
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "state"
    with StateStore(data_dir, hasher=FAST) as store:
        store.add_user("dana", "analyst", PASSWORD, {})
    yield data_dir


def test_a_killed_server_refunds_nothing_and_keeps_its_answers(test_root, served_dir):  # type: ignore[no-untyped-def]
    policy = test_root / "policy.yaml"
    grouped = "SELECT site, count(*) AS n FROM oncology.screenings GROUP BY site ORDER BY site"
    first = "SELECT avg(age) AS a, count(*) AS n FROM oncology.screenings WHERE age > 50"
    server = Served(policy, served_dir)
    try:
        answers = [adbc_query(server.url, "dana", sql) for sql in (
            first, grouped, "SELECT count(*) AS n FROM oncology.patients")]
        repeat = adbc_query(server.url, "dana", first)  # free, from the stored answer
        paid = sum(to_units(spent(t), EPSILON_UNIT) for t in answers)
        assert paid > 0 and spent(repeat) == 0
        left = remaining(answers[-1])
        server.kill()  # no clean shutdown: whatever was answered must be on disk
    finally:
        server.stop()

    with StateStore(served_dir, hasher=FAST) as store:
        balance = Ledger(store).balance("dana", "oncology")
        assert to_units(balance.spent_epsilon, EPSILON_UNIT) == paid
        assert balance.remaining_epsilon == left

    server = Served(policy, served_dir)
    try:
        raw = RawClient(server.url, "dana")
        try:
            [budget] = raw.action("stockade.budget", {})
            assert to_units(budget["epsilon_spent"], EPSILON_UNIT) == paid
            assert budget["epsilon_remaining"] == left
            preview = raw.action("stockade.cost", {"query": first})
            assert preview["answered_before"] is True
        finally:
            raw.close()
        again = adbc_query(server.url, "dana", first)
        assert spent(again) == 0 and remaining(again) == left
        assert again.schema.metadata[META + b"cached"] == b"true"
        assert again.to_pydict() == answers[0].to_pydict()
        regrouped = adbc_query(server.url, "dana", grouped)
        assert spent(regrouped) == 0 and regrouped.to_pydict() == answers[1].to_pydict()
        # A new query after the restart is charged on top of what was spent before.
        fresh = adbc_query(server.url, "dana", "SELECT count(*) AS n FROM oncology.patients "
                                               "WHERE sex = 'F'")
        assert spent(fresh) > 0
        assert to_units(remaining(fresh), EPSILON_UNIT) == (
            to_units(left, EPSILON_UNIT) - to_units(spent(fresh), EPSILON_UNIT))
    finally:
        server.stop()
    with StateStore(served_dir, hasher=FAST) as store:
        charges = Ledger(store).charges("dana", "oncology")
    assert len(charges) == 4
