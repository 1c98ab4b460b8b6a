"""Overview: the domain's status, its datasets, queries per day, ε spent per user."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from ui.common import frame, header
from ui.session import load

STATS_DAYS = 30


def _uptime(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def render() -> None:
    status: dict[str, Any] = load("stockade.status")
    stats: dict[str, Any] = load("stockade.audit.stats", {"days": STATS_DAYS})
    header(f"{status['domain']}", status.get("description") or None)
    queries = status.get("queries", {})
    row = st.columns(4)
    row[0].metric("Policy version", status["policy_version"])
    row[1].metric("Up for", _uptime(float(status.get("uptime_s", 0))),
                  help=f"Started {status.get('started_at')}; Stockade {status.get('version')}")
    row[2].metric("Users", status.get("users", 0))
    row[3].metric("Pending requests", status.get("pending_requests", 0))
    row = st.columns(4)
    row[0].metric("Queries", queries.get("total", 0))
    row[1].metric("Refused", queries.get("refused", 0))
    row[2].metric("Last 24 h", queries.get("last_24h", 0))
    row[3].metric("Audit records", status.get("audit_records", 0))

    st.subheader("Datasets")
    datasets = []
    for d in status.get("datasets", []):
        tables = d.get("tables", [])
        datasets.append({"dataset": d["dataset"], "description": d.get("description"),
                         "tags": ", ".join(d.get("tags") or []),
                         "tables": ", ".join(t["table"] for t in tables),
                         "rows": sum(int(t.get("rows") or 0) for t in tables)})
    st.dataframe(frame(datasets, ["dataset", "description", "tags", "tables", "rows"]),
                 hide_index=True)

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader(f"Queries per day (last {STATS_DAYS} days)")
        per_day = stats.get("queries_per_day", [])
        if any(day["queries"] for day in per_day):
            st.altair_chart(queries_chart(per_day))
        else:
            st.info(f"No queries in the last {STATS_DAYS} days.")
    with right:
        st.subheader("ε spent per user and dataset")
        spent = [e for e in stats.get("epsilon_by_user", []) if e.get("epsilon")]
        if spent:
            st.altair_chart(epsilon_chart(spent))
            st.dataframe(frame(spent, ["user", "dataset", "epsilon", "delta", "queries"]),
                         hide_index=True)
        else:
            st.info("No ε spent yet.")


def queries_chart(per_day: list[dict[str, Any]]) -> alt.Chart:
    """Answered and refused queries per day, stacked."""
    rows = []
    for day in per_day:
        rows.append({"day": day["day"], "outcome": "answered",
                     "queries": day["queries"] - day["refused"]})
        rows.append({"day": day["day"], "outcome": "refused", "queries": day["refused"]})
    chart: alt.Chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("day:T", title=None, axis=alt.Axis(format="%d %b")),
        y=alt.Y("queries:Q", title="queries", stack="zero"),
        color=alt.Color("outcome:N", title=None,
                        scale=alt.Scale(domain=["answered", "refused"],
                                        range=["#4c78a8", "#e45756"])),
        tooltip=["day:T", "outcome:N", "queries:Q"],
    ).properties(height=280)
    return chart


def epsilon_chart(spent: list[dict[str, Any]]) -> alt.Chart:
    """ε spent per user, one colour per dataset."""
    chart: alt.Chart = alt.Chart(pd.DataFrame(spent)).mark_bar().encode(
        x=alt.X("user:N", title=None, sort="-y"),
        y=alt.Y("epsilon:Q", title="ε spent", stack="zero"),
        color=alt.Color("dataset:N", title="dataset"),
        tooltip=["user:N", "dataset:N", "epsilon:Q", "queries:Q"],
    ).properties(height=280)
    return chart


if __name__ == "__main__":
    render()
