"""Policy: edit the YAML, validate it, see the diff, dry-run queries, apply, versions.

The editor starts from the live policy. *Validate* runs the gateway's checks
(``stockade.policy.validate``: line numbers, every filter and mask bound over the
real sources) and shows the diff against the live version. *Apply* validates
again and asks for confirmation; the confirmed text is sent with the version it
was based on (``expected_version``), so an edit made on top of a policy someone
else has changed since is refused rather than silently overwriting theirs.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from gateway.errors import InputError
from ui.common import eps, frame, header
from ui.session import act, done, load, shown_errors

EDITOR_KEY = "policy_editor"
BASE_KEY = "policy_base"  # {"version", "sha256"} the editor's text started from
RELOAD_KEY = "policy_reload"  # a version to load into the editor on the next run
PENDING_KEY = "policy_pending"  # the validated text waiting for confirmation
VALIDATION_KEY = "policy_validation"  # (text, result) of the last Validate
DRY_RUN_KEY = "policy_dry_run"  # the last dry run's result
VERSION_COLUMNS = ["version", "live", "created_at", "created_by", "comment", "sha256"]


def render() -> None:
    header("Policy", "Change who may see what. Nothing changes until you apply; queries "
                     "already running finish under the policy they started with.")
    live: dict[str, Any] = load("stockade.policy.get")
    _load_editor(live)
    base = st.session_state[BASE_KEY]
    if base["version"] != live["version"]:
        st.warning(f"The live policy is now version {live['version']}; the editor holds "
                   f"version {base['version']} with your edits. Reload it to start from the "
                   "live version (applying now would be refused).")
    st.caption(f"Live: version {live['version']} by {live['created_by']}, {live['created_at']}"
               + (f" — {live['comment']}" if live.get("comment") else ""))
    editor, side = st.columns([3, 2], gap="large")
    with editor:
        text = st.text_area("Policy YAML", key=EDITOR_KEY, height=520)
        buttons = st.columns(3)
        validate = buttons[0].button("Validate", key="policy_validate")
        apply = buttons[1].button("Apply…", key="policy_apply", type="primary")
        if buttons[2].button("Reload live version", key="policy_reload_button"):
            _reload(live["version"])
        if validate:
            with shown_errors():
                st.session_state[VALIDATION_KEY] = (text, _validate(text))
        validated = st.session_state.get(VALIDATION_KEY)
        if validated is not None and validated[0] == text and PENDING_KEY not in st.session_state:
            show_validation(validated[1])
        if apply:
            with shown_errors():
                _ask_to_apply(text)
        _confirm(text, base)
    with side:
        _dry_run(text)
    st.divider()
    _versions(live)


def _load_editor(live: dict[str, Any]) -> None:
    """Fill the editor from the live version (first visit) or the one asked for."""
    wanted = st.session_state.pop(RELOAD_KEY, None)
    if wanted is None and EDITOR_KEY in st.session_state and BASE_KEY in st.session_state:
        return
    source = live if wanted in (None, live["version"]) else act(
        "stockade.policy.get", {"version": wanted})
    st.session_state[EDITOR_KEY] = source["yaml"]
    # Edits start from the live version even when an older text is loaded (a rollback).
    st.session_state[BASE_KEY] = {"version": live["version"], "sha256": live["sha256"]}
    st.session_state.pop(PENDING_KEY, None)
    st.session_state.pop(VALIDATION_KEY, None)


def _reload(version: int) -> None:
    st.session_state[RELOAD_KEY] = version
    st.rerun()


def _validate(text: str) -> dict[str, Any]:
    if not text.strip():
        raise InputError("The policy is empty; write or reload one.")
    result: dict[str, Any] = act("stockade.policy.validate", {"yaml": text})
    return result


def show_validation(result: dict[str, Any]) -> None:
    """Errors with their line numbers, warnings, the changes and the diff."""
    if result["ok"]:
        st.success("The policy is valid." + (
            "" if result.get("diff") else " It is the same as the live version."))
    else:
        lines = [f"- {_where(e)}{e['message']}" for e in result.get("errors", [])]
        st.error("The policy has errors:\n" + "\n".join(lines))
    for warning in result.get("warnings", []):
        st.warning(warning)
    if result.get("changes"):
        st.markdown("**Changes against the live version**\n"
                    + "\n".join(f"- {c}" for c in result["changes"]))
    if result.get("diff"):
        st.code(result["diff"], language="diff", wrap_lines=True)


def _where(error: dict[str, Any]) -> str:
    parts = []
    if error.get("line") is not None:
        parts.append(f"line {error['line']}")
    if error.get("path"):
        parts.append(f"`{error['path']}`")
    return (", ".join(parts) + ": ") if parts else ""


def _ask_to_apply(text: str) -> None:
    result = _validate(text)
    if not result["ok"]:
        show_validation(result)
        return
    if not result.get("diff"):
        st.info("Nothing to apply: the editor holds the live policy.")
        return
    st.session_state[PENDING_KEY] = {"yaml": text, "validation": result}


def _confirm(text: str, base: dict[str, Any]) -> None:
    pending = st.session_state.get(PENDING_KEY)
    if pending is None:
        return
    if pending["yaml"] != text:
        st.session_state.pop(PENDING_KEY, None)
        st.info("The policy changed since you asked to apply it; press Apply… again.")
        return
    with st.container(border=True, key="policy_confirm_box"):
        st.markdown(f"**Apply this policy as the new live version (now {base['version']})?**")
        show_validation(pending["validation"])
        comment = st.text_input("Comment (kept with the version)", key="policy_comment")
        yes, no, _ = st.columns([1, 1, 4])
        confirmed = yes.button("Confirm apply", type="primary", key="policy_confirm")
        cancelled = no.button("Cancel", key="policy_cancel")
    if cancelled:
        st.session_state.pop(PENDING_KEY, None)
        st.rerun()
    if confirmed:
        with shown_errors():
            body: dict[str, Any] = {"yaml": pending["yaml"],
                                    "expected_version": base["version"]}
            if comment.strip():
                body["comment"] = comment.strip()
            applied = act("stockade.policy.replace", body)
            st.session_state.pop(PENDING_KEY, None)
            st.session_state[RELOAD_KEY] = applied["version"]
            done(f"Policy version {applied['version']} applied (was "
                 f"{applied['previous_version']}); every new query uses it.")


def _dry_run(text: str) -> None:
    st.subheader("Dry run")
    st.caption("What a query becomes for a user: nothing is run or charged.")
    users = [u["name"] for u in load("stockade.users.list")]
    with st.form("dry_run"):
        user = st.selectbox("As user", users, key="dry_user")
        query = st.text_area("Query", key="dry_query", height=120,
                             placeholder="SELECT count(*) FROM oncology.screenings")
        use_editor = st.checkbox("Use the policy in the editor (not yet applied)",
                                 key="dry_use_editor")
        epsilon = st.number_input("ε per query (dp; empty: the grant's)", min_value=0.0,
                                  value=None, format="%.4f", key="dry_epsilon")
        submitted = st.form_submit_button("Dry run", key="dry_submit")
    if submitted:
        st.session_state.pop(DRY_RUN_KEY, None)
        with shown_errors():
            if not query.strip():
                raise InputError("Write the query to try.")
            body: dict[str, Any] = {"query": query, "user": user}
            if use_editor:
                body["yaml"] = text
            if epsilon is not None:
                body["epsilon"] = epsilon
            st.session_state[DRY_RUN_KEY] = act("stockade.policy.dry_run", body)
    if DRY_RUN_KEY in st.session_state:
        show_dry_run(st.session_state[DRY_RUN_KEY])


def show_dry_run(result: dict[str, Any]) -> None:
    if result["decision"] == "allowed":
        st.success(f"Allowed for {result['user']} ({result['role']}).")
    else:
        st.error(f"Refused for {result['user']} ({result['role']}): {result.get('error')}")
    if result.get("tables"):
        st.dataframe(frame(result["tables"], ["dataset", "table", "mode"]), hide_index=True)
    if result.get("epsilon") is not None:
        st.markdown(f"**Cost:** ε {eps(result['epsilon'], 4)} · δ {eps(result.get('delta'), 4)}"
                    f" · ε left now {eps(result.get('remaining_epsilon'), 4)}"
                    + (" · answered before (the cached answer costs nothing)"
                       if result.get("answered_before") else ""))
    relation = result.get("relation_sql")
    if relation or result.get("rewritten_sql"):
        st.markdown("**Rewritten SQL**")
        st.code(relation or result["rewritten_sql"], language="sql", wrap_lines=True)
    if relation and result.get("rewritten_sql"):
        st.markdown("**Aggregate query** (the noisy measurements, over the rewritten SQL "
                    "as `dp.rel`)")
        st.code(result["rewritten_sql"], language="sql", wrap_lines=True)


def _versions(live: dict[str, Any]) -> None:
    st.subheader("Versions")
    versions: list[dict[str, Any]] = load("stockade.policy.versions")
    st.dataframe(frame(versions, VERSION_COLUMNS), hide_index=True)
    older = [v["version"] for v in versions if v["version"] != live["version"]]
    if not older:
        return
    pick, load_col, _ = st.columns([1, 2, 3], vertical_alignment="bottom")
    version = pick.selectbox("Version", older, key="policy_version_pick")
    if load_col.button("Load into the editor", key="policy_load_version",
                       help="To roll back: load an older version, check it, apply it."):
        _reload(int(version))


if __name__ == "__main__":
    render()
