"""Audit: the hash-chained log of queries, failed logins and admin actions.

Filters go to ``stockade.audit.query`` (newest first, one page at a time); the
CSV comes from ``stockade.audit.export`` with the same filters; the chain's
state from ``stockade.audit.verify``, checked each time the page is drawn.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from gateway.errors import InputError
from ui.common import header
from ui.session import act, load, shown_errors

KINDS = ("query", "login_failure", "admin")
ANY = "(any)"
REFUSED = {ANY: None, "refused only": True, "answered only": False}
PAGE_SIZES = (10, 25, 100, 500, 1000)
FILTERS_KEY = "audit_applied_filters"
PAGES_KEY = "audit_pages"  # the before_id of each page shown so far (None: the newest)
EXPORT_KEY = "audit_export"
COLUMNS = ["id", "time", "kind", "user", "outcome", "what", "tables", "epsilon", "rows",
           "duration_ms"]


def render() -> None:
    header("Audit", "Every query, failed login and admin action, each record chained to the "
                    "one before it by its hash.")
    _verification()
    filters = _filter_form()
    pages: list[int | None] = st.session_state.setdefault(PAGES_KEY, [None])
    before_id = pages[-1]
    body = dict(filters)
    if before_id is not None:
        body["before_id"] = before_id
    result = load("stockade.audit.query", body)
    records: list[dict[str, Any]] = result["records"]
    first = len(pages)
    st.caption(f"Page {first}: {len(records)} record(s)"
               + (f", ids {records[-1]['id']}–{records[0]['id']}" if records else ""))
    st.dataframe(records_frame(records), hide_index=True,
                 height=min(36 + 35 * max(len(records), 1), 560),
                 column_config={
                     "id": st.column_config.NumberColumn(width="small"),
                     "what": st.column_config.TextColumn(width="large"),
                     "epsilon": st.column_config.NumberColumn("ε", format="%.4g"),
                 })
    newer, older, _ = st.columns([1, 1, 6])
    with newer:
        if st.button("← Newer", key="audit_newer", disabled=len(pages) == 1):
            pages.pop()
            st.rerun()
    with older:
        if st.button("Older →", key="audit_older", disabled=result["next_before_id"] is None):
            pages.append(result["next_before_id"])
            st.rerun()
    if records:
        with st.expander("Record details"):
            ids = [r["id"] for r in records]
            chosen = st.selectbox("Record", ids, key="audit_record")
            st.json(next(r for r in records if r["id"] == chosen))
    _export(filters)


def _verification() -> None:
    result = load("stockade.audit.verify")
    if result["ok"]:
        st.success(f"Audit chain intact: {result['records']:,} records verified.")
        return
    bad = result["first_bad_record"]
    st.error(f"Audit chain broken at record {bad}: {result['problem']}. Records from there on "
             "cannot be trusted; keep the database file for investigation.")
    shown = act("stockade.audit.query", {"before_id": bad + 1, "limit": 1})["records"]
    if shown and shown[0]["id"] == bad:
        with st.expander(f"Record {bad} as stored"):
            st.json(shown[0])


def _filter_form() -> dict[str, Any]:
    applied: dict[str, Any] = st.session_state.get(FILTERS_KEY, {"limit": PAGE_SIZES[2]})
    with st.form("audit_filters"):
        row = st.columns(4)
        user = row[0].text_input("User", key="audit_user")
        kind = row[1].selectbox("Kind", [ANY, *KINDS], key="audit_kind")
        refused = row[2].selectbox("Outcome", list(REFUSED), key="audit_refused")
        limit = row[3].selectbox("Per page", PAGE_SIZES, index=2, key="audit_limit")
        dates = st.columns([1, 1, 2])
        since = dates[0].date_input("Since", value=None, key="audit_since")
        until = dates[1].date_input("Until (inclusive)", value=None, key="audit_until")
        contains = dates[2].text_input("Contains (SQL, error, action…)", key="audit_contains")
        submitted = st.form_submit_button("Apply filters", type="primary", key="audit_apply")
    if submitted:
        with shown_errors():
            new = filters_body(user=user, kind=kind, refused=REFUSED[refused], limit=limit,
                               since=since, until=until, contains=contains)
            st.session_state[FILTERS_KEY] = applied = new
            st.session_state[PAGES_KEY] = [None]
            st.session_state.pop(EXPORT_KEY, None)
    return applied


def filters_body(*, user: str, kind: str, refused: bool | None, limit: int,
                 since: date | None, until: date | None, contains: str) -> dict[str, Any]:
    """The ``stockade.audit.query`` body for what the filter form says."""
    if since is not None and until is not None and since > until:
        raise InputError(f"'Since' ({since}) is after 'Until' ({until}); swap them.")
    body: dict[str, Any] = {"limit": int(limit)}
    if user.strip():
        body["user"] = user.strip()
    if kind != ANY:
        body["kind"] = kind
    if refused is not None:
        body["refused"] = refused
    if since is not None:
        body["since"] = since.isoformat()
    if until is not None:
        body["until"] = until.isoformat()
    if contains.strip():
        body["contains"] = contains.strip()
    return body


def _outcome(record: dict[str, Any]) -> str:
    if record["kind"] == "login_failure":
        return f"refused ({record.get('reason')})"
    if record["kind"] == "admin" and record.get("ok") is False:
        return "refused"
    return "refused" if record.get("error") else "ok"


def _what(record: dict[str, Any]) -> str:
    if record["kind"] == "query":
        text = str(record.get("sql") or "")
    elif record["kind"] == "admin":
        text = f"{record.get('action')} {json.dumps(record.get('body') or {}, ensure_ascii=False)}"
    else:
        text = str(record.get("reason") or "")
    if record.get("error"):
        text += f"  — {record['error']}"
    return " ".join(text.split())


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record, the columns people scan; the rest is in "Record details"."""
    rows = []
    for r in records:
        tables = ", ".join(f"{t['dataset']}.{t['table']}:{t['mode']}"
                           for t in r.get("tables") or [])
        rows.append({"id": r["id"], "time": r["time"], "kind": r["kind"], "user": r["user"],
                     "outcome": _outcome(r), "what": _what(r), "tables": tables,
                     "epsilon": r.get("epsilon") or None, "rows": r.get("rows"),
                     "duration_ms": r.get("duration_ms")})
    return pd.DataFrame(rows, columns=COLUMNS)


def _export(filters: dict[str, Any]) -> None:
    st.subheader("Export")
    body = {k: v for k, v in filters.items() if k != "limit"}
    fmt = st.radio("Format", ["csv", "jsonl"], horizontal=True, key="audit_export_format")
    if st.button("Prepare export", key="audit_export_prepare",
                 help="Every record the filters match, oldest first (up to 100,000)."):
        with shown_errors():
            exported = act("stockade.audit.export", {**body, "format": fmt})
            st.session_state[EXPORT_KEY] = (json.dumps(filters, sort_keys=True), exported)
    prepared = st.session_state.get(EXPORT_KEY)
    if prepared is None or prepared[0] != json.dumps(filters, sort_keys=True):
        return
    exported = prepared[1]
    more = (" (more records match: narrow the filters for the rest)"
            if exported.get("next_before_id") else "")
    st.caption(f"{exported['records']:,} record(s) in the export{more}.")
    mime = "text/csv" if exported["format"] == "csv" else "application/x-ndjson"
    st.download_button(f"Download {exported['format'].upper()}", exported["content"],
                       file_name=f"stockade-audit.{exported['format']}", mime=mime,
                       key="audit_download", on_click="ignore")


if __name__ == "__main__":
    render()
