"""The servers the streaming, latency and concurrency figures share, and their memory.

One Parquet file (TPC-H ``lineitem``, generated once per scale factor) served by:

- **the gateway**: ``stockade serve`` in its own process (:data:`THREADS` DuckDB
  threads, its other settings at their defaults), with the file as ``tpch.lineitem``
  in ``raw`` mode and again as ``private.lineitem`` in ``dp`` mode (one privacy unit
  per order, at most 7 rows each, a budget no benchmark exhausts); users ``bench``
  and ``analyst0`` …;
- **the bare server**: :mod:`bench.bare_server` in its own process (as many DuckDB
  threads), with views of the same names over the same file, so the same SQL text
  runs on both.

:class:`PeakRss` measures a process's resident memory high-water mark over an
interval.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import duckdb

ROOT = Path(__file__).resolve().parents[1]
BATCH_ROWS = 65_536
THREADS = 2  # DuckDB threads of every contender (the gateway's default)
USER = "bench"
PASSWORD = "bench-password"
ANALYST_PASSWORD = "bench-analyst-pw"

POLICY = """\
version: 1
domain: {name: bench, description: benchmark domain}
limits: {max_rows: 1000000000, timeout_s: 600}
datasets:
  tpch:
    tables:
      lineitem:
        source: {format: parquet, path: lineitem.parquet}
  private:
    tables:
      lineitem:
        source: {format: parquet, path: lineitem.parquet}
        privacy_unit: l_orderkey
        max_rows_per_unit: 7
        columns:
          l_quantity: {lower: 1, upper: 50}
          l_extendedprice: {lower: 0, upper: 110000}
roles:
  reader:
    datasets:
      tpch: {mode: raw}
      private: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 1000000, delta: 0.5}}
  owner: {admin: true}
"""


def make_lineitem(scale: float, directory: Path) -> Path:
    """TPC-H ``lineitem`` at ``scale`` as Parquet in ``directory`` (generated once)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"lineitem-sf{scale:g}.parquet"
    if not path.exists():
        from duckdb_extensions import import_extension

        print(f"generating TPC-H lineitem at scale factor {scale:g} ...", flush=True)
        con = duckdb.connect()
        import_extension("tpch", con=con)
        con.execute("LOAD tpch")
        con.execute(f"CALL dbgen(sf={scale})")
        partial = path.with_suffix(".partial")
        con.execute(f"COPY lineitem TO '{partial}' (FORMAT parquet)")
        con.close()
        partial.rename(path)
    return path


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@dataclass(frozen=True)
class Servers:
    """The running gateway and bare server, and the file they serve."""

    gateway: Server
    bare: Server
    data: Path
    analysts: list[tuple[str, str]]  # (user, password) of analyst0 …


def _env() -> dict[str, str]:
    return dict(os.environ, STOCKADE_ADMIN_PASSWORD="bench-owner-pw", PYTHONPATH=str(ROOT))


def _start(stack: ExitStack, cmd: list[str], log: Path) -> tuple[Server, subprocess.Popen[str]]:
    err: IO[str] = stack.enter_context(log.open("w"))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            text=True, env=_env(), cwd=ROOT)
    stack.callback(_stop, proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (grpc://\S+)", line)
        if match:
            return Server(match.group(1), proc.pid), proc
    raise RuntimeError(f"{cmd[2]} did not start (exit code {proc.wait()}); see {log}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()  # the bare server stops when its stdin closes
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _users(state: Path, analysts: int) -> list[tuple[str, str]]:
    wanted = [(USER, PASSWORD)] + [(f"analyst{i}", ANALYST_PASSWORD) for i in range(analysts)]
    add_users(state, [(user, "reader", password) for user, password in wanted])
    return wanted[1:]


def add_users(state: Path, users: list[tuple[str, str, str]]) -> None:
    """Create (or reset the password of) each ``(user, role, password)`` in ``state``."""
    from gateway.state import StateStore

    store = StateStore(state)
    try:
        for user, role, password in users:
            try:
                store.get_user(user)
                store.set_password(user, password)
            except LookupError:
                store.add_user(user, role, password, {})
    finally:
        store.close()


def start_gateway(stack: ExitStack, policy: Path, state: Path, log: Path,
                  threads: int = THREADS) -> Server:
    """``stockade serve`` in its own process, stopped when ``stack`` closes."""
    server, _ = _start(stack, [sys.executable, "-m", "gateway.cli", "serve", "--policy",
                               str(policy), "--data-dir", str(state), "--port", "0",
                               "--threads", str(threads)], log)
    return server


@contextmanager
def running(work: Path, data: Path, analysts: int = 16) -> Iterator[Servers]:
    """The gateway and the bare server over ``data``, with working files in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    link = work / "lineitem.parquet"
    link.unlink(missing_ok=True)
    link.symlink_to(data.resolve())
    (work / "policy.yaml").write_text(POLICY)
    accounts = _users(work / "state", analysts)
    with ExitStack() as stack:
        gateway = start_gateway(stack, work / "policy.yaml", work / "state",
                                work / "gateway.log")
        views = [f"{name}={data.resolve()}" for name in ("tpch.lineitem", "private.lineitem")]
        bare, _ = _start(stack, [sys.executable, "-m", "bench.bare_server", str(BATCH_ROWS),
                                 str(THREADS), *views], work / "bare.log")
        yield Servers(gateway, bare, data, accounts)


class PeakRss:
    """The resident memory high-water mark of process ``pid`` between :meth:`reset` and
    :meth:`peak`, in bytes.

    On Linux the kernel keeps the mark (``VmHWM`` in ``/proc/PID/status``) and
    resets it to the current RSS when ``5`` is written to ``/proc/PID/clear_refs``:
    exact, and nothing runs while measuring. Elsewhere a thread samples the RSS
    with psutil every 5 ms. :attr:`method` says which.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stop = threading.Event()
        self._sampled = 0
        self._thread: threading.Thread | None = None
        self.method = "VmHWM" if self._kernel_reset() else "psutil sampling every 5 ms"

    def _kernel_reset(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return self._vm("VmHWM") > 0
        except OSError:
            return False

    def _vm(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def current(self) -> int:
        """The process's RSS now."""
        if self.method == "VmHWM":
            return self._vm("VmRSS")
        import psutil

        rss: int = psutil.Process(self.pid).memory_info().rss
        return rss

    def reset(self) -> None:
        if self.method == "VmHWM":
            self._kernel_reset()
            return
        self._stop.clear()
        self._sampled = self.current()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._sampled = max(self._sampled, self.current())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def peak(self) -> int:
        if self.method == "VmHWM":
            return self._vm("VmHWM")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self._sampled, self.current())
