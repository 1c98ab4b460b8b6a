"""The machine and the versions a benchmark ran on, recorded with its figures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("duckdb", "pyarrow", "sqlglot", "smartnoise-sql", "adbc-driver-flightsql",
            "adbc-driver-manager", "polars", "matplotlib")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os() -> str:
    try:
        name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    except OSError:
        name = platform.system()
    return f"{name}, kernel {platform.release()}"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with local changes" if dirty else "")


def describe() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python and the versions of :data:`PACKAGES`."""
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "physical_cores": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os(),
        "python": platform.python_version(),
        "packages": versions,
        "commit": _commit(),
    }


def key(machine: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two runs comparable: the same hardware and versions."""
    return (machine["cpu"], machine["cores"], machine["ram_gb"], machine["python"],
            tuple(sorted(machine["packages"].items())))


def load() -> float:
    """The one-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def text(machine: dict[str, Any]) -> str:
    """One paragraph for docs/benchmarks.md."""
    versions = ", ".join(f"{name} {v}" for name, v in machine["packages"].items())
    return (f"{machine['cpu']} ({machine['arch']}), {machine['cores']} logical cores "
            f"({machine['physical_cores']} physical), {machine['ram_gb']:g} GiB RAM; "
            f"{machine['os']}; Python {machine['python']}; {versions}; Stockade at commit "
            f"{machine['commit']}")
