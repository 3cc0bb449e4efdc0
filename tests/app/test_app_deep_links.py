"""A page's URL carries its settings: a link restores them, edits write them, bad ones are refused.

The settings are read from the query string with the CLI's parsers and checked by the same
boundary as typed input (range checks, the model's layers), so a bad value in a link shows the
one "Invalid settings" message and the page runs nothing until the setting is changed.
"""

from __future__ import annotations

from app_support import open_view as _open
from streamlit.testing.v1 import AppTest

from lenslab.app.plain import INVALID


def _refusals(at: AppTest) -> list[str]:
    return [e.value.replace("\\", "") for e in at.error if e.value.startswith(INVALID)]


def test_a_link_restores_the_settings_and_edits_write_them_back(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "logit_lens", {"prompt": "Links keep settings", "k": "7", "layers": "0,1"})
    assert not at.exception and not _refusals(at)
    assert at.text_area(key="logit_lens:prompt").value == "Links keep settings"
    assert at.number_input(key="logit_lens:k").value == 7
    assert list(at.multiselect(key="logit_lens:layers").value) == [0, 1]
    assert not at.button(key="logit_lens:run").disabled

    at.number_input(key="logit_lens:k").set_value(9).run()
    at.multiselect(key="logit_lens:layers").set_value([1]).run()
    shared = dict(at.query_params)
    assert shared["k"] == "9" and shared["layers"] == "1", shared

    reopened = _open(monkeypatch, "logit_lens", shared)  # the copied address bar, in a new session
    assert reopened.number_input(key="logit_lens:k").value == 9
    assert list(reopened.multiselect(key="logit_lens:layers").value) == [1]
    assert reopened.text_area(key="logit_lens:prompt").value == "Links keep settings"

    reopened.number_input(key="logit_lens:k").set_value(5).run()  # back to the default: left out
    assert "k" not in reopened.query_params and reopened.query_params["layers"] == "1"


def test_select_and_checkbox_settings_travel_too(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "jacobian", {"method": "randomized", "layer_sweep": "true", "n_components": "4"})
    assert not at.exception and not _refusals(at)
    assert at.selectbox(key="jacobian:method").value == "randomized"
    assert at.checkbox(key="jacobian:layer_sweep").value is True
    assert at.number_input(key="jacobian:n_components").value == 4


def test_a_bad_setting_in_a_link_is_refused_and_nothing_runs(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "logit_lens", {"k": "abc", "layers": "1,40"})
    refused = " ".join(_refusals(at))
    assert "setting k: cannot read 'abc' as" in refused, refused
    assert "40" in refused and "layer" in refused, refused  # the model has 2 layers
    assert at.button(key="logit_lens:run").disabled
    at.run()  # a rerun (any click) keeps the refusal: the URL still holds the bad values
    assert len(_refusals(at)) == 1 and at.button(key="logit_lens:run").disabled
    assert at.query_params["k"] == "abc"

    at.number_input(key="logit_lens:k").set_value(3).run()
    at.multiselect(key="logit_lens:layers").set_value([0]).run()
    assert not _refusals(at) and not at.button(key="logit_lens:run").disabled
    assert at.query_params["k"] == "3" and at.query_params["layers"] == "0"


def test_an_out_of_range_number_in_a_link_gets_the_typed_input_message(monkeypatch, lenslab_home):
    at = _open(monkeypatch, "logit_lens", {"k": "0"})
    refused = " ".join(_refusals(at))
    assert "k must be" in refused and "got 0" in refused, refused
    assert at.button(key="logit_lens:run").disabled
