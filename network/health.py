"""The health of every domain, checked in the background.

Every ``health_interval_s`` each domain gets one cheap call without credentials
(ListActions, which a domain answers with "authentication required"): an
answer means the domain is ``up``; no connection, or no answer within the
domain's ``timeout_s`` (at most :data:`MAX_CHECK_S`), means ``down``. Until its
first check a domain is ``unknown``. The network's ``stockade.network.status``
action and ``stockade network status`` show the result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway.errors import StockadeError
from network.domains import DomainLink

log = logging.getLogger("stockade.network.health")

#: The longest a health check waits for a domain, whatever its ``timeout_s``.
MAX_CHECK_S = 5.0


@dataclass(frozen=True)
class Health:
    """One domain's last check: ``state`` is ``up``, ``down`` or ``unknown``."""

    state: str = "unknown"
    checked_at: float | None = None  # Unix time of the check
    latency_ms: float | None = None
    error: str | None = None
    up_since: float | None = None  # Unix time of the first of the current run of ``up``s

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "checked_at": self.checked_at,
                "latency_ms": self.latency_ms, "error": self.error, "up_since": self.up_since}


class HealthMonitor:
    """Checks every domain now, then every ``interval_s`` in a background thread."""

    def __init__(self, links: Mapping[str, DomainLink], interval_s: float) -> None:
        self.links = dict(links)
        self.interval_s = interval_s
        self._health: dict[str, Health] = {name: Health() for name in self.links}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(self.links))),
                                        thread_name_prefix="health")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="network-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_CHECK_S + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_all()
            except Exception:  # never let the poller die
                log.exception("health check failed")
            self._stop.wait(self.interval_s)

    def check_all(self) -> dict[str, Health]:
        """Check every domain now, in parallel; the new health of each."""
        futures = {name: self._pool.submit(self.check, name) for name in self.links}
        return {name: future.result() for name, future in futures.items()}

    def check(self, name: str) -> Health:
        """Check domain ``name`` now and record the result."""
        link = self.links[name]
        started = time.perf_counter()
        error = None
        try:
            link.ping(min(link.timeout_s, MAX_CHECK_S))
        except StockadeError as exc:
            error = exc.message
        latency = round((time.perf_counter() - started) * 1000, 3)
        now = time.time()
        with self._lock:
            before = self._health[name]
            if error is None:
                since = before.up_since if before.state == "up" else now
                health = Health("up", now, latency, None, since)
            else:
                health = Health("down", now, None, error, None)
            if before.state != health.state:
                log.log(logging.INFO if error is None else logging.WARNING,
                        "domain %s is %s%s", name, health.state, f": {error}" if error else "")
            self._health[name] = health
        return health

    def health(self, name: str) -> Health:
        with self._lock:
            return self._health[name]

    def is_down(self, name: str) -> bool:
        return self.health(name).state == "down"

    def snapshot(self) -> dict[str, Health]:
        with self._lock:
            return dict(self._health)
