"""Datasets: each table's source and row count, and its schema as each role sees it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import streamlit as st

from ui.common import header
from ui.session import load


def render() -> None:
    header("Datasets", "Tables as the policy declares them, and what each role sees of them: "
                       "hidden columns are absent, masked ones keep their name.")
    status: dict[str, Any] = load("stockade.status")
    grants: list[dict[str, Any]] = load("stockade.catalog.roles")
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for grant in grants:
        if grant.get("table") is not None:
            by_table[(grant["dataset"], grant["table"])].append(grant)
    for grant in grants:
        if grant.get("error"):
            st.warning(f"Role '{grant['role']}': {grant['error']}")
    for dataset in status.get("datasets", []):
        name = dataset["dataset"]
        st.header(name)
        caption = dataset.get("description") or ""
        if dataset.get("tags"):
            caption += "  ·  tags: " + ", ".join(dataset["tags"])
        if caption:
            st.caption(caption)
        for table in dataset.get("tables", []):
            _table(name, table, by_table.get((name, table["table"]), []))


def _table(dataset: str, table: dict[str, Any], grants: list[dict[str, Any]]) -> None:
    rows = table.get("rows")
    title = f"{dataset}.{table['table']}"
    with st.expander(f"**{title}** · {'?' if rows is None else f'{rows:,}'} rows · "
                     f"{table.get('columns', 0)} columns", expanded=True):
        if table.get("description"):
            st.markdown(table["description"])
        st.markdown(f"Source: `{table['source']}`")
        if not grants:
            st.caption("No role may read this table.")
            return
        st.markdown("Who sees what: " + ", ".join(
            f"**{g['role']}** ({g['mode']})" for g in grants))
        st.dataframe(schema_frame(grants), hide_index=True)


def schema_frame(grants: list[dict[str, Any]]) -> pd.DataFrame:
    """Columns × roles: each cell the column's type as that role sees it ("—": hidden)."""
    columns: list[str] = []
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for grant in grants:
        header_ = f"{grant['role']} ({grant['mode']})"
        for column in grant.get("columns", []):
            if column["name"] not in columns:
                columns.append(column["name"])
            cells[column["name"]][header_] = column["type"]
    headers = [f"{g['role']} ({g['mode']})" for g in grants]
    return pd.DataFrame([{"column": c, **{h: cells[c].get(h, "—") for h in headers}}
                         for c in columns], columns=["column", *headers])


if __name__ == "__main__":
    render()
