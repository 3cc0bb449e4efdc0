"""The attention-heads and DLA pages under Streamlit's AppTest on tiny Gemma."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.probes.attention.result import AttentionResult


@pytest.fixture
def page(tiny_gemma, lenslab_home, monkeypatch):
    from lenslab.app import state

    monkeypatch.setattr(state, "session", lambda: tiny_gemma)
    return lambda name: AppTest.from_string(
        f"from lenslab.app.views import {name} as page\npage.render()\n", default_timeout=300
    )


def test_attention_page_runs_and_a_click_opens_the_head(page, tiny_gemma, monkeypatch):
    at = page("attention")
    at.run()
    at.text_area(key="attention:prompt").set_value("the cat sat on the cat")
    at.number_input(key="attention:induction_length").set_value(5)
    at.button(key="attention:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) == 7  # five score heatmaps, the focus head, the pattern grid
    assert at.selectbox(key="attention:focus:layer").value in (0, 1)
    # a click on a score cell moves the head selectors (AppTest cannot click plotly: simulate the event)
    result = at.session_state["result:attention"]
    assert isinstance(result, AttentionResult)
    from types import SimpleNamespace

    from lenslab.app.views import attention

    event = SimpleNamespace(selection=SimpleNamespace(points=[{"x": "H1", "y": result.layer_label(1)}]))

    state = {}
    monkeypatch.setattr(attention.st, "session_state", state)
    attention._take_click(result, "induction", event)
    assert (state["attention:focus:layer"], state["attention:focus:head"]) == (1, 1)
    assert tiny_gemma.active_hook_count() == 0


def test_dla_page_shows_the_identity(page):
    at = page("dla")
    at.run()
    at.text_area(key="dla:prompt").set_value("the cat sat on")
    at.button(key="dla:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("residual" in s.value and "Σ parts" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 3


def test_dla_page_reports_a_multi_token_answer(page):
    at = page("dla")
    at.run()
    at.text_input(key="dla:answer").set_value("ab")
    at.button(key="dla:run").click().run()
    assert not at.exception
    assert any("answer 'ab' is 2 tokens" in re.sub(r"\\(.)", r"\1", e.value) for e in at.error)  # unescaped
