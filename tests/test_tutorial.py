"""docs/tutorial.md, run: every snippet, in order, against a headless `stockade demo`.

The demo runs as a subprocess (``--port 0 --no-console``, small data). The tutorial's
code blocks are fenced as ```` ```python tutorial=NAME ```` or ```` ```sh tutorial=NAME ````;
they are written for the default ports (8815…8818), which are replaced here by the URLs the
demo printed. Python blocks share one namespace, as in one interpreter session; shell
blocks run in bash, each starting with the environment the previous one exported, as in
one terminal. Each block must succeed; some outputs are checked against the truth (read
with the hospital owners' logins) or against exact privacy accounting. The snippets the
demo prints are run too, as pasted.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.demo_policies import HOSPITAL_NAMES, LOGINS

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
#: Enough rows that a dp GROUP BY's groups pass SmartNoise's threshold at ε 0.1.
ROWS = 200_000
READY_TIMEOUT_S = 120.0
#: The URLs the tutorial is written for: the demo's default ports.
DEFAULT_URLS = {"st_marys": "grpc://127.0.0.1:8815", "city_general": "grpc://127.0.0.1:8816",
                "riverside": "grpc://127.0.0.1:8817", "network": "grpc://127.0.0.1:8818"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass
class Block:
    lang: str
    name: str
    code: str
    line: int


def tutorial_blocks(text: str) -> list[Block]:
    """The runnable blocks of ``text``, in order; fails on an untested code block."""
    blocks = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        line = text.count("\n", 0, match.start()) + 1
        lang = info[0] if info else ""
        name = next((word.split("=", 1)[1] for word in info[1:]
                     if word.startswith("tutorial=")), None)
        if name is None:
            # Output samples (text) and the one command run before the demo exists.
            assert lang == "text" or match.group(2).strip() == "make demo", (
                f"docs/tutorial.md:{line}: a ```{lang} block without tutorial=NAME is not "
                "tested: mark it, or make it a ```text sample")
            continue
        assert lang in ("python", "sh"), f"docs/tutorial.md:{line}: cannot run {lang!r}"
        blocks.append(Block(lang, name, match.group(2), line))
    names = [b.name for b in blocks]
    assert len(names) == len(set(names)), names
    return blocks


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    text: str
    urls: dict[str, str]
    passwords: dict[tuple[str, str], str]  # (user, domain) → password
    stdout: queue.Queue[str | None]
    stderr: list[str]
    readers: list[threading.Thread]
    directory: Path

    def substitute(self, code: str) -> str:
        """``code`` with the default URLs and passwords replaced by the demo's."""
        for name, default in DEFAULT_URLS.items():
            code = code.replace(default, self.urls[name])
            code = code.replace(default.split("://", 1)[1], self.urls[name].split("://", 1)[1])
        for login in LOGINS:
            code = code.replace(login.password,
                                self.passwords[(login.user, login.domains[0])])
        return code

    def rest_of_stdout(self) -> str:
        lines = []
        while (line := self.stdout.get(timeout=30)) is not None:
            lines.append(line)
        return "".join(lines)


