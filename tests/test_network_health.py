"""network.health: the background checks of every domain (fake domains here)."""

from __future__ import annotations

import time

from network.domains import DomainDown
from network.health import MAX_CHECK_S, HealthMonitor


class Pinged:
    def __init__(self, name: str, timeout_s: float = 30.0) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.up = True
        self.waits: list[float] = []

    def ping(self, timeout_s: float) -> None:
        self.waits.append(timeout_s)
        if not self.up:
            raise DomainDown(f"domain '{self.name}' is unavailable: connection refused")


def test_states_latency_and_up_since() -> None:
    a, b = Pinged("a"), Pinged("b", timeout_s=1.0)
    monitor = HealthMonitor({"a": a, "b": b}, interval_s=60)  # type: ignore[dict-item]
    assert monitor.health("a").state == "unknown" and not monitor.is_down("a")
    b.up = False
    first = monitor.check_all()
    assert first["a"].state == "up" and first["a"].latency_ms is not None
    assert first["b"].state == "down" and first["b"].latency_ms is None
    assert first["b"].error == "domain 'b' is unavailable: connection refused"
    assert monitor.is_down("b")
    assert a.waits == [MAX_CHECK_S] and b.waits == [1.0]  # never longer than MAX_CHECK_S
    second = monitor.check("a")
    assert second.up_since == first["a"].up_since  # still the same run of "up"
    assert second.checked_at is not None and first["a"].checked_at is not None
    assert second.checked_at >= first["a"].checked_at
    b.up = True
    assert monitor.check("b").up_since == monitor.health("b").checked_at
    assert set(monitor.snapshot()) == {"a", "b"}
    assert monitor.health("b").to_json()["state"] == "up"


def test_the_poller_runs_until_stopped() -> None:
    a = Pinged("a")
    monitor = HealthMonitor({"a": a}, interval_s=0.01)  # type: ignore[dict-item]
    monitor.start()
    deadline = time.monotonic() + 5
    while len(a.waits) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    monitor.stop()
    count = len(a.waits)
    time.sleep(0.05)
    assert len(a.waits) == count
    assert monitor.health("a").state == "up"
