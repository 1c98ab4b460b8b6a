"""The budget ledger: exact accounting, atomic check-and-charge, durability."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.flight as flight
import pytest
from argon2 import PasswordHasher

from gateway.errors import BudgetExhaustedError, InputError
from gateway.flight_errors import to_flight_error
from gateway.ledger import ASK_FOR_MORE, BudgetExceededError, Cost, Ledger, to_units
from gateway.state import SCHEMA_VERSION, StateStore
from policy.model import Budget

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = StateStore(tmp_path, hasher=PasswordHasher(memory_cost=8192))
    yield s
    s.close()


def test_schema_has_the_budget_tables(store: StateStore) -> None:
    assert store.schema_version() == SCHEMA_VERSION >= 2


def test_first_use_starts_from_the_roles_budget(store: StateStore) -> None:
    ledger = Ledger(store)
    b = ledger.balance("alice", "health", default=Budget(3.0, 1e-5))
    assert (b.allowance_epsilon, b.spent_epsilon, b.remaining_epsilon) == (3.0, 0.0, 3.0)
    assert b.remaining_delta == 1e-5


def test_exact_accounting_after_a_sequence_of_charges(store: StateStore) -> None:
    ledger = Ledger(store)
    budget = Budget(3.0, 1e-5)
    for cost in (Cost(0.1), Cost(0.3, 1e-6), Cost(0.1 + 0.1 + 0.1), Cost(1.2, 2e-6)):
        ledger.charge("alice", "health", cost, default=budget)
    b = ledger.balance("alice", "health")
    assert b.spent_epsilon == 1.9
    assert b.remaining_epsilon == 1.1
    assert b.spent_delta == 3e-6
    assert b.remaining_delta == 7e-6
    assert [c[2] for c in ledger.charges("alice", "health")] == [0.1, 0.3, 0.3, 1.2]


def test_exhaustion_at_exactly_the_right_query(store: StateStore) -> None:
    ledger = Ledger(store)
    for _ in range(30):  # 30 × 0.1 = 3.0 exactly
        ledger.charge("alice", "health", Cost(0.1), default=Budget(3.0))
    with pytest.raises(BudgetExceededError) as info:
        ledger.charge("alice", "health", Cost(0.1), default=Budget(3.0))
    assert str(info.value) == (
        "Budget for dataset 'health' exhausted: 0 of 3 ε left, this query needs 0.1. "
        "Ask for more with `stockade requests budget`."
    )
    assert isinstance(info.value, BudgetExhaustedError)
    assert (info.value.left, info.value.needed, info.value.allowance) == (0.0, 0.1, 3.0)
    assert ledger.balance("alice", "health").spent_epsilon == 3.0


def test_delta_is_checked_too(store: StateStore) -> None:
    ledger = Ledger(store)
    with pytest.raises(BudgetExceededError, match=re.escape(
            "You have no δ budget for dataset 'health': 0 of 0 δ left, this query needs 1e-06. "
            + ASK_FOR_MORE)):
        ledger.charge("alice", "health", Cost(0.1, 1e-6), default=Budget(3.0, 0.0))
    assert ledger.charges() == []


def test_owner_sets_and_adds_allowance(store: StateStore) -> None:
    ledger = Ledger(store)
    ledger.charge("alice", "health", Cost(1.0), default=Budget(1.0))
    with pytest.raises(BudgetExceededError):
        ledger.charge("alice", "health", Cost(0.5), default=Budget(1.0))
    assert ledger.add_allowance("alice", "health", 0.5).remaining_epsilon == 0.5
    ledger.charge("alice", "health", Cost(0.5), default=Budget(1.0))
    b = ledger.set_allowance("alice", "health", 4.0, 1e-6)
    assert (b.allowance_epsilon, b.spent_epsilon, b.remaining_epsilon) == (4.0, 1.5, 2.5)
    # The policy's budget only applies on first use.
    assert ledger.balance("alice", "health", default=Budget(100.0)).allowance_epsilon == 4.0


def test_dataset_cap_is_shared_by_all_users(store: StateStore) -> None:
    ledger = Ledger(store)
    ledger.set_dataset_cap("health", 1.0)
    ledger.charge("alice", "health", Cost(0.6), default=Budget(5.0))
    with pytest.raises(BudgetExceededError, match="shared by all its users is exhausted: 0.4 of 1"):
        ledger.charge("bob", "health", Cost(0.5), default=Budget(5.0))
    ledger.charge("bob", "health", Cost(0.4), default=Budget(5.0))
    assert ledger.balance("bob", "health", default=Budget(5.0)).remaining_epsilon == 0.0
    ledger.set_dataset_cap("health", None)
    assert ledger.balance("bob", "health").remaining_epsilon == 4.6


def test_charges_are_append_only(store: StateStore) -> None:
    Ledger(store).charge("alice", "health", Cost(0.5), default=Budget(1.0))
    with store._transaction() as con, pytest.raises(Exception, match="append-only"):
        con.execute("DELETE FROM budget_charges")


def test_stored_answer_is_returned_without_a_second_charge(store: StateStore) -> None:
    ledger = Ledger(store)
    first = ledger.charge("alice", "h", Cost(0.5), default=Budget(1.0), query_key="k",
                          answer=b"noisy")
    again = ledger.charge("alice", "h", Cost(0.5), default=Budget(1.0), query_key="k",
                          answer=b"other noise")
    assert first.charged and not again.charged
    assert again.answer == b"noisy" and ledger.answer("k") == b"noisy"
    assert ledger.balance("alice", "h").spent_epsilon == 0.5


def test_fifty_concurrent_charges_against_a_budget_for_ten(store: StateStore) -> None:
    ledger = Ledger(store)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            ledger.charge("alice", "health", Cost(0.1), default=Budget(1.0), query_key=f"q{i}",
                          answer=b"x")
            result = "ok"
        except BudgetExceededError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 40
    assert ledger.balance("alice", "health").spent_epsilon == 1.0


CHARGER = """
import sys, time
from argon2 import PasswordHasher
from gateway.ledger import Cost, Ledger
from gateway.state import StateStore
from policy.model import Budget
store = StateStore(sys.argv[1], hasher=PasswordHasher(memory_cost=8192))
ledger = Ledger(store)
for i in range(3):
    ledger.charge("alice", "health", Cost(0.25), default=Budget(1.0), query_key=f"k{i}",
                  answer=b"answer")
