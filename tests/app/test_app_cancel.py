"""Cancel: every run started through the shared run helper can be stopped, leaving nothing behind."""

from __future__ import annotations

import streamlit as st
from streamlit.testing.v1 import AppTest

from lenslab.app import state
from lenslab.models.tiny import tiny_session
from lenslab.probes.jacobian.probe import JacobianProbe
from lenslab.progress import NO_PROGRESS

SCRIPT = "from lenslab.app.views import jacobian as page\npage.render()\n"


def test_cancel_mid_run_stops_it_with_no_result_and_no_hooks(monkeypatch, lenslab_home):
    session = tiny_session("gemma3")
    monkeypatch.setattr("lenslab.app.state.session", lambda: session)
    at = AppTest.from_string(SCRIPT, default_timeout=300).run()
    at.session_state["_session"] = session
    at.button(key="jacobian:run").click().run()  # a finished run first: its result is on the page
    assert not at.exception and not at.error, [e.value for e in at.exception]
    shown = at.get("plotly_chart")  # its figures, each once: the early contribution figure made way
    assert shown and len(shown) == len(at.session_state["result:jacobian"].figures())

    real_run = JacobianProbe.run
    seen: dict[str, object] = {}

    def run_clicking_cancel(self, session_, prompt, config, progress=NO_PROGRESS):
        def progress_with_click(fraction: float, message: str = "") -> None:
            if fraction > 0.15 and "hooks" not in seen:  # mid-run: contributions shown, SVD running
                seen["button"] = "cancel-button:Jacobian" in st.session_state  # the button is on the page
                state.request_cancel(self.title)  # what the Cancel button's on_click does
                seen["hooks"] = True
            progress(fraction, message)

        seen["result"] = None
        seen["result"] = real_run(self, session_, prompt, config, progress_with_click)
        return seen["result"]

    monkeypatch.setattr(JacobianProbe, "run", run_clicking_cancel)
    at.button(key="jacobian:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert seen.get("hooks") and seen["result"] is None, "the run was not stopped"
    assert seen["button"], "no Cancel button during the run"
    labels = [s.label for s in at.get("status")]
    assert any(label.endswith(": cancelled") for label in labels), labels
    assert any("cancelled, no result" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.get("plotly_chart"), "figures (the previous run's, or this one's early ones) still shown"
    assert not [b for b in at.button if b.key == "cancel-button:Jacobian"], "Cancel left on the page"
    assert session.active_hook_count() == 0
    with session.lock:  # the model is free again (this would block if the cancelled run kept it)
        pass
