"""The attention-heads result: every pattern of one prompt, per-head scores with n and intervals, figures."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Result
from lenslab.probes.plotting import add_clickable_cells, unique_labels
from lenslab.probes.stats import format_interval

SCORES = {
    "prev_token": "previous-token score (mean attention from i to i−1)",
    "first_token": "first-token (BOS sink) score (mean attention from i to position 0)",
    "induction": "induction score (repeated random tokens: attention to the token after the earlier copy)",
    "entropy": "entropy of the pattern, nats (mean over query positions)",
    "head_logit": "direct contribution to the predicted token's logit (last position)",
}


def _argmax(values: Float[np.ndarray, "layer head"]) -> tuple[int, int]:
    """(layer index, head) of the largest value, ignoring NaN; (0, 0) when all are NaN (1-token prompt)."""
    if np.isnan(values).all():
        return 0, 0
    index, head = np.unravel_index(int(np.nanargmax(values)), values.shape)
    return int(index), int(head)


@dataclass(frozen=True)
class AttentionConfig(Config):
    """Settings of the attention-heads probe."""

    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers (empty: all)"})
    induction: bool = field(default=True, metadata={"help": "score induction on repeated random tokens"})
    induction_length: int = field(
        default=50, metadata={"help": "length of the random sequence that is repeated", "min": 3, "max": 256}
    )
    induction_sequences: int = field(
        default=8, metadata={"help": "random sequences (the induction interval's n)", "min": 2, "max": 64}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random induction sequences", "min": 0})
    head_logits: bool = field(
        default=True, metadata={"help": "each head's direct contribution to the predicted token"}
    )
    focus_layer: int = field(
        default=-1, metadata={"help": "layer of the large pattern (-1: the top induction head)", "min": -1}
    )
    focus_head: int = field(default=-1, metadata={"help": "head of the large pattern (-1: auto)", "min": -1})

    def validate(self, session: ModelSession) -> None:
        """Types and ranges, then the layers against the model."""
        super().validate(session)
        layers = session.check_layers(self.layers)
        if self.focus_layer >= 0 and session.check_layer(self.focus_layer) not in layers:
            raise ValueError(f"focus_layer {self.focus_layer} is not among the chosen layers {layers}")
        if (self.focus_layer < 0) != (self.focus_head < 0):
            raise ValueError("give focus_layer and focus_head together (or leave both at -1)")
        n_heads = int(session.cfg.n_heads)
        if self.focus_head >= n_heads:
            raise ValueError(
                f"focus_head {self.focus_head} out of range: the model has {n_heads} heads (0-{n_heads - 1})"
            )
        if self.induction and 2 * self.induction_length + 1 > session.max_tokens:
            raise ValueError(
                f"induction_length {self.induction_length} makes sequences longer than the session's "
                f"max_tokens {session.max_tokens}"
            )


@dataclass(frozen=True)
class AttentionResult(Result):
    """Every attention pattern of the prompt and per-head scores (estimate, low, high) with their n."""

    probe = "attention"
    config: AttentionConfig
    tokens: list[str]
    layers: Int[np.ndarray, " layer"]
    windows: Int[np.ndarray, " layer"]  # sliding-window size of a local layer; 0 = global
    patterns: Float[np.ndarray, "layer head query key"]
    prev_token: Float[np.ndarray, "layer head 3"]  # mean over queries 1..n-1, Student-t interval
    first_token: Float[np.ndarray, "layer head 3"]
    entropy: Float[np.ndarray, "layer head 3"]
    n_queries: int  # query positions behind the prompt scores (all but position 0)
    induction: Float[np.ndarray, "layer head 3"]  # NaN when not computed
    induction_n: int  # random sequences (the interval is over sequences)
    induction_length: int
    head_logit: Float[np.ndarray, "layer head"]  # NaN when not computed
    predicted_token: str
    interval_method: str = "Student t over query positions (descriptive: positions are not independent)"

    # ------------------------------------------------------------------------------------ heads
    def layer_label(self, index: int) -> str:
        """``L5 · global`` / ``L0 · local 512``: the row label of a layer in every figure."""
        window = int(self.windows[index])
        return f"L{int(self.layers[index])} · " + (f"local {window}" if window else "global")

    def focus(self) -> tuple[int, int]:
        """(layer, head) of the large pattern: the config's, else the top induction (or prev-token) head."""
        if self.config.focus_layer >= 0 and self.config.focus_head >= 0:
            return int(self.config.focus_layer), int(self.config.focus_head)
        score = self.induction[..., 0] if self.induction_n else self.prev_token[..., 0]
        index, head = _argmax(score)
        return int(self.layers[index]), int(head)

    def head_at(self, figure: str, point: dict[str, Any]) -> tuple[int, int] | None:
        """(layer, head) of a clicked score-heatmap cell: y is ``L<n> · …``, x is ``H<h>``."""
        if figure not in SCORES:
            return None
        row = re.match(r"L(\d+)\b", str(point.get("y", "")))
        col = re.fullmatch(r"H(\d+)", str(point.get("x", "")))
        if not row or not col or int(row.group(1)) not in self.layers.tolist():
            return None
        return int(row.group(1)), int(col.group(1))

    # --------------------------------------------------------------------------------- summary
    def top_head(self, score: str) -> tuple[int, int, np.ndarray]:
        """(layer, head, [estimate, low, high]) of the highest-scoring head."""
        values = getattr(self, score)
        index, head = _argmax(values[..., 0])
        return int(self.layers[index]), int(head), values[index, head]

    def summary(self) -> dict[str, Any]:
        """The top previous-token, BOS-sink and induction heads with their intervals and n."""
        out: dict[str, Any] = {}
        for score, name in (("prev_token", "previous-token"), ("first_token", "BOS sink")):
            layer, head, (est, low, high) = self.top_head(score)
            out[f"top {name} head"] = (
                f"L{layer}H{head} {format_interval(est, low, high)} (n={self.n_queries})"
            )
        if self.induction_n:
            layer, head, (est, low, high) = self.top_head("induction")
            out["top induction head"] = (
                f"L{layer}H{head} {format_interval(est, low, high)} (n={self.induction_n})"
            )
        if not np.isnan(self.head_logit).all():
            index, head = _argmax(np.abs(self.head_logit))
            out[f"head writing most to {self.predicted_token!r}"] = (
                f"L{int(self.layers[index])}H{head} {self.head_logit[index, head]:+.3g}"
            )
        return out

    # --------------------------------------------------------------------------------- figures
    def figures(self) -> dict[str, go.Figure]:
        """The pattern grid, the focus head's pattern and one clickable layer × head heatmap per score."""
        figures = {"patterns": self.pattern_grid(), "head": self.head_figure(*self.focus())}
        for score in SCORES:
            if score == "induction" and not self.induction_n:
                continue
            if score == "head_logit" and np.isnan(self.head_logit).all():
                continue
            figures[score] = self.score_heatmap(score)
        return figures

    def pattern_grid(self) -> go.Figure:
        """Every layer × head pattern as a small heatmap (rows: layers, columns: heads)."""
        n_layers, n_heads = self.patterns.shape[:2]
        titles = [f"{self.layer_label(i)} H{h}" for i in range(n_layers) for h in range(n_heads)]
        fig = make_subplots(
            rows=n_layers, cols=n_heads, subplot_titles=titles, vertical_spacing=0.3 / n_layers,
            horizontal_spacing=0.03,
        )  # fmt: skip
        for i in range(n_layers):
            for h in range(n_heads):
                fig.add_trace(
                    go.Heatmap(
                        z=self.patterns[i, h],
                        coloraxis="coloraxis",
                        hovertemplate=f"{self.layer_label(i)} H{h}<br>query %{{y}} → key %{{x}}: "
                        "%{z:.3f}<extra></extra>",
                    ),
                    row=i + 1,
                    col=h + 1,
                )
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False, autorange="reversed")
        fig.update_annotations(font_size=9)
        fig.update_layout(
            title="Attention patterns (rows: query, columns: key)",
            coloraxis={"colorscale": "Blues", "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": "weight"}},
            height=max(300, 150 * n_layers),
            template="plotly_white",
        )
        return fig

    def head_figure(self, layer: int, head: int) -> go.Figure:
        """One head's pattern with the prompt's tokens on both axes."""
        index = self.layers.tolist().index(layer)
        axis = unique_labels(self.tokens)
        fig = go.Figure(
            go.Heatmap(
                z=self.patterns[index, head],
                x=axis,
                y=axis,
                colorscale="Blues",
                zmin=0.0,
                zmax=1.0,
                colorbar={"title": "weight"},
                hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>",
            )
        )
        scores = ", ".join(
            f"{name} {getattr(self, score)[index, head, 0]:.2f}"
            for score, name in (("prev_token", "prev"), ("first_token", "BOS"), ("induction", "induction"))
            if not math.isnan(getattr(self, score)[index, head, 0])
        )
        fig.update_layout(
            title=f"{self.layer_label(index)} head {head} ({scores})",
            xaxis={"title": "key (attended to)", "tickangle": -45},
            yaxis={"title": "query (attending)", "autorange": "reversed"},
            template="plotly_white",
            height=max(420, 18 * len(self.tokens) + 200),
        )
        return fig

    def score_heatmap(self, score: str) -> go.Figure:
        """Layer × head heatmap of one score; hover shows estimate [95% interval] and n; cells click."""
        rows = [self.layer_label(i) for i in range(len(self.layers))]
        columns = [f"H{h}" for h in range(self.patterns.shape[1])]
        if score == "head_logit":
            values = self.head_logit
            hover = [[f"{v:+.4f} (one position: no interval)" for v in row] for row in values.tolist()]
            limit = float(np.nanmax(np.abs(values))) or 1.0
            scale = {"colorscale": "RdBu", "zmid": 0.0, "zmin": -limit, "zmax": limit}
        else:
            data = getattr(self, score)
            values = data[..., 0]
            n = self.induction_n if score == "induction" else self.n_queries
            unit = "sequences" if score == "induction" else "query positions"
            hover = [[f"{format_interval(*cell)} (n={n} {unit})" for cell in row] for row in data.tolist()]
            bounded = score != "entropy"
            scale = {"colorscale": "Viridis" if bounded else "Magma", "zmin": 0.0}
            if bounded:
                scale["zmax"] = 1.0
        fig = go.Figure(go.Heatmap(z=values, x=columns, y=rows, colorbar={"title": score}, **scale))
        add_clickable_cells(fig, columns, rows, hover)
        fig.update_layout(
            title=SCORES[score][0].upper() + SCORES[score][1:],
            xaxis_title="head",
            yaxis={"title": "layer", "autorange": "reversed"},
            template="plotly_white",
            height=max(320, 22 * len(rows) + 160),
        )
        return fig