print("charged", flush=True)
time.sleep(60)
"""


def test_charges_survive_a_killed_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHARGER, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "charged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with StateStore(tmp_path, hasher=PasswordHasher(memory_cost=8192)) as store:
        ledger = Ledger(store)
        b = ledger.balance("alice", "health", default=Budget(1.0))
        assert (b.spent_epsilon, b.remaining_epsilon) == (0.75, 0.25)
        assert ledger.answer("k2") == b"answer"
        with pytest.raises(BudgetExceededError, match="0.25 of 1 ε left, this query needs 0.5"):
            ledger.charge("alice", "health", Cost(0.5), default=Budget(1.0))


def test_units_are_exact() -> None:
    assert to_units(1e-6, 10**18) == 10**12
    assert to_units(0.1 + 0.2, 10**12) == 300_000_000_000
    with pytest.raises(ValueError, match="finite number"):
        Cost(float("nan"))


class _Server(flight.FlightServerBase):  # type: ignore[misc]
    def do_get(self, context, ticket):  # type: ignore[no-untyped-def]
        raise to_flight_error(BudgetExceededError(
            "Budget for dataset 'health' exhausted: 0 of 1 ε left, this query needs 0.5. "
            + ASK_FOR_MORE, dataset="health", parameter="ε", left=0.0, needed=0.5,
            allowance=1.0))


def test_a_pyarrow_client_sees_permission_denied_with_what_is_left() -> None:
    server = _Server("grpc://127.0.0.1:0")
    try:
        client = flight.connect(f"grpc://127.0.0.1:{server.port}")
        started = time.monotonic()
        with pytest.raises(flight.FlightUnauthorizedError) as info:
            client.do_get(flight.Ticket(b"q")).read_all()
        assert time.monotonic() - started < 10  # no retries
        assert str(info.value).startswith(
            "Budget for dataset 'health' exhausted: 0 of 1 ε left, this query needs 0.5. "
            "Ask for more with `stockade requests budget`")
        client.close()
    finally:
        server.shutdown()


def test_amounts_too_large_to_account_exactly_are_refused(store: StateStore) -> None:
    ledger = Ledger(store)
    with pytest.raises(InputError, match="too large to account exactly"):
        ledger.set_allowance("alice", "health", 1e7)
    assert ledger.balance("alice", "health", default=Budget(5.0)).allowance_epsilon == 5.0
