"""Requests: analysts' asks for budget or access, pending first; approve or deny them."""

from __future__ import annotations

from typing import Any

import streamlit as st

from gateway.errors import InputError
from ui.common import eps, frame, header
from ui.session import act, done, load, shown_errors

DECIDED_COLUMNS = ["id", "user", "kind", "dataset", "epsilon", "delta", "mode", "status",
                   "decided_by", "decision_reason", "decided_at", "reason", "created_at"]


def render() -> None:
    header("Requests", "What analysts asked for. Approving a budget request adds its ε/δ (or "
                       "the amount you grant) to the analyst's allowance at once; the analyst "
                       "sees the decision and its reason with stockade.my_requests.")
    requests: list[dict[str, Any]] = load("stockade.requests.list")
    pending = [r for r in requests if r["status"] == "pending"]
    decided = sorted((r for r in requests if r["status"] != "pending"),
                     key=lambda r: (r.get("decided_at") or "", r["id"]), reverse=True)
    st.subheader(f"Pending ({len(pending)})")
    if not pending:
        st.info("No pending requests.")
    for request in pending:
        _pending(request)
    st.subheader(f"Decided ({len(decided)})")
    if decided:
        st.dataframe(frame(decided, DECIDED_COLUMNS), hide_index=True)
    else:
        st.caption("No decisions yet.")


def _asks(request: dict[str, Any]) -> str:
    if request["kind"] == "budget":
        delta = f" and δ {eps(request['delta'])}" if request.get("delta") else ""
        return f"ε {eps(request['epsilon'])}{delta} more on **{request['dataset']}**"
    return f"**{request['mode']}** access to **{request['dataset']}**"


def _pending(request: dict[str, Any]) -> None:
    rid = request["id"]
    with st.container(border=True, key=f"request_{rid}"):
        st.markdown(f"**#{rid} · {request['user']}** asks for {_asks(request)}")
        st.caption(f"Filed {request['created_at']}")
        if request.get("dataset_in_policy") is False:  # the analyst is not told this
            st.warning(f"'{request['dataset']}' is not a dataset of the policy.")
        st.markdown(f"> {request['reason']}")
        with st.form(f"decide_{rid}"):
            epsilon = None
            if request["kind"] == "budget":
                epsilon = st.number_input("ε to grant", min_value=0.0,
                                          value=float(request["epsilon"]), step=0.5,
                                          format="%.4f", key=f"grant_{rid}",
                                          help="Change it to grant a different amount.")
            else:
                st.caption("Approving records the decision; grant the mode to the user's role "
                           "in the policy for the access to take effect.")
            reason = st.text_input("Reason (required to deny; shown to the analyst)",
                                   key=f"reason_{rid}")
            approve_col, deny_col, _ = st.columns([1, 1, 5])
            with approve_col:
                approve = st.form_submit_button("Approve", type="primary", key=f"approve_{rid}")
            with deny_col:
                deny = st.form_submit_button("Deny", key=f"deny_{rid}")
    if approve:
        with shown_errors():
            body: dict[str, Any] = {"id": rid}
            if epsilon is not None and abs(epsilon - float(request["epsilon"])) > 1e-12:
                body["epsilon"] = epsilon
            if reason.strip():
                body["reason"] = reason.strip()
            decided = act("stockade.requests.approve", body)
            message = f"Request #{rid} of '{decided['user']}' approved."
            if decided.get("budget"):
                b = decided["budget"]
                message += (f" Their ε allowance on '{b['dataset']}' is now "
                            f"{eps(b['epsilon_allowance'])} ({eps(b['epsilon_remaining'])} left).")
            if decided.get("note"):
                message += " " + decided["note"]
            done(message)
    if deny:
        with shown_errors():
            if not reason.strip():
                raise InputError("Give a reason to deny a request; the analyst will see it.")
            decided = act("stockade.requests.deny", {"id": rid, "reason": reason.strip()})
            done(f"Request #{rid} of '{decided['user']}' denied.")


if __name__ == "__main__":
    render()
