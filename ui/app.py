"""The Stockade console: the data owner's web pages over a running gateway.

Started by ``stockade console --gateway grpc://HOST:PORT`` (which runs
``streamlit run ui/app.py -- --gateway URL``). The first screen asks for an
owner's user name and password; then the pages below, each one module of
``ui/``, talk to the gateway through its actions only.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `streamlit run ui/app.py` from any directory
    sys.path.insert(0, str(HERE.parent))

import streamlit as st  # noqa: E402

from ui import session  # noqa: E402

PAGES = (
    ("page_overview.py", "Overview", ":material/dashboard:"),
    ("page_datasets.py", "Datasets", ":material/table_view:"),
    ("page_policy.py", "Policy", ":material/policy:"),
    ("page_users.py", "Users & budgets", ":material/group:"),
    ("page_requests.py", "Requests", ":material/inbox:"),
    ("page_audit.py", "Audit", ":material/fact_check:"),
    ("page_network.py", "Network", ":material/hub:"),
)


def main() -> None:
    st.set_page_config(page_title="Stockade console", page_icon=":material/shield:",
                       layout="wide")
    if session.logged_in():
        pages = [st.Page(HERE / file, title=title, icon=icon, default=i == 0)
                 for i, (file, title, icon) in enumerate(PAGES)]
        navigation = st.navigation(pages)
        session.sidebar()
    else:
        navigation = st.navigation(
            [st.Page(session.login_page, title="Log in", url_path="login",
                     icon=":material/login:")], position="hidden")
    navigation.run()


main()
