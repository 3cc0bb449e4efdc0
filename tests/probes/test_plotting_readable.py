"""``readable``: long titles wrapped (plotly clips them), whole-number axes ticked in whole steps."""

from __future__ import annotations

import plotly.graph_objects as go

from lenslab.probes.plotting import TITLE_CHARS, readable


def test_a_long_title_is_wrapped_at_words_and_given_room():
    words = [f"word{i}" for i in range(40)]
    fig = readable(go.Figure(layout={"title": " ".join(words), "margin": {"t": 60}}))
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) >= 3 and all(len(line) <= TITLE_CHARS for line in lines), lines
    assert " ".join(lines).split(" ") == words  # nothing lost or split inside a word
    assert fig.layout.margin.t >= 36 + 22 * len(lines)


def test_a_short_title_and_markup_are_left_alone():
    title = "Logit lens: <b>top</b> token &lt;bos&gt; per layer"
    fig = readable(go.Figure(layout={"title": title}))
    assert fig.layout.title.text == title and fig.layout.margin.t is None


def test_layer_and_index_axes_get_whole_ticks_only_for_whole_values():
    fig = readable(go.Figure(go.Scatter(x=[1, 2], y=[3.0, 2.5]), layout={"xaxis_title": "index"}))
    assert (fig.layout.xaxis.dtick, fig.layout.xaxis.tickformat) == (1, "d")  # not 1, 1.2, 1.4, …
    many = readable(go.Figure(go.Scatter(x=list(range(0, 36)), y=[0] * 36), layout={"xaxis_title": "layer"}))
    assert many.layout.xaxis.dtick == 3  # about a dozen ticks
    fractional = readable(go.Figure(go.Scatter(x=[0.5, 1.5]), layout={"xaxis_title": "layer"}))
    assert fractional.layout.xaxis.dtick is None
    labelled = readable(go.Figure(go.Heatmap(z=[[1]], x=["H0"]), layout={"xaxis_title": "head"}))
    assert labelled.layout.xaxis.dtick is None  # categories stay categories
    other = readable(go.Figure(go.Scatter(x=[1, 2]), layout={"xaxis_title": "probability"}))
    assert other.layout.xaxis.dtick is None


def test_a_legend_of_long_names_moves_under_the_chart():
    long_names = ["operation accuracy (1 − encoder classification error)", "cosine to target vector"]
    fig = readable(go.Figure([go.Scatter(x=[0, 1], name=n) for n in long_names], layout={"height": 360}))
    assert fig.layout.legend.orientation == "h" and fig.layout.height > 360
    short = readable(go.Figure([go.Scatter(x=[0, 1], name=n) for n in ("t+1", "t+2")]))
    assert short.layout.legend.orientation is None  # beside the chart, as plotly puts it


def test_numpy_coordinates_and_tables_are_read():
    import numpy as np

    fig = readable(go.Figure(go.Bar(x=np.arange(18), y=np.ones(18)), layout={"xaxis_title": "layer"}))
    assert fig.layout.xaxis.dtick == 2
    table = readable(go.Figure(go.Table(cells={"values": [[1]]}), layout={"xaxis_title": "layer"}))
    assert table.layout.xaxis.dtick is None
