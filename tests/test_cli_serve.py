"""`stockade serve` as a real process: the ready line, clean stop, bounded memory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import NUMBERS_ROWS

STOCKADE = [sys.executable, "-m", "gateway.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["STOCKADE_ADMIN_PASSWORD"] = "owner-password"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


@pytest.fixture(scope="module")
def served(
    test_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    data_dir = tmp_path_factory.mktemp("served-state")
    subprocess.run(
        [*STOCKADE, "users", "add", "rita", "--role", "researcher", "--password-stdin",
         "--data-dir", str(data_dir)],
        input="rita-password\n", text=True, check=True, env=_env(), capture_output=True,
    )
    proc = subprocess.Popen(
        [*STOCKADE, "serve", "--policy", str(test_root / "policy.yaml"), "--data-dir",
         str(data_dir), "--port", "0", "--memory-limit", "1GB"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.fullmatch(r"listening on (grpc://127\.0\.0\.1:\d+)\n", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    yield match.group(1), proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_large_result_streams_with_bounded_server_memory(served):
    import adbc_driver_flightsql.dbapi as flight_sql

    url, proc = served
    server = psutil.Process(proc.pid)
    conn = flight_sql.connect(url, db_kwargs={"username": "rita", "password": "rita-password"},
                              autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT 1 AS warm")
    cur.fetchall()
    baseline = server.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rows = 0
    result_bytes = 0
    largest_batch = 0
    try:
        cur.execute("SELECT id, bucket, half FROM bulk.numbers")
        reader = cur.fetch_record_batch()
        for batch in reader:
            rows += batch.num_rows
            result_bytes += batch.nbytes
            largest_batch = max(largest_batch, batch.nbytes)
    finally:
        done.set()
        sampler.join()
        cur.close()
        conn.close()
    assert rows == NUMBERS_ROWS
    assert largest_batch <= 4 * 1024 * 1024
    growth = peak - baseline
    # The whole result is ~144 MB of Arrow; a server that materialised it would grow by
    # at least that much. Streaming keeps the growth to a few batches plus DuckDB's buffers.
    assert result_bytes > 140_000_000
    assert growth < result_bytes / 2, f"server grew by {growth / 1e6:.0f} MB"


def test_sigterm_stops_cleanly(served):
    _, proc = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_serve_reports_a_bad_policy_without_traceback(tmp_path: Path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\ndomain: {name: x}\ndatasets: {}\nroles:\n  owner: {admn: true}\n")
    proc = subprocess.run(
        [*STOCKADE, "serve", "--policy", str(bad), "--data-dir", str(tmp_path / "d"),
         "--port", "0"], capture_output=True, text=True, env=_env(), timeout=60,
    )
    assert proc.returncode == 2
    assert "admn" in proc.stderr and "admin" in proc.stderr
    assert "Traceback" not in proc.stderr


def _rows(url: str, user: str, password: str, sql: str) -> list[tuple[object, ...]]:
    import adbc_driver_flightsql.dbapi as flight_sql

    conn = flight_sql.connect(url, autocommit=True,
                              db_kwargs={"username": user, "password": password})
    try:
        cur = conn.cursor()
        cur.execute(sql)
        rows = cur.fetchall()
        cur.close()
        return rows
    finally:
        conn.close()


def test_demo_runs_and_prints_how_to_connect(tmp_path: Path):
    proc = subprocess.Popen(
        [*STOCKADE, "demo", "--dir", str(tmp_path), "--port", "0", "--rows", "12000",
         "--console-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        urls = dict(re.findall(r"^(\w+) listening on (grpc://127\.0\.0\.1:\d+)$", text, re.M))
        assert set(urls) == {"st_marys", "city_general", "riverside", "network"}, text
        assert len(set(urls.values())) == len(urls), text  # every service on its own port
        logins = re.findall(r"^login: (\S+) (\S+) (\S+)  \(domains: ([\w, ]+)\)$", text, re.M)
        by_domain = {(user, domain): (password, role) for user, password, role, domains in logins
                     for domain in domains.split(", ")}
        for hospital in ("st_marys", "city_general", "riverside"):
            assert by_domain[("owner", hospital)][1] == "owner", text
            assert by_domain[("ann", hospital)] == ("ann-demo-pw", "analyst"), text
            assert by_domain[("rita", hospital)][1] == "researcher", text
        assert "jdbc:arrow-flight-sql://" in text
        assert "import stockade" in text and "stockade.connect(" in text
        assert "stockade query --url " + urls["network"] in text
        assert "FROM federated.oncology.screenings GROUP BY" in text
        assert "FROM riverside.oncology.screenings" in text
        console = re.search(r"^console listening on (http://127\.0\.0\.1:\d+)", text, re.M)
        assert console, text
        with urllib.request.urlopen(console.group(1) + "/_stcore/health", timeout=10) as answer:
            assert answer.status == 200
        owner = by_domain[("owner", "city_general")][0]
        assert _rows(urls["city_general"], "owner", owner,
                     "SELECT count(*) FROM oncology.visits")[0][0] > 0

        # Through the network: a federated GROUP BY equals the sum of each domain's answer
        # (rita reads rows at two hospitals and aggregates over >= 20 patients at the third).
        rita = by_domain[("rita", "st_marys")][0]
        by_test = "SELECT test, count(*) AS n FROM {} GROUP BY test ORDER BY test"
        expected: dict[str, int] = {}
        for name in ("st_marys", "city_general", "riverside"):
            for test, n in _rows(urls[name], "rita", rita, by_test.format("oncology.screenings")):
                expected[str(test)] = expected.get(str(test), 0) + int(n)  # type: ignore[call-overload]
        federated = _rows(
            urls["network"], "rita", rita,
            "SELECT test, count(*) AS n, avg(age) AS mean_age "
            "FROM federated.oncology.screenings GROUP BY test ORDER BY test")
        assert {str(r[0]): int(r[1]) for r in federated} == expected  # type: ignore[call-overload]
        assert [r[-1] for r in federated] == [3] * len(expected)  # domain_count per group
        assert len(expected) == 5 and all(n > 0 for n in expected.values())
        routed = _rows(urls["network"], "rita", rita,
                       by_test.format("riverside.oncology.screenings"))
        assert routed == _rows(urls["riverside"], "rita", rita,
                               by_test.format("oncology.screenings"))
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "demo stopped" in out


def test_policy_check_reports_ok_and_errors(test_root: Path, tmp_path: Path):
    ok = subprocess.run([*STOCKADE, "policy", "check", str(test_root / "policy.yaml")],
                        capture_output=True, text=True, env=_env(), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "st_marys" in ok.stdout
    bad = tmp_path / "policy.yaml"
    bad.write_text((test_root / "policy.yaml").read_text().replace(
        "zip: {mask:", "zipp: {mask:"))
    (tmp_path / "data").symlink_to(test_root / "data")
    proc = subprocess.run([*STOCKADE, "policy", "check", str(bad)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "zipp" in proc.stderr and "Did you mean 'zip'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_first_start_creates_the_owner_with_a_one_time_password(test_root: Path, tmp_path: Path):
    import adbc_driver_flightsql.dbapi as flight_sql

    env = _env()
    del env["STOCKADE_ADMIN_PASSWORD"]
    proc = subprocess.Popen(
        [*STOCKADE, "serve", "--policy", str(test_root / "policy.yaml"), "--data-dir",
         str(tmp_path / "state"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = re.fullmatch(r"listening on (\S+)\n", proc.stdout.readline())
        assert url
        password = re.search(r"one-time password: (\S+)", proc.stderr.readline())
        assert password
        conn = flight_sql.connect(url.group(1), autocommit=True, db_kwargs={
            "username": "owner", "password": password.group(1)})
        cur = conn.cursor()
        cur.execute("SELECT name FROM secret.salaries")  # admins see every dataset
        assert cur.fetchall() == [("alice",)]
        cur.close()
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
