"""The Replications page under Streamlit's AppTest: runs, shows the table, forest plot and notes."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

PAGE = "from lenslab.app.views import replications\nreplications.render()\n"


@pytest.fixture
def page(tiny_gemma, lenslab_home, monkeypatch):
    """The page on the tiny model, defaulting to the artefact-only families (fast)."""
    from lenslab.app import state
    from lenslab.probes.replications import Replications, ReplicationsConfig

    monkeypatch.setattr(state, "session", lambda: tiny_gemma)
    monkeypatch.setattr(
        Replications, "default_config", lambda self: ReplicationsConfig(families=("sae", "neurosymbolic"))
    )
    return AppTest.from_string(PAGE, default_timeout=300)


def test_page_runs_and_explains_missing_artefacts(page):
    at = page
    at.run()
    assert not at.exception
    at.button(key="replications:run").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 2  # table and forest plot
    labels = [e.label for e in at.expander]
    assert sum("not measured" in label for label in labels) == 6  # 3 SAE + 3 neurosymbolic claims
    assert any("lenslab replicate --quick" in c.value for c in at.caption)
