"""Small plotly helpers shared by probes: token labels and token-annotated heatmaps."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def label(token: str) -> str:
    """A token as plotly should show it: whitespace made visible, HTML markup escaped.

    Plotly interprets a subset of HTML in text, so a token such as ``<b>`` would otherwise change
    the rendering; escaping shows it literally and keeps markup out of saved reports.
    """
    visible = token.replace("\n", "⏎").replace("\t", "⇥")
    if visible.strip() == "":
        visible = visible.replace(" ", "␣")
    return html.escape(visible, quote=False)


def unique_labels(tokens: Sequence[str]) -> list[str]:
    """Axis labels that stay distinct when a token repeats (plotly merges equal categories)."""
    return [f"{i}:{label(t)}" for i, t in enumerate(tokens)]


def token_grid(
    values: np.ndarray,
    cell_text: Sequence[Sequence[str]],
    hover: Sequence[Sequence[str]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str,
    colorbar: str,
    colorscale: str = "Blues",
) -> go.Figure:
    """Heatmap with a (pre-escaped) token written in every cell, rich hover text, clickable cells."""
    columns, rows = unique_labels(x_labels), list(y_labels)
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=columns,
            y=rows,
            text=[list(row) for row in cell_text],
            texttemplate="%{text}",
            textfont={"size": 10},
            hoverinfo="skip",
            colorscale=colorscale,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": colorbar},
        )
    )
    add_clickable_cells(fig, columns, rows, hover)
    fig.update_layout(
        title=title,
        xaxis={"title": "position · input token", "tickangle": -45},
        yaxis={"title": "layer", "autorange": True},
        template="plotly_white",
        height=max(320, 28 * len(y_labels) + 160),
    )
    return fig


def add_clickable_cells(
    fig: go.Figure, columns: Sequence[str], rows: Sequence[str], hover: Sequence[Sequence[str]]
) -> None:
    """Make the heatmap ``fig.data[0]`` hoverable and clickable through invisible points at cell centres.

    Streamlit's ``on_select`` returns nothing for heatmap traces (streamlit#8760), so the heatmap
    itself skips hover and an invisible scatter point per cell carries its hover text: with
    ``hoverdistance=-1`` the nearest cell answers anywhere in the plot, and a click selects it as a
    point whose ``x``/``y`` are the cell's labels.
    """
    grid = fig.data[0]  # the heatmap of the states; other traces keep their own hover
    grid.hoverinfo = "skip"
    grid.hovertemplate = None
    fig.add_trace(
        go.Scatter(
            x=[x for _ in rows for x in columns],
            y=[y for y in rows for _ in columns],
            mode="markers",
            marker={"size": 1, "opacity": 0},
            customdata=[cell for row in hover for cell in row],
            hovertemplate="%{y} · %{x}<br>%{customdata}<extra></extra>",
            showlegend=False,
            name="cells",
        )
    )
    fig.update_layout(hoverdistance=-1, clickmode="event+select")


def cell_state(point: dict, layers: Sequence[int] | None = None) -> tuple[int, int] | None:
    """(layer, position) from a clicked :func:`token_grid` cell: x is ``"pos:token"``, y ``"L<n>"``."""
    x, y = str(point.get("x", "")), str(point.get("y", ""))
    head = x.split(":", 1)[0]
    if not head.isdigit() or not y.startswith("L") or not y[1:].lstrip("-").isdigit():
        return None
    layer = int(y[1:])
    if layers is not None and layer not in list(layers):
        return None
    return layer, int(head)


TITLE_CHARS = 80  # a bold title this long spans a chart in a 1280 px window; longer ones are clipped
WHOLE_NUMBER_AXES = ("layer", "index", "position", "head", "step", "epoch", "prompt", "rank")


def readable(fig: go.Figure) -> go.Figure:
    """``fig`` made readable at any window width: long titles wrapped, whole-number axes ticked whole.

    Plotly neither wraps a title (a long one runs off the chart) nor keeps ticks integral on an
    axis of layers or indices (``1, 1.2, 1.4``); both are fixed here, in place, without touching the
    data. Returns ``fig``.
    """
    _wrap_title(fig)
    _legend_below(fig)
    for axis in ("xaxis", "yaxis"):
        _whole_ticks(fig, axis)
    return fig


LEGEND_CHARS = 28  # a legend with longer entries beside the chart leaves the chart a narrow strip


def _legend_below(fig: go.Figure) -> None:
    """Long legend entries go under the chart, in rows, instead of squeezing it from the right."""
    names = [_visible(t.name) for t in fig.data if t.name and t.showlegend is not False]
    if len(names) < 2 or max(map(len, names)) <= LEGEND_CHARS or fig.layout.legend.orientation == "h":
        return
    rows = (len(names) + 1) // 2  # about two entries per row in a 1280 px window
    fig.update_layout(
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
        height=(fig.layout.height or 450) + 22 * rows,
        margin={"b": 80 + 22 * rows},  # the axis's ticks and title, then the legend's rows
    )


def wrapped(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` broken with ``<br>`` at spaces so that no line shows more than ``width`` characters."""
    lines: list[str] = []
    for part in text.split("<br>"):
        line = ""
        for word in part.split(" "):
            if line and len(_visible(f"{line} {word}")) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def _wrap_title(fig: go.Figure) -> None:
    text = fig.layout.title.text
    if not text or max(len(_visible(part)) for part in text.split("<br>")) <= TITLE_CHARS:
        return
    lines = wrapped(text).split("<br>")
    above = any(a.yref == "paper" and (a.y or 0) >= 1 for a in fig.layout.annotations or ())
    top = 36 + 22 * len(lines) + (22 if above else 0)
    fig.update_layout(
        title={"text": "<br>".join(lines), "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 12}},
        margin={"t": max(top, fig.layout.margin.t or 0)},
    )


def _visible(text: str) -> str:
    """The characters a title shows: tags dropped, entities as one character."""
    return re.sub(r"&[#\w]+;", "x", re.sub(r"<[^>]+>", "", text))


def _whole_ticks(fig: go.Figure, axis: str) -> None:
    """Integral ticks on a numeric axis of layers, indices, positions or heads (never 1.5 layers)."""
    layout_axis = getattr(fig.layout, axis)
    title = (layout_axis.title.text or "").lower()
    if not title.startswith(WHOLE_NUMBER_AXES) or layout_axis.tickmode == "array":
        return
    values = []
    for trace in fig.data:
        coordinates = getattr(trace, axis[0], None)  # a tuple or a numpy array (tables have none)
        if coordinates is not None:
            values.extend(np.asarray(coordinates, dtype=object).ravel().tolist())
    if not values or not all(_is_whole(v) for v in values):
        return  # categories, or fractional positions: leave the axis alone
    span = max(values) - min(values)
    step = max(1, int(np.ceil(span / 12)))  # at most about a dozen ticks
    layout_axis.update(tickmode="linear", tick0=int(min(values)), dtick=step, tickformat="d")


def _is_whole(value: object) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return bool(np.isfinite(value)) and float(value).is_integer()
