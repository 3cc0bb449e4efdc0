"""Self-contained HTML rendering of a report (plotly.js inlined once, all text escaped)."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import plotly.io as pio

if TYPE_CHECKING:
    from lenslab.analyses.report import Report

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2433;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #dde;padding:.3rem .6rem;
text-align:left;vertical-align:top}pre{background:#f5f6fa;padding:.6rem;white-space:pre-wrap;
word-break:break-word}.muted{color:#667}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def figure_div(fig: Any, include_js: bool) -> str:
    """One figure as an HTML div (plotly's JSON escapes angle brackets, so text cannot close the script)."""
    return pio.to_html(fig, include_plotlyjs=include_js, full_html=False, validate=False)


def render_html(report: Report) -> str:
    """The whole report as one offline HTML page."""
    parts = [f"<h1>{_e(report.title)}</h1>"]
    meta = {k: v for k, v in report.meta.items() if k not in ("title",)}
    if meta:
        parts.append(_table({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}))
    js_included = False
    for index, result in enumerate(report.results):
        parts.append(f"<h2>{index + 1}. {_e(result.probe)}</h2>")
        parts.append(f"<p class='muted'>model {_e(result.model_id)}</p>")
        parts.append(f"<pre>{_e(result.prompt)}</pre>")
        parts.append(_table({"config": json.dumps(result.config.to_dict())}))
        summary = result.summary()
        if summary:
            parts.append(_table(summary))
        for name, fig in result.figures().items():
            parts.append(f"<h3>{_e(name)}</h3>")
            parts.append(figure_div(fig, include_js=not js_included))
            js_included = True
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{_e(report.title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
