"""Small plotly helpers shared by probes: token labels and token-annotated heatmaps."""

from __future__ import annotations

import html
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
