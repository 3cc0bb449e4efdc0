"""The Future Lens page under Streamlit's AppTest: grid, fitting, training, evaluation, report."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

PAGE = "from lenslab.app.views import future_lens\nfuture_lens.render()\n"


@pytest.fixture
def tiny_page(tiny_gemma, lenslab_home, monkeypatch, tmp_path):
    from lenslab.app import state

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Line {i} of a small corpus about foxes and dogs." for i in range(60)))
    monkeypatch.setattr(state, "session", lambda: tiny_gemma)
    monkeypatch.setenv("LENSLAB_DATA_DIRS", str(tmp_path))  # typed paths must lie in a data folder
    return AppTest.from_string(PAGE, default_timeout=300), corpus


def _charts(at):
    return at.get("plotly_chart")


def test_page_grid_fit_train_evaluate_and_save(tiny_page, lenslab_home):
    at, corpus = tiny_page
    at.run()
    assert not at.exception
    assert at.selectbox(key="future_lens:method").value == "direct"  # nothing trained yet
    at.button(key="future_lens:run").click().run()
    assert not at.exception
    assert len(_charts(at)) == 2
    # linear without maps: a warning, Run disabled, a button to fit them
    at.selectbox(key="future_lens:method").set_value("linear").run()
    assert any("needs a trained artefact" in w.value for w in at.warning)
    assert at.button(key="future_lens:run").disabled
    at.button(key="future_lens:prep").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="future_lens:method").value == "linear"
    at.button(key="future_lens:run").click().run()
    assert not at.exception and not at.error
    # the fixed prompt: free-running by default, teacher forcing only when chosen, and said so
    at.selectbox(key="future_lens:method").set_value("fixed").run()
    assert at.selectbox(key="future_lens:protocol").value == "free-running"
    at.button(key="future_lens:run").click().run()
    assert not at.exception and not at.error
    assert any("N ≥ 1 is free-running" in c.value for c in at.caption)
    at.selectbox(key="future_lens:protocol").set_value("teacher-forced").run()
    at.button(key="future_lens:run").click().run()
    assert any("N ≥ 1 is teacher-forced" in c.value for c in at.caption)
    # learned prompt for layer 1, from the page
    at.number_input(key="future_lens:tl").set_value(1)
    at.number_input(key="future_lens:tmax").set_value(64)
    at.button(key="future_lens:train").click().run()
    assert not at.exception
    assert any("Saved the learned prompt for layer 1" in s.value for s in at.success)
    # evaluation on a small text file
    at.text_input(key="future_lens:eval:source").set_value(str(corpus))
    at.number_input(key="future_lens:eval:n_examples").set_value(48)
    at.button(key="future_lens:evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.dataframe) == 1
    assert at.selectbox(key="future_lens:eval:protocol").value == "free-running"
    assert any("fixed/learned N ≥ 1 free-running" in c.value for c in at.caption)
    # this corpus makes one test document: the page says why no interval is shown
    assert any("1 document (no interval" in c.value.replace("\\", "") for c in at.caption)  # escaped text
    assert len(_charts(at)) == 4  # grid + agreement + accuracy + table
    # save both results as one report
    at.button(key="FormSubmitter:save:future_lens-Save report").click().run()
    assert not at.exception
    assert any("Saved report" in s.value for s in at.success)
    from lenslab.analyses.report import Report, list_reports
    from lenslab.models.paths import reports_dir

    entries = list_reports(reports_dir())
    assert len(entries) == 1 and entries[0].probes == ["future_lens", "future_lens_eval"]
    assert len(Report.load(entries[0].path).results) == 2


def test_bad_source_is_a_message(tiny_page):
    at, corpus = tiny_page
    at.run()
    at.text_input(key="future_lens:eval:source").set_value("/no/such/file.txt").run()
    assert not at.exception
    assert any("data folders" in e.value for e in at.error)  # outside every data folder
    assert at.button(key="future_lens:evaluate").disabled
    at.text_input(key="future_lens:eval:source").set_value(str(corpus.parent / "missing.txt")).run()
    at.button(key="future_lens:evaluate").click().run()
    assert not at.exception
    assert any("no text file" in e.value for e in at.error)  # inside one: the probe's own message


@pytest.mark.slow
def test_page_on_the_embedded_model(lenslab_home):
    at = AppTest.from_string(PAGE, default_timeout=300)
    at.run()
    assert not at.exception
    at.multiselect(key="future_lens:layers:direct").set_value([3, 9, 17])
    at.button(key="future_lens:run").click().run()
    assert not at.exception and not at.error
    assert len(_charts(at)) == 2
