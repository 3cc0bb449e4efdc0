"""Who may use the app: anyone on this machine; from other machines only with the access token.

A server bound to a loopback address is reachable from this machine alone and needs nothing. Bound
to any other address (``--server.address 0.0.0.0``), it serves only browser sessions that present
``$LENSLAB_ACCESS_TOKEN`` (in the link as ``?token=...`` or typed once); without a configured token
it refuses to serve at all. Path fields are off on such a server (see :mod:`lenslab.app.userfiles`).
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

from lenslab.app import userfiles

TOKEN_ENV = "LENSLAB_ACCESS_TOKEN"
TOKEN_PARAM = "token"


def configured_token() -> str:
    """The access token the operator set (empty: none)."""
    return os.environ.get(TOKEN_ENV, "").strip()


def token_matches(offered: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


def require_access() -> None:
    """Stop the script unless this browser session may use the app (see the module docstring)."""
    if userfiles.path_fields_enabled():  # loopback: this machine only
        return
    ss = st.session_state
    if ss.get("_access_granted"):
        return
    expected = configured_token()
    if not expected:
        st.error(
            f"This server listens on {userfiles.bound_address() or 'every interface'}, which other machines "
            f"can reach, and no access token is configured: set {TOKEN_ENV} and restart it."
        )
        st.stop()
    offered = st.query_params.get(TOKEN_PARAM, "")
    if offered and token_matches(offered, expected):
        ss["_access_granted"] = True
        del st.query_params[TOKEN_PARAM]  # keep the token out of copied links
        return
    with st.form("access"):
        typed = st.text_input("Access token", type="password")
        submitted = st.form_submit_button("Enter")
    if submitted and token_matches(typed, expected):
        ss["_access_granted"] = True
        st.rerun()
    if submitted:
        st.error("Wrong access token.")
    st.stop()
