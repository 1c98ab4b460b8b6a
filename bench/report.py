"""docs/benchmarks.md and its plots, from the figures recorded in bench/figures.json.

Every run of a part is recorded there with the date, the machine, the versions and
the load average; the last :data:`KEEP` runs of each part are kept. The document
is rewritten whole from the newest run of every part, so running one part
(``python -m bench --only dp``) leaves the others' sections as they were; its
closing summary gives every ratio of the newest run next to the range of that
ratio over the runs kept from the same machine and versions: the run-to-run
variance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import concurrency, federation, latency, machine, policy_overhead, streaming
from bench import dp as dp_bench
from bench import postgres as postgres_bench

KEEP = 5

# name → (module with markdown/headlines/plot, plot file), in the document's order.
PARTS: dict[str, tuple[ModuleType, str]] = {
    "streaming": (streaming, "benchmarks-streaming.png"),
    "latency": (latency, "benchmarks-latency.png"),
    "overhead": (policy_overhead, "benchmarks-policy.png"),
    "dp": (dp_bench, "benchmarks-dp.png"),
    "concurrency": (concurrency, "benchmarks-concurrency.png"),
    "federation": (federation, "benchmarks-federation.png"),
    "postgres": (postgres_bench, "benchmarks-postgres.png"),
}


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"parts": {}}


def record(path: Path, part: str, result: dict[str, Any], about: dict[str, Any],
           load_before: float, seconds: float) -> None:
    """Add a run of ``part`` to the figures file (keeping the last :data:`KEEP`)."""
    figures = load(path)
    runs = figures["parts"].setdefault(part, [])
    runs.append({"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1),
                 "load_before": round(load_before, 2), "load_after": round(machine.load(), 2),
                 "machine": about, "result": result})
    del runs[:-KEEP]
    path.write_text(json.dumps(figures, indent=1) + "\n")


def _measured(run: dict[str, Any], newest: dict[str, Any]) -> str:
    where = ("" if machine.key(run["machine"]) == machine.key(newest["machine"])
             else f" on {machine.text(run['machine'])}")
    return (f"*Measured {run['date']}{where}, in {run['seconds']:.0f} s; one-minute load "
            f"average {run['load_before']:.1f} at the start and {run['load_after']:.1f} at the "
            f"end, on {run['machine']['cores']} cores.*\n")


def _summary(parts: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for name, (module, _) in PARTS.items():
        runs = parts.get(name)
        if not runs:
            continue
        newest = runs[-1]
        same = [r for r in runs if machine.key(r["machine"]) == machine.key(newest["machine"])]
        history: dict[str, list[float]] = {}
        for run in same:
            headlines: Callable[[dict[str, Any]], list[tuple[str, float, str]]]
            headlines = module.headlines
            try:
                for label, value, _ in headlines(run["result"]):
                    history.setdefault(label, []).append(value)
            except (KeyError, TypeError):
                continue  # a run recorded before this figure existed
        for label, value, goal in module.headlines(newest["result"]):
            values = history.get(label, [value])
            spread = (f"{min(values):.2f} – {max(values):.2f} ({len(values)} runs)"
                      if len(values) > 1 else "one run so far")
            rows.append(f"| {label} | **{value:.2f}** | {spread} | {goal} |")
    return ("## Summary\n\nEvery figure as a ratio to its baseline, from the newest run of "
            "each part, with the range of the same ratio over the runs kept in "
            "`bench/figures.json` from this machine and these versions (the run-to-run "
            "variance, on a machine other work shared).\n\n"
            "| ratio | newest | range over runs | goal |\n|---|---:|---|---|\n"
            + "\n".join(rows) + "\n")


def render(figures_path: Path, docs: Path) -> str:
    """Rewrite ``docs``/benchmarks.md and the plots from ``figures_path``."""
    parts = load(figures_path)["parts"]
    docs.mkdir(parents=True, exist_ok=True)
    present = [name for name in PARTS if parts.get(name)]
    if not present:
        raise SystemExit(f"no figures in {figures_path}: run `python -m bench` first")
    newest = max((parts[name][-1] for name in present), key=lambda run: run["date"])
    missing = [name for name in PARTS if name not in present]
    sections = []
    for name in present:
        module, image = PARTS[name]
        run = parts[name][-1]
        module.plot(run["result"], docs / image)
        sections.append(module.markdown(run["result"]) + "\n" + _measured(run, newest))
    note = (f"\n\nNot measured yet: {', '.join(missing)} (`python -m bench --only "
            f"{','.join(missing)}`)." if missing else "")
    text = f"""# Benchmarks

Stockade side by side with what an engineer would use instead: every figure is measured
in one run of `make bench` (`python -m bench`) together with its baseline, alternately
where they can be, and reported as a ratio. `python -m bench --only PART[,PART]` runs
some of the parts (`{"`, `".join(PARTS)}`) and rewrites this file
from `bench/figures.json`, where the last {KEEP} runs of every part are kept with their
machine and versions; `python -m bench --render` only rewrites it.

Machine: {machine.text(newest['machine'])}.

The one-minute load average is recorded under every section: other work on the machine
adds noise, which ratios between contenders measured alternately in one run absorb
better than absolute figures do; the summary at the end gives the spread of every ratio
over the recorded runs.{note}

""" + "\n".join(sections) + "\n" + _summary(parts)
    (docs / "benchmarks.md").write_text(text)
    return text
