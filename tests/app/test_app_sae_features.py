"""AppTest of the SAE features page on a tiny model: train in the app, then prompt, feature, steer."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

KEY = "sae"


@pytest.fixture
def app(open_page):
    return open_page("sae_features")


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_empty_home_explains_and_trains_from_the_app(app):
    assert app.title[0].value == "SAE features"
    assert any("No SAE has been trained" in i.value for i in app.info)
    settings = {
        "name": "tiny",
        "layer": 1,
        "d_sae": 32,
        "k": 4,
        "n_tokens": 300,
        "context_size": 32,
        "steps": 30,
        "batch_size": 32,
        "eval_windows": 2,
    }
    for name, value in settings.items():
        widget = (
            app.text_input(key=f"{KEY}:train:{name}")
            if name == "name"
            else app.number_input(key=f"{KEY}:train:{name}")
        )
        widget.set_value(value)
    app.number_input(key=f"{KEY}:train:lr").set_value(0.01)
    at = app.run()
    at.button(key=f"{KEY}:trainbtn").click().run()
    _ok(at)
    shown = next(s.value for s in at.success if "Trained \\'tiny\\'" in s.value)  # the name is escaped
    assert "L0 " in shown and "(62 tokens, 2 documents)" in shown and "CE recovered (vs mean" in shown
    at = at.run()
    assert "trained:tiny" in at.selectbox(key=f"{KEY}:choice").options
    at.selectbox(key=f"{KEY}:choice").set_value("trained:tiny").run()
    _ok(at)
    # prompt tab
    at.button(key=f"{KEY}:run").click().run()
    _ok(at)
    assert len(at.get("plotly_chart")) >= 3  # heatmap, last token, selected token (+ L0 unless TopK)
    assert any(m.label == "CE recovered" for m in at.metric)
    at.button(key=f"{KEY}:goto").click().run()
    _ok(at)
    # feature tab
    at.number_input(key=f"{KEY}:nseq").set_value(6).run()
    at.button(key=f"{KEY}:showfeature").click().run()
    _ok(at)
    assert any(m.label == "firing frequency" for m in at.metric)
    # steer tab
    at.number_input(key=f"{KEY}:nnew").set_value(3).run()
    at.button(key=f"{KEY}:steer").click().run()
    _ok(at)
    assert len(at.code) == 2


def test_bad_folder_shows_message(app):
    app.selectbox(key=f"{KEY}:choice").set_value("folder on disk (sae-lens format)…").run()
    at = app.text_input(key=f"{KEY}:folder").set_value("/no/such/sae").run()
    assert not at.exception
    missing = [e.value for e in at.error]
    at = at.text_input(key=f"{KEY}:folder").set_value("/etc").run()
    assert [e.value for e in at.error] == missing and "data folders" in missing[0]  # exists or not: same
    from lenslab.models.paths import artefacts_dir

    at = at.text_input(key=f"{KEY}:folder").set_value(str(artefacts_dir() / "no-sae")).run()
    assert any("sae-lens format" in e.value.replace("\\", "") for e in at.error)  # inside: the loader's word


def test_offline_pretrained_shows_message(app, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    app.selectbox(key=f"{KEY}:choice").set_value("pretrained (sae-lens release/id)…").run()
    at = app.text_input(key=f"{KEY}:pretrained").set_value("gpt2-small-res-jb/blocks.0.hook_resid_pre").run()
    assert not at.exception
    assert any("offline" in e.value for e in at.error)
