"""The state inspector page on a tiny model: a linked state opens every lens with its figures."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lenslab.models.tiny import tiny_session
from lenslab.probes.inspector import StateRef


def test_a_linked_state_shows_every_lens_without_a_traceback(monkeypatch, lenslab_home):
    session = tiny_session("gemma3")
    monkeypatch.setattr("lenslab.app.state.session", lambda: session)
    at = AppTest.from_string(
        "from lenslab.app.views import inspector as page\npage.render()\n", default_timeout=600
    )
    at.query_params.update(StateRef("the cat sat", 1, -1).to_query())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.subheader) >= 3  # one box per lens
    assert at.get("plotly_chart"), "no lens drew a figure"  # every figure went through readable()