def _pump(stream: Any, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _drain(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    directory = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--port", "0", "--rows", str(ROWS),
         "--no-console", "--dir", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=directory,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    readers = [threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True),
               threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)]
    for reader in readers:
        reader.start()
    out: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while not out or "Press Ctrl-C" not in out[-1]:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "".join(out) + "".join(stderr)
            out.append(line)
    except queue.Empty:
        proc.kill()
        pytest.fail("the demo did not get ready:\n" + "".join(out) + "".join(stderr))
    text = "".join(out)
    urls = dict(re.findall(r"^(\w+) listening on (grpc://127\.0\.0\.1:\d+)$", text, re.M))
    passwords = {(user, domain): password for user, password, _, domains in re.findall(
        r"^login: (\S+) (\S+) (\S+)  \(domains: ([\w, ]+)\)$", text, re.M)
        for domain in domains.split(", ")}
    yield Demo(proc, text, urls, passwords, lines, stderr, readers, directory)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for reader in readers:
        reader.join(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


def test_the_demo_prints_every_service_and_login(demo: Demo):
    assert set(demo.urls) == {*HOSPITAL_NAMES, "network"}, demo.text
    assert "console listening" not in demo.text
    for login in LOGINS:
        for domain in login.domains:
            assert demo.passwords[(login.user, domain)] == login.password, demo.text
    roles = re.findall(r"^login: (\S+) \S+ (\S+)", demo.text, re.M)
    assert ("ann", "analyst") in roles and ("owner", "owner") in roles


# --------------------------------------------------------------------------- the truth

def _owner_rows(demo: Demo, domain: str, sql: str) -> list[tuple[Any, ...]]:
    import adbc_driver_flightsql.dbapi as flight_sql

    with flight_sql.connect(demo.urls[domain], autocommit=True, db_kwargs={
            "username": "owner", "password": demo.passwords[("owner", domain)]}) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


def _bounded_counts(demo: Demo, hospitals: tuple[str, ...], table: str, key: str,
                    max_rows: int) -> dict[Any, float]:
    """What a dp COUNT(*) GROUP BY ``key`` estimates, read from the demo's files.

    SmartNoise keeps at most ``max_rows`` rows per patient (chosen at random), so a
    patient with n rows adds min(n, max_rows) / n to the expected count for each row.
    """
    import duckdb

    counts: dict[Any, float] = {}
    for hospital in hospitals:
        path = demo.directory / hospital / "data" / f"{table}.parquet"
        for k, n in duckdb.sql(f"""
                SELECT k, sum(least(n, {max_rows}) / n) FROM (
                  SELECT {key} AS k, count(*) OVER (PARTITION BY patient_id) AS n
                  FROM read_parquet('{path}')) GROUP BY k""").fetchall():
            counts[k] = counts.get(k, 0.0) + float(n)
    return counts


# --------------------------------------------------------------------------- checks

Check = Callable[[dict[str, Any], str, Demo], None]


def _connect(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert type(ns["conn"]).__name__ == "Connection"
    assert f"ann@{demo.urls['st_marys']}" in out


def _catalog(ns: dict[str, Any], out: str, demo: Demo) -> None:
    tables = ns["conn"].catalog()
    assert sorted(tables["table"].to_list()) == ["patients", "screenings", "visits"]
    assert set(tables["mode"].to_list()) == {"dp"}
    names = ns["conn"].schema("oncology.screenings").names
    assert "patient_id" not in names and {"site", "age", "test", "result"} <= set(names)
    assert "tumor_size_mm" in out and "patient_id" not in out


def _raw(ns: dict[str, Any], out: str, demo: Demo) -> None:
    rows = ns["rita"].sql("SELECT zip, consent FROM oncology.patients LIMIT 50")
    assert rows.height == 50
    assert all(z.endswith("**") for z in rows["zip"]) and all(rows["consent"])
    frame = ns["by_insurance"]
    assert frame["insurance"].to_list() == ["private", "public", "uninsured"]
    truth = dict(_owner_rows(demo, "st_marys", """
        SELECT p.insurance, count(*) FROM oncology.screenings s
        JOIN oncology.patients p USING (patient_ref) GROUP BY ALL"""))
    assert dict(zip(frame["insurance"], frame["screenings"], strict=True)) == truth
    assert frame.privacy is None and "None" in out


def _raw_refused(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert out.startswith("UnknownColumnError - Unknown column 'patient_id'"), out
    assert "Traceback" not in out and "FlightSQL" not in out


def _aggregate(ns: dict[str, Any], out: str, demo: Demo) -> None:
    released = {int(k): int(n) for k, n in ns["sizes"].iter_rows()}
    truth = _owner_rows(demo, "st_marys", """
        SELECT CAST(floor(tumor_size_mm / 5) * 5 AS INTEGER), count(*),
               count(DISTINCT patient_ref)  -- one per patient at St Mary's
        FROM oncology.screenings WHERE result = 'positive' GROUP BY 1""")
    expected = {int(k): int(n) for k, n, people in truth if people >= 10}
    assert released == expected
    assert len(truth) > len(expected) > 0  # some bins suppressed, some shown


def _aggregate_refused(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert "'aggregate' mode for your role" in out and "10 people" in out, out


def _dp(ns: dict[str, Any], out: str, demo: Demo) -> None:
    df = ns["df"]
    privacy = df.privacy
    # Four noisy values (key count, count, and avg as sum and count) at ε 0.1 each.
    assert privacy.epsilon_spent == pytest.approx(0.4)
    assert privacy.epsilon_remaining == pytest.approx(2.6)
    assert not privacy.cached
    truth = _bounded_counts(demo, ("st_marys",), "screenings", "site", max_rows=5)
    assert df["site"].to_list() == sorted(truth)
    width = privacy.columns["n"].ci95_half_width
    # Laplace noise of scale b = max_rows_per_unit 5 / ε 0.1: 95 % within b·ln(20), and
    # a count is a whole number: its half-width is ceil(b·ln 20 - 1/2). Counts are checked
    # to within 4 half-widths of their expectation: a correct Laplace draw misses by that
    # much with probability below 20^-4 (6e-6).
    assert width == math.ceil(5 / 0.1 * math.log(20) - 0.5)
    for site, n in zip(df["site"], df["n"], strict=True):
        assert abs(n - truth[site]) < 4 * width, (site, n, truth[site])


def _dp_epsilon(ns: dict[str, Any], out: str, demo: Demo) -> None:
    again = ns["again"]
    assert again.privacy.cached and again.privacy.epsilon_spent == 0
    assert again.equals(ns["df"])
    visits = ns["visits"]
    assert visits.privacy.epsilon_spent == pytest.approx(0.5)
    truth = _bounded_counts(demo, ("st_marys",), "visits", "0", max_rows=10)[0]
    width = visits.privacy.columns["visits"].ci95_half_width
    assert abs(visits["visits"][0] - truth) < 4 * width
    assert "above this dataset's maximum of 1 per query" in out
    (budget,) = ns["conn"].budget()
    assert budget["epsilon_allowance"] == 3.0
    assert budget["epsilon_spent"] == pytest.approx(0.9)


def _request(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert ns["request"]["status"] == "pending"
    assert out.strip() == f"{ns['request']['id']} pending"
    assert ns["request"]["id"] == 1  # the id the next block approves


def _approve(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert "1   pending  ann   budget  oncology" in out, out
    assert "Approved request 1 of 'ann'" in out and "allowance ε 5" in out, out


def _approved(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert "(1, 'approved', 'For the 2024 report')" in out
    (budget,) = ns["conn"].budget()
    assert budget["epsilon_allowance"] == 5.0
    assert budget["epsilon_spent"] == pytest.approx(0.9)


def _federated(ns: dict[str, Any], out: str, demo: Demo) -> None:
    tests = ns["tests"]
    assert tests["test"].to_list() == ["cervical", "colonoscopy", "lung_ct", "mammography",
                                       "psa"]
    assert tests["domain_count"].to_list() == [3] * 5
    privacy = tests.privacy
    assert privacy.federated == {name: "ok" for name in HOSPITAL_NAMES}
    spent = {name: spend.epsilon_spent for name, spend in privacy.domains.items()}
    assert spent == pytest.approx({"st_marys": 0.4, "city_general": 0.8, "riverside": 1.0})
    truth = _bounded_counts(demo, HOSPITAL_NAMES, "screenings", "test", max_rows=5)
    widths = privacy.columns["n"].ci95_half_width_by_row
    assert widths is not None
    for test, n, width in zip(tests["test"], tests["n"], widths, strict=True):
        assert width is not None and abs(n - truth[test]) < 4 * width, (test, n, truth[test])


def _routed(ns: dict[str, Any], out: str, demo: Demo) -> None:
    for name in HOSPITAL_NAMES:
        assert f"{name} oncology dp" in out, out
    assert "department" in out


def _dataframe(ns: dict[str, Any], out: str, demo: Demo) -> None:
    result = ns["result"]
    assert result.columns == ["department", "stays", "mean_cost"]
    assert result.privacy.epsilon_spent == pytest.approx(0.4)
    assert result.height > 0 and "radiology" not in result["department"].to_list()


def _dataframe_join(ns: dict[str, Any], out: str, demo: Demo) -> None:
    truth = _owner_rows(demo, "st_marys", """
        SELECT p.insurance, s.result, count(*) FROM oncology.screenings s
        JOIN oncology.patients p USING (patient_ref) GROUP BY ALL ORDER BY ALL""")
    for insurance, result, n in truth:
        assert re.search(rf"{insurance}\s*┆\s*{result}\s*┆\s*{n}\b", out), (insurance, out)


def _cli(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert "uninsured" in out and "oncology" in out
    assert '"test","n","domain_count"' in out and '"colonoscopy",' in out
    assert "privacy: ε spent 0.5" in out  # insurance at riverside: 2 values at ε 0.25
    # riverside's budget: federated 1.0, routed 0.5, insurance 0.5, federated count 0.5
    assert re.search(r"^oncology\s+4\s+2\.5\s+1\.5\s", out, re.M), out


def _adbc(ns: dict[str, Any], out: str, demo: Demo) -> None:
    truth = _owner_rows(demo, "riverside", "SELECT count(*) FROM oncology.screenings "
                        "WHERE result = 'positive'")[0][0]
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert sum(int(row[-1]) for row in rows) == truth, out


def _close(ns: dict[str, Any], out: str, demo: Demo) -> None:
    assert all(c.closed for c in (ns["conn"], ns["rita"], ns["otto"], ns["net"]))


CHECKS: dict[str, Check] = {
    "connect": _connect, "catalog": _catalog, "raw": _raw, "raw-refused": _raw_refused,
    "aggregate": _aggregate, "aggregate-refused": _aggregate_refused, "dp": _dp,
    "dp-epsilon": _dp_epsilon, "request": _request, "approve": _approve,
    "approved": _approved, "federated": _federated, "routed": _routed,
    "dataframe": _dataframe, "dataframe-join": _dataframe_join, "cli": _cli,
    "adbc": _adbc, "close": _close,
}


# --------------------------------------------------------------------------- running

def run_python(code: str, namespace: dict[str, Any], where: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the tutorial's code
    return out.getvalue()


def close_all(namespace: dict[str, Any]) -> None:
    """Close the cursors, then the connections, a pasted snippet left open."""
    import adbc_driver_manager.dbapi as dbapi

    values = list(namespace.values())
    for kind in (dbapi.Cursor, dbapi.Connection):
        for value in values:
            if isinstance(value, kind):
                value.close()
    for value in values:
        if type(value).__name__ == "Connection" and hasattr(value, "is_network"):
            value.close()


def shell_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_shell(code: str, cwd: Path, where: str) -> str:
    """Run ``code`` in bash, in the environment the previous block left (as one terminal)."""
    state = cwd / ".tutorial-env"
    state.touch()
    script = (f"set -euo pipefail\nsource {state}\n{code}\n"
              f"export -p > {state}\n")
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=shell_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{where} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_every_snippet_of_the_tutorial_works(demo: Demo, tmp_path: Path):
    blocks = tutorial_blocks(TUTORIAL.read_text())
    assert [b.name for b in blocks] == list(CHECKS), "every block has its check, in order"
    namespace: dict[str, Any] = {"__name__": "__tutorial__"}
    started = time.monotonic()
    for block in blocks:
        where = f"docs/tutorial.md:{block.line} ({block.name})"
        code = demo.substitute(block.code)
        if block.lang == "python":
            out = run_python(code, namespace, where)
        else:
            out = run_shell(code, tmp_path, where)
        try:
            CHECKS[block.name](namespace, out, demo)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}\n--- output ---\n{out}") from exc
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------- printed

def printed_snippets(text: str) -> list[tuple[str, str]]:
    """(heading, code) of each snippet the demo printed: indented lines under a heading."""
    snippets: list[tuple[str, str]] = []
    heading: str | None = None
    code: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("    ") and heading is not None:
            code.append(line[4:])
            continue
        if heading is not None and code:
            snippets.append((heading, "\n".join(code) + "\n"))
        heading, code = (line, []) if line.endswith(":") else (None, [])
    return snippets


def test_every_snippet_the_demo_prints_works_when_pasted(demo: Demo, tmp_path: Path):
    snippets = printed_snippets(demo.text)
    kinds = [heading.split(",")[0].split(" (")[0] for heading, _ in snippets]
    assert kinds == ["From Python", "From Python", "From the command line",
                     "From a BI tool"], snippets
    for heading, code in snippets:
        if heading.startswith("From Python"):
            namespace: dict[str, Any] = {"__name__": "__pasted__"}
            try:
                out = run_python(code, namespace, heading)
            finally:
                close_all(namespace)
            assert "domain_count" in out, out  # the federated answer, merged
            assert "cervical" in out or "radiology" in out, out
        elif heading.startswith("From the command line"):
            out = run_shell(code, tmp_path, heading)
            assert "colonoscopy" in out and "oncology" in out, out
        else:
            host_port = demo.urls["st_marys"].split("://", 1)[1]
            assert code.strip() == (f"jdbc:arrow-flight-sql://{host_port}?useEncryption=false"
                                    "&user=rita&password=rita-demo-pw")


def test_the_readme_quick_start_works(demo: Demo):
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Run your own domain")]
    blocks = re.findall(r"^```python\n(.*?)^```$", quick_start, re.M | re.S)
    assert len(blocks) == 2
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    try:
        out = "".join(run_python(demo.substitute(code), namespace, f"README.md quick start {i}")
                      for i, code in enumerate(blocks))
    finally:
        close_all(namespace)
    assert namespace["df"].privacy.epsilon_spent == pytest.approx(0.4)
    assert "Privacy(" in out and "domain_count" in out, out


def test_ctrl_c_stops_the_demo_cleanly(demo: Demo):
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=60) == 0, "".join(demo.stderr)
    assert "demo stopped" in demo.rest_of_stdout()
    for reader in demo.readers:
        reader.join(timeout=10)
    assert "Traceback" not in "".join(demo.stderr), "".join(demo.stderr)
