"""Figures of the shared-neuron result: overlap against control pairs, membership, heads, causal test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lenslab.probes.plotting import label
from lenslab.probes.shared_neurons.stats import format_p

if TYPE_CHECKING:
    from lenslab.probes.shared_neurons.result import SharedNeuronsResult

COLOURS = {
    "A-only": "#1f77b4",
    "shared": "#9467bd",
    "B-only": "#ff7f0e",
    "random-A": "#7f7f7f",
    "random-B": "#bcbd22",
    "random": "#7f7f7f",
    "test": "#9467bd",
    "ceiling": "#2ca02c",
    "floor": "#d62728",
}
KIND_NAMES = {"test": "compared pair", "ceiling": "same task, two halves", "floor": "task vs control"}


def all_figures(result: SharedNeuronsResult) -> dict[str, go.Figure]:
    """Every figure the result has data for (reports saved before the control pairs lack two)."""
    figures = {}
    if result.pairs:
        figures["pairs"] = pairs_figure(result)
    figures["overlap"] = overlap_figure(result)
    figures["membership"] = membership_figure(result)
    figures["venn"] = venn_figure(result)
    figures["heads"] = heads_figure(result)
    if result.conditions:
        figures["causal_logprob"] = causal_figure(
            result, "delta_logprob", "Δ log p(answer) vs no intervention"
        )
        figures["causal_accuracy"] = causal_figure(result, "accuracy", "accuracy")
    if result.dissociation():
        figures["dissociation"] = dissociation_figure(result)
    return figures


def _names(result: SharedNeuronsResult) -> tuple[str, str]:
    return label(result.label_a), label(result.label_b)


def pairs_figure(result: SharedNeuronsResult) -> go.Figure:
    """Shared fraction of the task pair next to the ceiling and floor pairs, 95% intervals."""
    fig = go.Figure()
    for kind in ("test", "ceiling", "floor"):
        chosen = [p for p in result.pairs if p.kind == kind]
        if not chosen:
            continue
        fig.add_bar(
            x=[p.fraction.estimate for p in chosen],
            y=[label(p.name) for p in chosen],
            orientation="h",
            name=KIND_NAMES[kind],
            marker_color=COLOURS[kind],
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [p.fraction.high - p.fraction.estimate for p in chosen],
                "arrayminus": [p.fraction.estimate - p.fraction.low for p in chosen],
            },
            customdata=[[p.n_first, p.n_second, p.fraction.low, p.fraction.high] for p in chosen],
            hovertemplate="%{y}<br>shared %{x:.1%} [%{customdata[2]:.1%}, %{customdata[3]:.1%}]"
            "<br>prompts %{customdata[0]} + %{customdata[1]}<extra></extra>",
        )
    fig.add_vline(
        x=result.pairs[0].chance,
        line_dash="dash",
        annotation_text=f"random {result.k}-subsets",
        annotation_position="top",
    )
    fig.update_layout(
        title=f"Top-{result.k} MLP units per layer shared, task pair vs control pairs "
        "(error bars: 95% bootstrap over prompts)",
        xaxis_title="shared fraction Σ|A∩B| / Σk",
        xaxis_tickformat=".0%",
        xaxis_range=[0, 1.05],
        template="plotly_white",
        height=160 + 45 * len(result.pairs),
    )
    return fig


def overlap_figure(result: SharedNeuronsResult) -> go.Figure:
    """Per-layer overlap of the task pair (bars), control pairs (lines), 95% intervals, chance."""
    layers = list(range(result.n_layers))
    chance = result.expected_count / result.k
    stars = ["★" if p < 0.01 else "" for p in result.p_value]
    test = next((p for p in result.pairs if p.kind == "test"), None)
    fig = go.Figure()
    error = None
    if test is not None:
        error = {
            "type": "data",
            "symmetric": False,
            "array": test.by_layer[:, 2] - test.by_layer[:, 0],
            "arrayminus": test.by_layer[:, 0] - test.by_layer[:, 1],
        }
    fig.add_bar(
        x=layers,
        y=result.overlap_fraction,
        name=f"|A∩B| / k ({label(test.name) if test else 'compared pair'})",
        text=stars,
        textposition="outside",
        error_y=error,
        customdata=np.stack([result.overlap_count, result.p_value, result.jaccard], axis=-1),
        hovertemplate="layer %{x}<br>|A∩B|/k = %{y:.3f} (%{customdata[0]} units)"
        "<br>Jaccard %{customdata[2]:.3f}<br>p vs random subsets = %{customdata[1]:.2e}<extra></extra>",
        marker_color=COLOURS["shared"],
    )
    for pair in result.pairs:
        if pair.kind == "test":
            continue
        fig.add_scatter(
            x=layers,
            y=pair.by_layer[:, 0],
            mode="lines+markers",
            name=f"{KIND_NAMES[pair.kind]}: {label(pair.name)}",
            line={"color": COLOURS[pair.kind], "dash": "solid" if pair.kind == "ceiling" else "dot"},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": pair.by_layer[:, 2] - pair.by_layer[:, 0],
                "arrayminus": pair.by_layer[:, 0] - pair.by_layer[:, 1],
                "thickness": 1,
            },
        )
    fig.add_scatter(
        x=layers, y=chance, mode="lines", name="random subsets k/n", line={"dash": "dash", "color": "black"}
    )
    a, b = _names(result)
    fig.update_layout(
        title=f"Top-{result.k} MLP units shared by {a} and {b} per layer, with control pairs "
        "(95% bootstrap; ★ p < 0.01 vs random subsets only)",
        xaxis_title="layer",
        yaxis_title="overlap |A∩B| / k",
        yaxis_range=[0, 1.12],
        template="plotly_white",
    )
    return fig


def membership_figure(result: SharedNeuronsResult) -> go.Figure:
    """Layer × rank heatmaps of each set's top units, coloured by membership."""
    a, b = _names(result)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=(f"top units of {a}", f"top units of {b}"), shared_yaxes=True
    )
    for col, (top, other, own_name) in enumerate(
        ((result.top_a, result.top_b, "A-only"), (result.top_b, result.top_a, "B-only")), start=1
    ):
        shared = np.stack([np.isin(top[layer], other[layer]) for layer in range(result.n_layers)])
        hover = [
            [
                f"unit {unit} · {'shared' if s else own_name}"
                for unit, s in zip(row_units, row_shared, strict=True)
            ]
            for row_units, row_shared in zip(top.tolist(), shared.tolist(), strict=True)
        ]
        fig.add_trace(
            go.Heatmap(
                z=shared.astype(float),
                x=list(range(1, result.k + 1)),
                y=[f"L{layer}" for layer in range(result.n_layers)],
                customdata=hover,
                hovertemplate="%{y} rank %{x}<br>%{customdata}<extra></extra>",
                colorscale=[[0, COLOURS[own_name]], [1, COLOURS["shared"]]],
                zmin=0,
                zmax=1,
                showscale=False,
                xgap=1,
                ygap=1,
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="rank within layer")
    fig.update_layout(
        title="Top units by layer and rank: purple = in both top sets, blue/orange = one set only",
        template="plotly_white",
        height=max(320, 22 * result.n_layers + 160),
    )
    return fig


def venn_figure(result: SharedNeuronsResult) -> go.Figure:
    """Stacked per-layer counts: A only, shared, B only."""
    layers = list(range(result.n_layers))
    shared = result.overlap_count
    only_a = np.asarray([len(set(result.top_a[layer]) - set(result.top_b[layer])) for layer in layers])
    only_b = np.asarray([len(set(result.top_b[layer]) - set(result.top_a[layer])) for layer in layers])
    a, b = _names(result)
    fig = go.Figure()
    for name, values, colour in (
        (f"{a} only", only_a, COLOURS["A-only"]),
        ("shared", shared, COLOURS["shared"]),
        (f"{b} only", only_b, COLOURS["B-only"]),
    ):
        fig.add_bar(x=layers, y=values, name=f"{name} ({int(values.sum())})", marker_color=colour)
    fig.update_layout(
        barmode="stack",
        title=f"Venn counts per layer (A only | shared | B only): {int(only_a.sum())} | "
        f"{int(shared.sum())} | {int(only_b.sum())} units",
        xaxis_title="layer",
        yaxis_title="units",
        template="plotly_white",
    )
    return fig


def heads_figure(result: SharedNeuronsResult) -> go.Figure:
    """Head output-norm heatmaps per set with top-head membership."""
    n_heads = result.head_scores_a.shape[1]
    membership = np.zeros(result.n_layers * n_heads)
    membership[result.head_top_a] += 1
    membership[result.head_top_b] += 2
    names = np.asarray(["", "A-only", "B-only", "shared"])[membership.astype(int)].reshape(
        result.n_layers, n_heads
    )
    a, b = _names(result)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"head output norm · {a}", f"head output norm · {b}"),
        shared_yaxes=True,
    )
    for col, scores in enumerate((result.head_scores_a, result.head_scores_b), start=1):
        fig.add_trace(
            go.Heatmap(
                z=scores,
                x=[f"H{h}" for h in range(n_heads)],
                y=[f"L{layer}" for layer in range(result.n_layers)],
                text=names,
                texttemplate="%{text}",
                textfont={"size": 11},
                colorscale="Blues",
                showscale=col == 2,
                hovertemplate="%{y} %{x}<br>mean ‖z W_O‖ = %{z:.3g}<br>%{text}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    test = next((p for p in result.pairs if p.kind == "test"), None)
    shared = test.heads.text(percent=True) if test else f"{result.head_overlap}"
    fig.update_layout(
        title=f"Attention heads: top {len(result.head_top_a)} per set, shared {shared} "
        f"(random subsets {result.head_expected:.1f} heads, p {format_p(result.head_p_value)})",
        template="plotly_white",
        height=max(320, 22 * result.n_layers + 160),
    )
    return fig


def causal_figure(result: SharedNeuronsResult, metric: str, axis: str) -> go.Figure:
    """Grouped bars per unit group and set with 95% intervals (held-out prompts)."""
    rows = result.causal_table()
    fig = go.Figure()
    shown = [c for c in result.conditions if metric != "delta_logprob" or c != "none"]
    for s, set_name in enumerate(result.eval_sets):
        picked = [next(r for r in rows if r["condition"] == c and r["set"] == set_name) for c in shown]
        values = np.asarray([r[metric] for r in picked])
        fig.add_bar(
            x=[f"{c} ({r['units']})" for c, r in zip(shown, picked, strict=True)],
            y=values,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": np.asarray([r[f"{metric}_high"] for r in picked]) - values,
                "arrayminus": values - np.asarray([r[f"{metric}_low"] for r in picked]),
                "visible": True,
            },
            name=f"{label(set_name)} (n = {picked[0]['n']})",
            marker_color=[COLOURS["A-only"], COLOURS["B-only"]][s % 2],
        )
    what = {"zero": "zero-ablated", "mean": "mean-ablated", "amplify": f"amplified ×{result.config.alpha:g}"}
    interval = "Wilson" if metric == "accuracy" else "Student t"
    fig.update_layout(
        barmode="group",
        title=f"Causal test on held-out prompts: units {what[result.config.intervention]} "
        f"(x: group, units changed); error bars: 95% {interval}",
        xaxis_title="units changed (random-A/B: magnitude-matched controls)",
        yaxis_title=axis,
        template="plotly_white",
    )
    return fig


def dissociation_figure(result: SharedNeuronsResult) -> go.Figure:
    """The dissociation contrasts with 95% bootstrap intervals; below 0 = the predicted direction."""
    effects = result.dissociation() or {}
    names = list(effects)
    values = np.asarray([effects[n].estimate for n in names])
    fig = go.Figure()
    fig.add_bar(
        x=values,
        y=names,
        orientation="h",
        marker_color=["#2ca02c" if effects[n].high < 0 else "#7f7f7f" for n in names],
        error_x={
            "type": "data",
            "symmetric": False,
            "array": np.asarray([effects[n].high for n in names]) - values,
            "arrayminus": values - np.asarray([effects[n].low for n in names]),
        },
        hovertemplate="%{y}: %{x:.3g}<extra></extra>",
        showlegend=False,
    )
    fig.add_vline(x=0, line_color="black")
    status, _ = result.verdict()
    fig.update_layout(
        title=f"Dissociation on held-out prompts (Δ log p, 95% bootstrap over prompts; green: interval "
        f"below 0). Separate components at 95%: {status}",
        xaxis_title="contrast of mean Δ log p(answer) (negative = predicted by separate components)",
        template="plotly_white",
        height=320,
    )
    return fig
