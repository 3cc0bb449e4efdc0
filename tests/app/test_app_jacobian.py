"""The Jacobian page under Streamlit's AppTest: renders, runs, shows the check and figures, saves."""

from __future__ import annotations

import pytest
from app_support import summary_value as _summary_value
from streamlit.testing.v1 import AppTest

PAGE = "from lenslab.app.views import jacobian\njacobian.render()\n"


@pytest.fixture
def page(tiny_gemma, lenslab_home, monkeypatch):
    """The page with the shared session replaced by the tiny Gemma model."""
    from lenslab.app import state

    monkeypatch.setattr(state, "session", lambda: tiny_gemma)
    return AppTest.from_string(PAGE, default_timeout=300)


def test_page_runs_shows_check_and_saves(page, tiny_gemma):
    """Run → reconstruction banner, five figures, no hooks left; the report saves."""
    at = page
    at.run()
    assert not at.exception
    at.text_area(key="jacobian:prompt").set_value("the cat sat on")
    at.button(key="jacobian:run").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Reconstruction error" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 5
    assert at.metric[0].label == "reconstruction error"
    stable = _summary_value(at, "stable rank").replace("\\", "")  # text escaped
    assert stable.endswith("(exact)") or "(Hutchinson, 64 probes)" in stable  # method, not a bare number
    assert any("Stable rank" in c.value and stable in c.value for c in at.caption)
    assert tiny_gemma.active_hook_count() == 0
    at.button(key="FormSubmitter:save:jacobian-Save report").click().run()
    assert not at.exception
    assert any("Saved report" in s.value for s in at.success)


def test_page_shows_user_errors(page):
    """A too-long prompt gives a readable error, not a traceback."""
    at = page
    at.run()
    at.number_input(key="jacobian:max_tokens").set_value(4)
    at.button(key="jacobian:run").click().run()
    assert not at.exception
    assert any("capped at 4 tokens" in e.value for e in at.error)
