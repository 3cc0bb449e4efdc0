"""Hand-built widgets travel in the URL too: a link restores them, edits write them, bad ones are refused.

The Future Lens grid panel, the SAE page's prompt tab, the shared-neuron set pickers and the
neurosymbolic problem box draw their own widgets (not a config form); :class:`LinkedWidgets`
reads their settings from the query string with the same parsers, range checks and message as a
form, so a bad value shows "Invalid settings" and Run stays disabled until the widget changes.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from app_support import open_view
from streamlit.testing.v1 import AppTest

from lenslab.app.plain import INVALID
from lenslab.models.tiny import tiny_session


def _open(monkeypatch, view: str, query: dict[str, str]) -> AppTest:
    at = open_view(monkeypatch, view, query)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _refusals(at: AppTest) -> str:
    return " ".join(e.value.replace("\\", "") for e in at.error if e.value.startswith(INVALID))


# ------------------------------------------------------------------------------------ Future Lens
def test_future_lens_grid_settings_round_trip(monkeypatch, lenslab_home):
    link = {"method": "fixed", "horizon": "2", "layers": "1", "k": "4", "protocol": "teacher-forced"}
    at = _open(monkeypatch, "future_lens", link)
    assert not _refusals(at)
    assert at.selectbox(key="future_lens:method").value == "fixed"
    assert at.slider(key="future_lens:horizon").value == 2
    assert list(at.multiselect(key="future_lens:layers:fixed").value) == [1]
    assert at.number_input(key="future_lens:k").value == 4
    assert at.selectbox(key="future_lens:protocol").value == "teacher-forced"
    assert not at.button(key="future_lens:run").disabled

    at.slider(key="future_lens:horizon").set_value(1).run()
    at.number_input(key="future_lens:k").set_value(5).run()  # the default: left out of the URL
    shared = dict(at.query_params)
    assert shared["horizon"] == "1" and "k" not in shared and shared["method"] == "fixed", shared
    again = _open(monkeypatch, "future_lens", shared)
    assert again.slider(key="future_lens:horizon").value == 1
    assert again.selectbox(key="future_lens:protocol").value == "teacher-forced"


def test_future_lens_grid_refuses_out_of_range_links(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "future_lens", {"horizon": "7", "k": "50", "layers": "0,9", "method": "magic"})
    refused = _refusals(at)
    assert "horizon must be between 0 and 3, got 7" in refused, refused
    assert "k must be between 1 and 20, got 50" in refused, refused
    assert "9" in refused and "layer" in refused, refused  # the tiny model has 2 layers
    assert "setting method: cannot read 'magic'" in refused, refused
    assert len([e for e in at.error if e.value.startswith(INVALID)]) == 1  # one message
    assert at.button(key="future_lens:run").disabled
    assert at.slider(key="future_lens:horizon").value == 3  # refused: the widget starts at its default
    at.run()
    assert at.button(key="future_lens:run").disabled and at.query_params["horizon"] == "7"

    at.slider(key="future_lens:horizon").set_value(2).run()
    assert "horizon" not in _refusals(at) and at.query_params["horizon"] == "2"
    assert "k must be" in _refusals(at) and at.button(key="future_lens:run").disabled


# ---------------------------------------------------------------------------------- SAE features
@pytest.fixture
def sae_prompt_tab(monkeypatch):
    """The SAE page with a stand-in SAE: the prompt tab's widgets render, nothing is loaded or run."""
    from lenslab.app.views import sae_features

    fake = SimpleNamespace(label="stand-in SAE", info=None, spec="trained:stand-in")
    monkeypatch.setattr(sae_features, "_load", lambda session, spec: fake)
    monkeypatch.setattr(sae_features, "_feature_tab", lambda session, loaded: None)
    monkeypatch.setattr(sae_features, "_steer_tab", lambda session, loaded: None)
    monkeypatch.setattr(sae_features, "_train_tab", lambda session: None)  # its form is for 18 layers


def test_sae_prompt_tab_round_trip_and_refusal(monkeypatch, lenslab_home, sae_prompt_tab):
    at = _open(monkeypatch, "sae_features", {"k": "8", "n_heatmap": "40"})
    assert not _refusals(at)
    assert at.number_input(key="sae:k").value == 8
    assert at.number_input(key="sae:nheat").value == 40
    assert not at.button(key="sae:run").disabled
    at.number_input(key="sae:nheat").set_value(12).run()
    assert at.query_params["n_heatmap"] == "12" and at.query_params["k"] == "8"

    bad = _open(monkeypatch, "sae_features", {"k": "0", "n_heatmap": "500"})
    refused = _refusals(bad)
    assert "k must be between 1 and 64, got 0" in refused, refused
    assert "n_heatmap must be between 1 and 200, got 500" in refused, refused
    assert bad.button(key="sae:run").disabled


