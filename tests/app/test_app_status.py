"""The status box tells the truth under sharing: waited vs ran seconds; slow runs get an estimate."""

from __future__ import annotations

import re
import threading
import time

from streamlit.testing.v1 import AppTest

from lenslab.models.tiny import tiny_session

SCRIPT = "from lenslab.app.views import logit_lens as page\npage.render()\n"


def _page(monkeypatch, session) -> AppTest:
    monkeypatch.setattr("lenslab.app.state.session", lambda: session)
    at = AppTest.from_string(SCRIPT, default_timeout=300).run()
    at.session_state["_session"] = session  # what state.session() records for run_with_status
    return at


def test_a_run_behind_another_user_reports_its_wait(monkeypatch, lenslab_home):
    session = tiny_session("gemma3")
    at = _page(monkeypatch, session)
    holding = threading.Event()

    def other_user():  # holds the model until our run is queued behind it, then a bit longer
        with session.lock.job("other user"), session.lock:
            holding.set()
            deadline = time.monotonic() + 120
            while session.lock.queue_length() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)

    thread = threading.Thread(target=other_user, daemon=True)
    thread.start()
    holding.wait(30)
    at.button(key="logit_lens:run").click().run()
    thread.join(60)
    assert not at.exception and not at.error
    label = next(s.label for s in at.get("status") if "done in" in s.label)
    found = re.search(r"done in ([0-9.]+) s \(waited ([0-9.]+) s for the model, ran ([0-9.]+) s\)", label)
    assert found, label
    total, waited, ran = map(float, found.groups())
    assert waited >= 0.4 and abs(total - waited - ran) <= 0.15, label


def test_a_run_alone_reports_no_wait_and_slow_runs_get_an_estimate(monkeypatch, lenslab_home):
    from lenslab.app import state

    session = tiny_session("gemma3")
    at = _page(monkeypatch, session)
    assert not [c for c in at.caption if "Expected" in c.value]
    at.button(key="logit_lens:run").click().run()
    label = next(s.label for s in at.get("status") if "done in" in s.label)
    assert "waited" not in label, label
    # this model's key: other tests in the process may have recorded runs of other models
    key = next(
        k for k in state._run_history() if k.startswith(f"{session.model_id}:") and k.endswith(":Logit lens")
    )
    state._run_history()[key] = [30.0, 40.0, 35.0]  # as if earlier runs had been slow
    at = at.run()
    hint = [c.value for c in at.caption if "Expected" in c.value]
    assert hint and "35 s" in hint[0] and "3 earlier runs" in hint[0], hint
    state._run_history().clear()


def test_overview_lists_every_page(monkeypatch):
    from lenslab.app import state
    from lenslab.app.views import discover

    monkeypatch.setattr(state, "_PAGES", {})  # rendered on its own, even after a test ran the whole app
    at = AppTest.from_string("from lenslab.app.views import home\nhome.render()\n", default_timeout=60).run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert all(module.TITLE in shown for module in discover())
