"""`python -m bench` runs end to end: the concurrency part on tiny data, and its report.

Structure only: figures are never asserted here (timings belong in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import concurrency
from bench.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "concurrency", "--scale", "0.01",
         "--concurrency-levels", "1,3", "--concurrency-duration", "0.5",
         "--results", str(out / "results"), "--docs", str(out / "docs"),
         "--figures", str(out / "figures.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def test_concurrency_part_records_every_level_without_errors(run):
    proc, out = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((out / "figures.json").read_text())
    assert list(figures["parts"]) == ["concurrency"]
    (entry,) = figures["parts"]["concurrency"]
    about = entry["machine"]
    assert about["cores"] >= 1 and about["ram_gb"] > 0 and about["cpu"] and about["os"]
    assert {"duckdb", "pyarrow", "sqlglot", "smartnoise-sql",
            "adbc-driver-flightsql"} <= set(about["packages"])
    result = entry["result"]
    assert [p["analysts"] for p in result["levels"]] == [1, 3]
    kinds = [kind for kind, _ in result["mix"]]
    assert kinds == ["raw aggregate", "dp aggregate", "small select"]
    for point in result["levels"]:
        for server in ("gateway", "bare"):
            figures_at = point[server]
            assert figures_at["errors"] == 0, figures_at["error_samples"]
            assert figures_at["queries"] == figures_at["all"]["n"] > 0
            assert set(figures_at["all"]) == {"p50", "p95", "p99", "mean", "n"}
            # every analyst runs the whole mix in turn, so every kind appears
            assert all(figures_at["kinds"][kind]["n"] >= 1 for kind in kinds)
            assert figures_at["all"]["p50"] <= figures_at["all"]["p99"]
    assert concurrency.errors(result) == []


def test_the_report_has_the_section_the_summary_and_the_plot(run):
    proc, out = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "docs" / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\n")
    assert "## Concurrency" in text and "## Summary" in text
    assert "Not measured yet: streaming, latency, overhead, dp, federation" in text
    table = text.split("## Concurrency", 1)[1].split("Per query of the mix", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "|---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "3"]
    assert all(row.split("|")[10].strip() == "0 / 0" for row in rows[1:])
    assert "| concurrency: Stockade / bare q/s, 3 analyst(s) | **" in text
    png = (out / "docs" / "benchmarks-concurrency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_failed_queries_fail_the_run_with_their_messages():
    ok = {"errors": 0, "error_samples": []}
    bad = {"errors": 2, "error_samples": ["dp aggregate: InternalError: boom"]}
    result = {"levels": [{"analysts": 1, "gateway": ok, "bare": ok},
                         {"analysts": 4, "gateway": bad, "bare": ok}]}
    (line,) = concurrency.errors(result)
    assert line.startswith("gateway, 4 analyst(s): 2 failed queries")
    assert "InternalError: boom" in line


def test_only_names_the_parts(capsys):
    assert build_parser().parse_args(["--only", "dp,federation"]).only == ["dp", "federation"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--only", "dp,fedration"])
    assert "unknown part(s) fedration" in capsys.readouterr().err
