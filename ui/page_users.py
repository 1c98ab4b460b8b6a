"""Users & budgets: create, edit, reset, disable users; ε/δ budgets and dataset caps."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from gateway.errors import InputError
from ui.common import dataset_names, eps, frame, header, parse_attributes, policy_roles
from ui.session import act, done, load, shown_errors, whoami

USER_COLUMNS = ["name", "role", "attributes", "disabled", "created_at", "updated_at"]


def render() -> None:
    header("Users & budgets", "Who may log in, with which role and attributes, and how much "
                              "privacy budget each analyst has.")
    users: list[dict[str, Any]] = load("stockade.users.list")
    roles = policy_roles()
    st.dataframe(frame(users, USER_COLUMNS), hide_index=True)
    left, right = st.columns(2, gap="large")
    with left:
        _create_form(roles)
    with right:
        _edit_forms(users, roles)
    st.divider()
    _budgets(users)


# ---------------------------------------------------------------- users


def _create_form(roles: list[str]) -> None:
    st.subheader("Create a user")
    with st.form("create_user", clear_on_submit=False):
        name = st.text_input("Name", key="create_name")
        role = st.selectbox("Role", roles, key="create_role")
        password = st.text_input("Password", type="password", key="create_password",
                                 help="8 to 1024 characters; tell the user through a safe channel")
        attributes = st.text_area("Attributes (JSON)", value="{}", key="create_attributes",
                                  help='Values the policy uses, e.g. {"site": "north"}')
        submitted = st.form_submit_button("Create user", type="primary", key="create_submit")
    if submitted:
        with shown_errors():
            body = {"name": name.strip(), "role": role, "password": password,
                    "attributes": parse_attributes(attributes)}
            if not body["name"]:
                raise InputError("Give the new user a name.")
            created = act("stockade.users.create", body)
            done(f"User '{created['name']}' created with the role '{created['role']}'.")


def _edit_forms(users: list[dict[str, Any]], roles: list[str]) -> None:
    st.subheader("Change a user")
    if not users:
        st.info("No users yet.")
        return
    names = [u["name"] for u in users]
    name = st.selectbox("User", names, key="edit_user")
    user = next(u for u in users if u["name"] == name)
    me = str(whoami().get("user", "")).lower() == str(name).lower()
    with st.form(f"edit_{name}"):
        role_options = roles if user["role"] in roles else [user["role"], *roles]
        role = st.selectbox("Role", role_options, index=role_options.index(user["role"]),
                            key=f"edit_role_{name}")
        attributes = st.text_area("Attributes (JSON)", key=f"edit_attributes_{name}",
                                  value=json.dumps(user["attributes"], ensure_ascii=False))
        saved = st.form_submit_button("Save changes", key="edit_submit")
    if saved:
        with shown_errors():
            changes: dict[str, Any] = {}
            new_attributes = parse_attributes(attributes)
            if role != user["role"]:
                changes["role"] = role
            if new_attributes != user["attributes"]:
                changes["attributes"] = new_attributes
            if not changes:
                raise InputError(f"Nothing to change: '{name}' already has this role and "
                                 "these attributes.")
            act("stockade.users.update", {"name": name, **changes})
            done(f"User '{name}' updated: {', '.join(sorted(changes))} changed.")
    disabled = bool(user["disabled"])
    label = "Enable user" if disabled else "Disable user"
    if st.button(label, key="toggle_disabled", disabled=me and not disabled,
                 help="You cannot disable yourself." if me else
                 "A disabled user cannot log in; their sessions end now."):
        with shown_errors():
            act("stockade.users.update", {"name": name, "disabled": not disabled})
            done(f"User '{name}' {'enabled' if disabled else 'disabled'}.")
    with st.form(f"password_{name}", clear_on_submit=True):
        st.markdown(f"**Reset {name}'s password**")
        new = st.text_input("New password", type="password", key="reset_password")
        again = st.text_input("Repeat it", type="password", key="reset_password_again")
        reset = st.form_submit_button("Reset password", key="reset_submit")
    if reset:
        with shown_errors():
            if new != again:
                raise InputError("The two passwords differ; type the same one twice.")
            act("stockade.users.reset_password", {"name": name, "password": new})
            done(f"Password of '{name}' reset; their sessions have ended.")


# ---------------------------------------------------------------- budgets


def _budgets(users: list[dict[str, Any]]) -> None:
    st.header("Budgets")
    balances: list[dict[str, Any]] = load("stockade.budget.list")
    datasets = dataset_names()
    if not balances:
        st.info("No user reads a dataset in dp mode yet.")
    for b in balances:
        allowance = float(b.get("epsilon_allowance") or 0.0)
        spent = float(b.get("epsilon_spent") or 0.0)
        share = min(spent / allowance, 1.0) if allowance > 0 else (1.0 if spent else 0.0)
        cap = ""
        if b.get("cap_epsilon") is not None:
            cap = f" · dataset cap ε {eps(b['cap_epsilon'])}"
        st.progress(share, text=(
            f"**{b['user']}** · {b['dataset']}: ε {eps(spent)} spent of {eps(allowance)}, "
            f"{eps(b.get('epsilon_remaining'))} left · δ {eps(b.get('delta_spent'))} of "
            f"{eps(b.get('delta_allowance'))}{cap}"))
    left, right = st.columns(2, gap="large")
    with left:
        _budget_form(users, datasets)
    with right:
        _cap_form(datasets)


def _budget_form(users: list[dict[str, Any]], datasets: list[str]) -> None:
    st.subheader("Give budget")
    with st.form("budget"):
        user = st.selectbox("User", [u["name"] for u in users], key="budget_user")
        dataset = st.selectbox("Dataset", datasets, key="budget_dataset")
        how = st.radio("How", ["Add to the allowance", "Set the total allowance"],
                       key="budget_how", horizontal=True)
        epsilon = st.number_input("ε", min_value=0.0, value=None, step=0.5, format="%.4f",
                                  key="budget_epsilon")
        delta = st.number_input("δ (optional)", min_value=0.0, max_value=0.999999, value=None,
                                format="%.2e", key="budget_delta")
        submitted = st.form_submit_button("Save budget", type="primary", key="budget_submit")
    if submitted:
        with shown_errors():
            if epsilon is None:
                raise InputError("Give an amount of ε.")
            body: dict[str, Any] = {"user": user, "dataset": dataset, "epsilon": epsilon}
            if delta is not None:
                body["delta"] = delta
            add = how.startswith("Add")
            balance = act("stockade.budget.add" if add else "stockade.budget.set", body)
            note = f" {balance['note']}" if balance.get("note") else ""
            done(f"Budget of '{user}' on '{dataset}': ε allowance now "
                 f"{eps(balance['epsilon_allowance'])}, {eps(balance['epsilon_remaining'])} "
                 f"left.{note}")


def _cap_form(datasets: list[str]) -> None:
    st.subheader("Dataset cap")
    st.caption("The most ε/δ all users together may spend on a dataset. Leave ε empty to "
               "remove the cap. Left empty, δ keeps the current cap's δ (else the policy's, "
               "else δ is not capped).")
    with st.form("cap"):
        dataset = st.selectbox("Dataset", datasets, key="cap_dataset")
        epsilon = st.number_input("Cap ε", min_value=0.0, value=None, step=1.0, format="%.4f",
                                  key="cap_epsilon")
        delta = st.number_input("Cap δ (optional)", min_value=0.0, max_value=0.999999,
                                value=None, format="%.2e", key="cap_delta")
        submitted = st.form_submit_button("Save cap", key="cap_submit")
    if submitted:
        with shown_errors():
            body: dict[str, Any] = {"dataset": dataset, "epsilon": epsilon}
            if delta is not None:
                body["delta"] = delta
            cap = act("stockade.budget.cap", body)
            if cap.get("cap_epsilon") is None:
                done(f"Cap on '{dataset}' removed.")
            else:
                done(f"Cap on '{dataset}': ε {eps(cap['cap_epsilon'])} "
                     f"({eps(cap.get('spent_epsilon'))} spent so far).")


if __name__ == "__main__":
    render()
