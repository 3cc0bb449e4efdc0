"""AppTest of the Shared neurons page on a tiny model: pickers, run, figures, errors, save."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.app.views import shared_neurons as page

KEY = "shared_neurons"


@pytest.fixture
def app(open_page):
    at = open_page("shared_neurons")
    at.number_input(key=f"{KEY}:n_prompts").set_value(3)
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
    assert len(at.get("plotly_chart")) == 6
    assert any("Dissociation" in m.value for m in at.markdown)
    assert any(m.label == "shared fraction" for m in at.metric)
    assert len(at.dataframe) == 1


def test_typed_set_and_bad_file(app):
    app.selectbox(key=f"{KEY}:setB").set_value(page.TYPED).run()
    app.text_area(key=f"{KEY}:typedB").set_value("1 + 1 => 2\n2 + 2 => 4\n3 + 3 => 6").run()
    at = _run(app)
    assert len(at.get("plotly_chart")) == 6
    at.selectbox(key=f"{KEY}:setA").set_value(page.FILE).run()
    at.text_input(key=f"{KEY}:fileA").set_value("/no/such/prompts.jsonl").run()
    assert not at.exception
    assert any("data folders" in e.value for e in at.error)  # a path outside them is not opened
    assert at.button(key=f"{KEY}:run").disabled


def test_two_models_with_perturbed_copy_and_save(app):
    app.radio(key=f"{KEY}:mode").set_value(page.TWO_MODELS).run()
    at = _run(app)
    assert len(at.get("plotly_chart")) == 6
    assert any("noise" in m.value for m in at.markdown)
    at.text_input(key=f"t:{KEY}").set_value("perturbed demo")
    at.button(key=f"FormSubmitter:save:{KEY}-💾 Save report").click().run()
    assert any("Saved report" in s.value for s in at.success)
