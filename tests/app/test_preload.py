"""The chart-code preload points at the module the installed Streamlit frontend really imports.

If a Streamlit upgrade renames, splits or stops lazily importing its plotly chunk, the preload
would fetch a second copy or nothing; these checks fail then instead of the app silently losing
its head start. (That the browser fetches it once, before Run, is checked in the e2e suite.)
"""

from __future__ import annotations

import re

from lenslab.app import preload


def _entry_scripts() -> list[str]:
    """The frontend's entry scripts named by its index.html."""
    html = (preload.FRONTEND_JS.parents[1] / "index.html").read_text(encoding="utf-8")
    return re.findall(r'<script[^>]*type="module"[^>]*src="([^"]+)"', html)


def test_the_chart_chunk_is_found_once():
    module = preload.chart_module()
    assert module is not None, f"no single {preload.CHART_CHUNK} in {preload.FRONTEND_JS}"
    assert (preload.FRONTEND_JS / module).stat().st_size > 1_000_000  # plotly.js is inside it


def test_the_frontend_imports_that_chunk_relative_to_its_entry_script():
    module = preload.chart_module()
    entries = _entry_scripts()
    assert len(entries) == 1 and re.search(r"static/js/index\.[^/]+\.js$", entries[0]), entries
    entry = preload.FRONTEND_JS / entries[0].rsplit("/", 1)[1]
    # the lazy import the preload must match: same folder, same file name
    assert f"import(`./{module}`)" in entry.read_text(encoding="utf-8")


def test_the_script_imports_the_module_once_by_its_resolved_url():
    script = preload.preload_script('Plotly"Chart.x.js')
    assert 'script[type=module][src*="static/js/index."]' in script
    assert 'new URL("Plotly\\"Chart.x.js", entry.src)' in script  # the name is a JSON string literal
    assert "__lenslabChartsPreloaded" in script
