"""One browser session of the console: logging in, the gateway connection, messages.

The console keeps a logged-in :class:`gateway.remote.GatewayClient` in
``st.session_state`` and does everything through the gateway's actions
(``docs/api.md``); it never opens the state store or the policy file. Only
owners (a role with ``admin: true`` in the policy) may use it.

Pages call :func:`act` for an action and wrap what a form does in
:func:`shown_errors`, which shows the gateway's message (or the console's own,
for input it can check itself) with ``st.error`` and stops that form there, so a
refused change changes nothing. A change that worked is reported with
:func:`flash` and a rerun, so the page is redrawn from the gateway's new state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from gateway.errors import AuthenticationError, InputError, PermissionDeniedError, StockadeError
from gateway.remote import GatewayClient

CLIENT_KEY = "stockade_client"
NETWORK_CLIENT_KEY = "stockade_network_client"
WHOAMI_KEY = "stockade_whoami"
FLASH_KEY = "stockade_flash"
NOTICE_KEY = "stockade_notice"
DEFAULT_GATEWAY = "grpc://127.0.0.1:8815"


# ---------------------------------------------------------------- where the gateway is


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def gateway_url(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> str:
    """The gateway to log in to: ``-- --gateway URL`` after ``streamlit run ui/app.py``,
    else ``STOCKADE_GATEWAY``, else the local default."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    return _flag(argv, "--gateway") or env.get("STOCKADE_GATEWAY") or DEFAULT_GATEWAY


def network_url(argv: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> str | None:
    """The network node whose domains' health the Network page shows (``--network URL``
    or ``STOCKADE_NETWORK``), if any."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    return _flag(argv, "--network") or env.get("STOCKADE_NETWORK") or None


def tls_ca(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The CA file to trust for a ``grpc+tls://`` gateway (``--tls-ca`` or
    ``STOCKADE_TLS_CA``), if any."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    return _flag(argv, "--tls-ca") or env.get("STOCKADE_TLS_CA") or None


# ---------------------------------------------------------------- logging in and out


def login(url: str, user: str, password: str) -> dict[str, Any]:
    """Log in to ``url`` as an owner and keep the connection; the ``whoami`` answer.

    Raises a :class:`StockadeError` with a message for the person at the
    keyboard: bad URL, gateway down, wrong password, or not an owner.
    """
    url, user = url.strip(), user.strip()
    if not url:
        raise InputError(f"Give the gateway's URL, e.g. {DEFAULT_GATEWAY}.")
    if not user or not password:
        raise InputError("Give your user name and password.")
    client = GatewayClient(url, user, password, tls_root_certs=_root_certs(url))
    try:
        who = client.action("stockade.whoami")
    except StockadeError:
        client.close()
        raise
    if not who.get("admin"):
        client.close()
        raise PermissionDeniedError(
            f"This console is for data owners: '{who.get('user')}' has the role "
            f"'{who.get('role')}', which is not an admin role of this domain's policy. "
            "Analysts use the Python client or the `stockade` command instead."
        )
    st.session_state[CLIENT_KEY] = client
    st.session_state[WHOAMI_KEY] = who
    return dict(who)


def _root_certs(url: str) -> bytes | None:
    """The CA of ``--tls-ca`` for a ``grpc+tls://`` URL, else None."""
    ca = tls_ca()
    if not ca or not url.startswith("grpc+tls://"):
        return None
    try:
        return Path(ca).read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read the TLS CA file {ca}: {exc.strerror}.") from None


def network_login(url: str, user: str, password: str) -> GatewayClient:
    """Log in to the network node at ``url`` (it needs a login of its own) and keep it."""
    user = user.strip()
    if not user or not password:
        raise InputError("Give your user name and password for the network.")
    client = GatewayClient(url, user, password, tls_root_certs=_root_certs(url), kind="network")
    st.session_state[NETWORK_CLIENT_KEY] = client
    return client


def network_logout() -> None:
    client = st.session_state.pop(NETWORK_CLIENT_KEY, None)
    if client is not None:
        client.close()


def logged_in() -> bool:
    return st.session_state.get(CLIENT_KEY) is not None


def logout(notice: str | None = None) -> None:
    """Forget the connection (and everything else of this session)."""
    client = st.session_state.get(CLIENT_KEY)
    if client is not None:
        client.close()
    network_logout()
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if notice:
        st.session_state[NOTICE_KEY] = notice


def whoami() -> dict[str, Any]:
    return dict(st.session_state.get(WHOAMI_KEY) or {})


def login_page() -> None:
    """The first screen: the gateway, a user name and a password."""
    st.title("Stockade console")
    st.caption("For data owners. Log in with a user whose role is an admin role "
               "(`admin: true`) in the domain's policy.")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.warning(notice)
    url = gateway_url()
    with st.form("login"):
        # Fixed by whoever started the console: a browser cannot point it at other hosts.
        st.text_input("Gateway", value=url, key="login_url", disabled=True,
                      help="Set with `stockade console --gateway URL`.")
        user = st.text_input("User", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
    if submitted:
        with shown_errors():
            login(url, user, password)
            st.rerun()


def sidebar() -> None:
    """Who is logged in where, and the way out."""
    who = whoami()
    client = st.session_state.get(CLIENT_KEY)
    with st.sidebar:
        st.markdown(f"**{who.get('user', '?')}** ({who.get('role', '?')})")
        if client is not None:
            st.caption(client.url)
        if st.button("Log out", key="logout"):
            logout()
            st.rerun()


# ---------------------------------------------------------------- actions and messages


def act(name: str, body: Mapping[str, Any] | None = None) -> Any:
    """Run the gateway action ``name``; its JSON result.

    Raises the gateway's error. A session the gateway no longer accepts
    (token expired, password reset) goes back to the login screen.
    """
    client = st.session_state.get(CLIENT_KEY)
    if client is None:
        raise AuthenticationError("You are not logged in.")
    try:
        return client.action(name, dict(body or {}))
    except AuthenticationError:
        logout("The gateway ended your session (it expired, or your password was reset); "
               "log in again.")
        st.rerun()


def load(name: str, body: Mapping[str, Any] | None = None) -> Any:
    """:func:`act` for what a page shows: on an error, say so and stop the page."""
    try:
        return act(name, body)
    except StockadeError as exc:
        st.error(f"{exc}")
        st.stop()


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a refused action (or bad input) with ``st.error`` and go on with the page."""
    try:
        yield
    except StockadeError as exc:
        st.error(str(exc))


def flash(message: str, kind: str = "success") -> None:
    """A message to show at the top of the page after the next rerun."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop(FLASH_KEY, []):
        {"success": st.success, "warning": st.warning, "info": st.info,
         "error": st.error}.get(kind, st.info)(message)


def done(message: str) -> None:
    """A change worked: say so, and redraw the page from the gateway's new state."""
    flash(message)
    st.rerun()
