"""Helpers shared by the AppTest modules: open one page on the tiny model, read a summary value."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lenslab.models.tiny import tiny_session


def open_view(monkeypatch, view: str, query: dict[str, str]) -> AppTest:
    """Run page ``view`` once on tiny Gemma with ``query`` as its URL query string."""
    session = tiny_session("gemma3")
    monkeypatch.setattr("lenslab.app.state.session", lambda: session)
    at = AppTest.from_string(
        f"from lenslab.app.views import {view} as page\npage.render()\n", default_timeout=300
    )
    at.query_params.update(query)
    return at.run()


def summary_value(at: AppTest, name: str) -> str:
    """A summary entry's shown value: a metric, or (text too long for one) the line under its caption."""
    for metric in at.metric:
        if metric.label == name:
            return metric.value
    for line in at.markdown:  # a sentence: a full-width line under the grid
        if line.value.startswith(f"**{name}:** "):
            return line.value.split(":** ", 1)[1]
    return next(c.markdown[0].value for c in at.columns if c.caption and c.caption[0].value == name)
