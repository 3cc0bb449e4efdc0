"""App-test helpers: open one page on a tiny random model with an isolated LENSLAB_HOME."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.models.tiny import tiny_session


@pytest.fixture
def open_page(monkeypatch, lenslab_home) -> Callable[..., AppTest]:
    """``open_page("sae_features")``: the page rendered once on tiny Gemma, with no exception."""

    def open_(view: str, timeout: float = 300) -> AppTest:
        session = tiny_session("gemma3")
        monkeypatch.setattr("lenslab.app.state.session", lambda: session)
        script = f"from lenslab.app.views import {view} as page\npage.render()\n"
        at = AppTest.from_string(script, default_timeout=timeout).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_


@pytest.fixture(autouse=True)
def _served_on_loopback(monkeypatch):
    """AppTest has no server: behave as the repo's config does (bound to localhost) from any folder."""
    monkeypatch.setattr("lenslab.app.userfiles.bound_address", lambda: "localhost")
