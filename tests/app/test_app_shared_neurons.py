"""AppTest of the Shared neurons page on a tiny model: pickers, run, figures, errors, save."""

from __future__ import annotations

import pytest
from app_support import summary_value as _summary_value
from streamlit.testing.v1 import AppTest

from lenslab.app.views import shared_neurons as page

KEY = "shared_neurons"


@pytest.fixture
def app(open_page):
    at = open_page("shared_neurons")
    at.number_input(key=f"{KEY}:n_prompts").set_value(4)
    at.number_input(key=f"{KEY}:top_k").set_value(8)
    return at.run()


def _run(at: AppTest) -> AppTest:
    at.button(key=f"{KEY}:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_two_sets_run_shows_figures_reading_and_table(app):
    assert app.title[0].value == "Shared neurons"
    assert app.selectbox(key=f"{KEY}:setA").value == "exact_arithmetic"
    at = _run(app)
    assert len(at.get("plotly_chart")) == 8
    assert any("Dissociation" in m.value for m in at.markdown)
    assert any("Verdict at 95%" in m.value for m in at.markdown)
    assert "[" in _summary_value(at, "shared fraction")  # with its interval, not cut off
    assert any("Baseline accuracy" in w.value for w in at.warning)  # the tiny model gets nothing right
    assert len(at.dataframe) == 2  # control pairs, causal test


def test_time_estimate_shown_before_a_long_run(app):
    rate_key = f"result:{KEY}:rate:tiny-gemma3-s0"  # the measured prompts/s, cached per model
    assert app.session_state[rate_key] > 0
    app.session_state[rate_key] = 0.5  # a slow model: 4 prompts per set need ~30 forwards
    at = app.run()
    assert any("Estimated run time" in i.value and "forward passes" in i.value for i in at.info)
    at.session_state[rate_key] = 1e6  # a fast one: no estimate
    at = at.run()
    assert not any("Estimated run time" in i.value for i in at.info)


def test_typed_set_and_bad_file(app):
    app.selectbox(key=f"{KEY}:setB").set_value(page.TYPED).run()
    app.text_area(key=f"{KEY}:typedB").set_value("1 + 1 => 2\n2 + 2 => 4\n3 + 3 => 6\n4 + 4 => 8").run()
    at = _run(app)
    assert len(at.get("plotly_chart")) == 8
    at.selectbox(key=f"{KEY}:setA").set_value(page.FILE).run()
    at.text_input(key=f"{KEY}:fileA").set_value("/no/such/prompts.jsonl").run()
    assert not at.exception
    assert any("data folders" in e.value for e in at.error)  # a path outside them is not opened
    assert at.button(key=f"{KEY}:run").disabled


def test_two_models_with_perturbed_copy_and_save(app):
    app.radio(key=f"{KEY}:mode").set_value(page.TWO_MODELS).run()
    at = _run(app)
    assert len(at.get("plotly_chart")) == 7  # no B-only group: no dissociation figure
    assert any("noise" in m.value for m in at.markdown)
    at.text_input(key=f"t:{KEY}").set_value("perturbed demo")
    at.button(key=f"FormSubmitter:save:{KEY}-Save report").click().run()
    assert any("Saved report" in s.value for s in at.success)
