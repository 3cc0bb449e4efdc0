"""AppTest smoke tests: every page renders; the logit lens page runs and saves a report."""

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.app.views import discover

pytestmark = pytest.mark.slow
TIMEOUT = 300


def _page_script(module_name: str) -> str:
    return (
        "from lenslab.app import state\n"
        f"from lenslab.app.views import {module_name} as page\n"
        "state.sidebar()\n"
        "page.render()\n"
    )


@pytest.mark.parametrize("module", discover(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_page_renders(module, lenslab_home):
    at = AppTest.from_string(_page_script(module.__name__.rsplit(".", 1)[-1]), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title, "each page shows a title"


def test_main_navigation_runs_default_page(lenslab_home):
    at = AppTest.from_file("../../app/main.py", default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.sidebar.selectbox[0].value == "gemma-3-270m"


def test_logit_lens_run_and_save(lenslab_home):
    at = AppTest.from_string(_page_script("logit_lens"), default_timeout=TIMEOUT).run()
    at.text_area[0].set_value("The capital of France is")
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 2
    assert any(m.label == "next token" for m in at.metric)
    at.get("form_submit_button")  # the save form is present
    at.text_input(key="t:logit_lens").set_value("my report")
    at.button(key="FormSubmitter:save:logit_lens-Save report").click().run()
    assert any("Saved report" in s.value for s in at.success)
    reports = AppTest.from_string(_page_script("reports"), default_timeout=TIMEOUT).run()
    assert not reports.exception
    assert any("my report" in e.label for e in reports.expander)


def test_bad_input_shows_message_not_traceback(lenslab_home):
    at = AppTest.from_string(_page_script("logit_lens"), default_timeout=TIMEOUT).run()
    at.text_area[0].set_value("   ")
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)
