"""Network: the health of every domain of the network node this domain belongs to.

Shown when the console is started with ``--network grpc://HOST:PORT`` (or
``STOCKADE_NETWORK``). The network answers only logged-in callers, and it checks
a login at its domains: the page asks for a user name and password of its own
(an account of this domain will do; the network sends them to its domains) and
keeps that login for the browser session.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from gateway.cli_network import fetch_status
from gateway.errors import AuthenticationError, StockadeError
from ui.common import header
from ui.session import NETWORK_CLIENT_KEY, network_login, network_logout, network_url, whoami


def render() -> None:
    header("Network", "The network node's domains and their health, as the network polls them.")
    url = network_url()
    if url is None:
        st.info("No network node is configured: start the console with "
                "`stockade console --gateway URL --network grpc://HOST:PORT`.")
        return
    client = st.session_state.get(NETWORK_CLIENT_KEY)
    if client is None:
        _login_form(url)
        return
    try:
        status: dict[str, Any] = fetch_status(client)
    except AuthenticationError:
        network_logout()
        st.warning("The network ended your session (it expired, or your password changed); "
                   "log in again.")
        _login_form(url)
        return
    except StockadeError as exc:
        st.error(str(exc))
        return
    domains = status.get("domains", [])
    up = sum(1 for d in domains if d.get("state") == "up")
    st.subheader(f"{status.get('network')} · {up} of {len(domains)} domains up")
    if status.get("description"):
        st.caption(status["description"])
    now = time.time()
    rows = [{
        "domain": d["name"], "state": d.get("state"), "url": d.get("url"),
        "latency ms": d.get("latency_ms"),
        "checked s ago": None if d.get("checked_at") is None
        else round(now - d["checked_at"], 1),
        "timeout s": d.get("timeout_s"), "error": d.get("error") or "",
    } for d in domains]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    for d in domains:
        if d.get("state") != "up":
            st.warning(f"Domain '{d['name']}' is {d.get('state')}: {d.get('error') or 'no answer'}")
    st.caption(f"Logged in to the network at {url} as {client.user}.")
    if st.button("Log out of the network", key="network_logout"):
        network_logout()
        st.rerun()


def _login_form(url: str) -> None:
    st.write(f"The network node at {url} answers logged-in users only. Log in with an account "
             "it can check at its domains (it sends the user name and password to them).")
    with st.form("network_login"):
        user = st.text_input("User", value=str(whoami().get("user") or ""), key="network_user")
        password = st.text_input("Password", type="password", key="network_password")
        submitted = st.form_submit_button("Log in to the network", key="network_submit")
    if submitted:
        try:
            network_login(url, user, password)
        except StockadeError as exc:
            st.error(str(exc))
            return
        st.rerun()


if __name__ == "__main__":
    render()
