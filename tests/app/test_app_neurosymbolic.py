"""The Neurosymbolic page under Streamlit's AppTest: fit button, layer curve, a typed problem, errors."""

from __future__ import annotations

import functools

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.probes.neurosymbolic import probe as neurosymbolic_probe
from lenslab.probes.neurosymbolic.artefact import TrainConfig

pytestmark = pytest.mark.slow
TIMEOUT = 600
SCRIPT = (
    "from lenslab.app import state\n"
    "from lenslab.app.views import neurosymbolic as page\n"
    "state.sidebar()\n"
    "page.render()\n"
)
# A fit small enough for a test (the page's default fit takes ~2 minutes on a CPU).
TINY_FIT = functools.partial(
    TrainConfig,
    operations=("add", "sub", "mul"),
    bound=20,
    n_train_per_operation=6,
    n_test_per_operation=2,
    n_calibration_per_operation=2,
    vsa_dim=512,
    batch_size=32,
)


def use_tiny_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make TINY_FIT the page's default fit: the probe module builds the default TrainConfig."""
    monkeypatch.setattr(neurosymbolic_probe, "TrainConfig", TINY_FIT)


def test_page_fits_shows_curve_and_answers_a_problem(lenslab_home, monkeypatch):
    use_tiny_fit(monkeypatch)
    at = AppTest.from_string(SCRIPT, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No encoders are fitted" in i.value for i in at.info)
    next(b for b in at.button if b.label == "Fit encoders").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any((lenslab_home / "artefacts" / "neurosymbolic").rglob("meta.json"))
    at = AppTest.from_string(SCRIPT, default_timeout=TIMEOUT).run()  # reopen: the fit is reused
    assert not at.info
    assert len(at.get("plotly_chart")) == 3  # layer curve, evaluation table, CE bars

    at.text_input(key="neurosymbolic:prompt").set_value("What is 12 * 3?")
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the fit's three figures once (not again with the result) + the problem's three
    assert len(at.get("plotly_chart")) == 3 + 3
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert sum("linearly readable" in t for t in titles) == 1  # the layer curve is drawn once
    assert any(m.label == "system" and m.value == "abstains" for m in at.metric)
    assert any("the system **abstains**" in m.value for m in at.markdown)
    assert any(m.label == "exact answer" and m.value == "36" for m in at.metric)
    assert any("Exact answer: **36**" in m.value for m in at.markdown)

    at.text_input(key="neurosymbolic:prompt").set_value("tell me a joke")
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    assert any("could not read" in e.value for e in at.error)


def test_page_refuses_encoders_of_another_model(lenslab_home, monkeypatch, tiny_gemma):
    use_tiny_fit(monkeypatch)
    from lenslab.models import loading
    from lenslab.probes.neurosymbolic.artefact import artefact_folder
    from lenslab.probes.neurosymbolic.pipeline import fit_artefact

    # fitted on a tiny model, saved where the embedded model's encoders belong
    artefact = fit_artefact(tiny_gemma, TINY_FIT(vsa_dim=64))
    artefact.save(artefact_folder(loading.resolve(None).model_id, TINY_FIT()))
    at = AppTest.from_string(SCRIPT, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("fitted on 'tiny-gemma3-s0'" in e.value for e in at.error)
