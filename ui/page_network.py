"""Network: the health of every domain of the network node this domain belongs to.

Shown when the console is started with ``--network grpc://HOST:PORT`` (or
``STOCKADE_NETWORK``); the network's ``stockade.network.status`` needs no login.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from gateway.cli_network import fetch_status
from gateway.errors import StockadeError
from ui.common import header
from ui.session import network_url, tls_ca


def render() -> None:
    header("Network", "The network node's domains and their health, as the network polls them.")
    url = network_url()
    if url is None:
        st.info("No network node is configured: start the console with "
                "`stockade console --gateway URL --network grpc://HOST:PORT`.")
        return
    try:
        status: dict[str, Any] = fetch_status(url, tls_ca())
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


if __name__ == "__main__":
    render()