# -------------------------------------------------------------------------------- Shared neurons
TYPED = "1 + 1 => 2\n2 + 2 => 4\n3 + 3 => 6\n4 + 4 => 8"


def test_shared_neuron_set_pickers_round_trip(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "shared_neurons", {"set_a": "capitals", "set_b": TYPED, "control": ""})
    assert not _refusals(at)
    assert at.selectbox(key="shared_neurons:setA").value == "capitals"
    assert at.selectbox(key="shared_neurons:setB").value.startswith("type prompts")
    assert at.text_area(key="shared_neurons:typedB").value == TYPED
    assert at.selectbox(key="shared_neurons:control").value.startswith("none")

    at.selectbox(key="shared_neurons:setA").set_value("exact_arithmetic").run()  # the default
    at.selectbox(key="shared_neurons:control").set_value("opposites").run()
    shared = dict(at.query_params)
    assert "set_a" not in shared and shared["control"] == "opposites" and shared["set_b"] == TYPED
    again = _open(monkeypatch, "shared_neurons", shared)
    assert again.selectbox(key="shared_neurons:control").value == "opposites"
    assert again.text_area(key="shared_neurons:typedB").value == TYPED


def test_shared_neuron_set_pickers_refuse_unknown_sets(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "shared_neurons", {"set_a": "/etc/passwd", "control": "exact_arithmetic"})
    refused = _refusals(at)
    assert "setting set_a: '/etc/passwd' is neither one of" in refused, refused
    assert "setting control: 'exact_arithmetic'" in refused, refused  # it is set A: no floor
    assert at.button(key="shared_neurons:run").disabled
    assert at.selectbox(key="shared_neurons:setA").value == "exact_arithmetic"  # started at the default

    at.selectbox(key="shared_neurons:setA").set_value("capitals").run()
    assert "set_a" not in _refusals(at) and at.query_params["set_a"] == "capitals"


# --------------------------------------------------------------------------------- Neurosymbolic
@pytest.fixture
def fitted(monkeypatch, lenslab_home):
    """Tiny encoders saved where the page looks for the tiny model's (operands below 20)."""
    from lenslab.probes.neurosymbolic import probe as neurosymbolic_probe
    from lenslab.probes.neurosymbolic.artefact import TrainConfig, artefact_folder
    from lenslab.probes.neurosymbolic.pipeline import fit_artefact

    tiny_fit = functools.partial(
        TrainConfig,
        operations=("add", "mul"),
        bound=20,
        n_train_per_operation=6,
        n_test_per_operation=2,
        n_calibration_per_operation=2,
        vsa_dim=64,
        batch_size=32,
    )
    monkeypatch.setattr(neurosymbolic_probe, "TrainConfig", tiny_fit)
    session = tiny_session("gemma3")
    fit_artefact(session, tiny_fit()).save(artefact_folder(session.model_id, tiny_fit()))


def test_neurosymbolic_problem_round_trip_and_refusal(monkeypatch, fitted):
    at = _open(monkeypatch, "neurosymbolic", {"prompt": "What is 12 * 3?"})
    assert not _refusals(at)
    assert at.text_input(key="neurosymbolic:prompt").value == "What is 12 * 3?"
    assert not at.button(key="neurosymbolic:run").disabled
    at.text_input(key="neurosymbolic:prompt").set_value("What is 4 + 5?").run()
    assert at.query_params["prompt"] == "What is 4 + 5?"

    bad = _open(monkeypatch, "neurosymbolic", {"prompt": "What is 500 * 7?"})
    assert "operands must be below 20" in _refusals(bad), _refusals(bad)
    assert bad.text_input(key="neurosymbolic:prompt").value == "What is 500 * 7?"  # shown as linked
    assert bad.button(key="neurosymbolic:run").disabled
    bad.text_input(key="neurosymbolic:prompt").set_value("What is 5 * 7?").run()
    assert not _refusals(bad) and not bad.button(key="neurosymbolic:run").disabled
