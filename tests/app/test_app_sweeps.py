"""Sweeps page: empty state, then a finished sweep listed and its report opened from saved data."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lenslab.sweeps import sweep, sweeps_dir

SCRIPT = "from lenslab.app.views import sweeps as page\npage.render()\n"


def test_sweeps_page_lists_a_finished_sweep_and_opens_its_report(lenslab_home):
    at = AppTest.from_string(SCRIPT, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No sweeps yet" in i.value for i in at.info)
    assert any(b.label == "Start sweep" for b in at.button)

    (sweeps_dir()).mkdir(parents=True)
    empty_line_source = lenslab_home / "p.txt"
    empty_line_source.write_text("The cat sat\n\nHello there\n", encoding="utf-8")
    sweep(
        "logit_lens", str(empty_line_source), sweeps_dir() / "done", models=["tiny:gemma3"], backend="serial"
    )
    at = AppTest.from_string(SCRIPT, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("done" in e.label for e in at.expander)
    at.toggle(key="sweeps:open:done").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("lenslab sweep logit_lens" in c.value for c in at.code)
    assert any("1 item(s) failed" in m.value for m in at.markdown)
