"""The activation-patching page under AppTest: token check, sweeps, patch lens, save."""

from __future__ import annotations

CLEAN = "The Eiffel Tower is in <b>Paris</b> & 48 + 7 ="
CORRUPTED = "The Eiffel Tower is in <b>Rome!</b> & 48 + 8 ="


def test_page_checks_lengths_runs_sweeps_and_saves(open_page):
    at = open_page("patching")
    # the default pair differs in length on the tiny character tokenizer: a readable error, Run disabled
    assert any("same number of tokens" in e.value for e in at.error)
    assert at.button(key="activation_patching:run").disabled
    at.text_area(key="activation_patching:prompt").set_value(CLEAN)
    at.text_area(key="activation_patching:corrupted").set_value(CORRUPTED)
    at.text_input(key="activation_patching:a").set_value("5")
    at.text_input(key="activation_patching:b").set_value("6")
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="activation_patching:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 4  # resid, attn, mlp, heads
    assert any("normalised so the clean run is 1" in c.value for c in at.caption)
    at.button(key="FormSubmitter:save:activation_patching-Save report").click().run()
    assert any("Saved report" in s.value for s in at.success)


def test_patch_lens_tab_runs(open_page):
    at = open_page("patching")
    at.text_area(key="patch_lens:prompt").set_value("hello world")
    at.button(key="patch_lens:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.label for m in at.metric] + [c.caption[0].value for c in at.columns if c.caption]
    assert "next token after" in shown, shown  # a metric, or (text too long for one) a wrapped line
