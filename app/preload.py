"""Load the browser's chart code while the user types, not after they press Run.

Streamlit's frontend fetches its plotly component (``static/js/PlotlyChart.<hash>.js``, about
4.7 MB with plotly.js inside) the first time a page shows a chart, and only then parses and runs
it. On a page whose first chart is a probe's result, that wait came after the run: on a busy
2-core machine 2.4-2.8 s from the page script's end to the figure on the page, 1.1 s with the
module loaded beforehand (the logit lens of a 30-token prompt). Importing
the same module as soon as the page is open (the frontend imports it by the same URL, so the
browser's module map answers the later import at once) moves that second into the time the user
spends reading the page and typing a prompt.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import streamlit as st

FRONTEND_JS = Path(st.__file__).parent / "static" / "static" / "js"
CHART_CHUNK = "PlotlyChart.*.js"


@functools.cache
def chart_module() -> str | None:
    """The file name of the frontend's plotly chunk in this Streamlit build (None if not found)."""
    found = sorted(p.name for p in FRONTEND_JS.glob(CHART_CHUNK))
    return found[0] if len(found) == 1 else None


def preload_script(module: str) -> str:
    """A script importing ``module`` relative to the frontend's own entry script, as the frontend does.

    The frontend imports its chunks relative to ``static/js/index.<hash>.js``; resolving against
    that script's URL gives the very URL the frontend will import later (any base path included),
    so the module is fetched and evaluated once.
    """
    return (
        "<script>(() => {"
        "const entry = document.querySelector('script[type=module][src*=\"static/js/index.\"]');"
        "if (!entry || window.__lenslabChartsPreloaded) return;"
        "window.__lenslabChartsPreloaded = true;"
        f"import(new URL({json.dumps(module)}, entry.src).href).catch(() => {{}});"
        "})();</script>"
    )


def preload_charts() -> None:
    """Start loading the chart code in the browser now (a no-op once loaded, or if not found)."""
    module = chart_module()
    if module is not None:
        st.html(preload_script(module), unsafe_allow_javascript=True)
