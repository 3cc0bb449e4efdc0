"""Config and Result of the shared-neuron analysis; :mod:`.probe` holds the probe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Result
from lenslab.probes.plotting import label
from lenslab.probes.shared_neurons.units import mlp_width

PERTURBED = "perturbed"
CONDITIONS = ("none", "shared", "A-only", "B-only", "random")
COLOURS = {"A-only": "#1f77b4", "shared": "#9467bd", "B-only": "#ff7f0e", "random": "#7f7f7f"}


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SharedNeuronsConfig(Config):
    """Settings of the shared-neuron analysis."""

    set_a: str = field(
        default="exact_arithmetic",
        metadata={
            "help": "prompt set A: a built-in name, a .txt/.jsonl path or 'prompt => answer' lines",
            "hidden": True,  # the app has its own set pickers
        },
    )
    set_b: str = field(
        default="approximate_arithmetic",
        metadata={"help": "prompt set B (ignored when comparing two models)", "hidden": True},
    )
    model_b: str = field(
        default="",
        metadata={
            "help": "compare two models on set A instead of two sets: 'perturbed' (a noise-perturbed "
            "copy of this model) or an HF folder / id of the same architecture; empty: compare sets",
            "hidden": True,
        },
    )
    noise_scale: float = field(
        default=0.05,
        metadata={
            "help": "noise of the perturbed copy, relative to each weight matrix's std",
            "min": 0.0,
            "max": 10.0,
        },
    )
    n_prompts: int = field(
        default=24, metadata={"help": "prompts per set (the first n)", "min": 2, "max": 2000}
    )
    positions: str = field(
        default="all",
        metadata={
            "help": "score over all prompt tokens (BOS excluded) or the answer position",
            "choices": ("all", "answer"),
        },
    )
    score: str = field(
        default="activation",
        metadata={
            "help": "mean |activation|, or weighted by the unit's mean |output weight| (StreetMath)",
            "choices": ("activation", "weighted"),
        },
    )
    top_fraction: float = field(
        default=0.01,
        metadata={"help": "fraction of units per layer taken as a set's top units", "min": 1e-4, "max": 0.5},
    )
    top_k: int = field(
        default=0, metadata={"help": "units per layer (overrides top fraction when > 0)", "min": 0}
    )
    head_fraction: float = field(
        default=0.1,
        metadata={"help": "fraction of all attention heads taken as top heads", "min": 0.01, "max": 0.5},
    )
    causal: bool = field(
        default=True, metadata={"help": "run the intervention test (needs expected answers)"}
    )
    intervention: str = field(
        default="zero",
        metadata={"help": "what to do to the chosen units", "choices": ("zero", "mean", "amplify")},
    )
    alpha: float = field(
        default=2.0,
        metadata={"help": "amplification factor (intervention 'amplify')", "min": -10.0, "max": 10.0},
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the built-in sets, random control and noise", "min": 0}
    )
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass", "min": 1, "max": 256})

    def validate(self, session: ModelSession) -> None:
        """Check numbers, that the sets resolve, and that k fits the MLP width."""
        super().validate(session)
        n_units = mlp_width(session)
        k = self.units_per_layer(n_units)
        if k >= n_units:
            raise ValueError(f"top units per layer ({k}) must be smaller than the MLP width ({n_units})")
        if not self.set_a.strip():
            raise ValueError("choose prompt set A")
        if not self.model_b.strip() and not self.set_b.strip():
            raise ValueError("choose prompt set B (or a second model to compare on set A)")

    def units_per_layer(self, n_units: int) -> int:
        """k: top units kept per layer (``top_k`` or ``top_fraction`` of ``n_units``, at least 1)."""
        return self.top_k if self.top_k > 0 else max(1, round(self.top_fraction * n_units))

    @property
    def mode(self) -> str:
        """'models' when a second model is named, else 'tasks'."""
        return "models" if self.model_b.strip() else "tasks"


# ------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class SharedNeuronsResult(Result):
    """Top units of two sets (or models), their overlap against chance, and the causal test."""

    probe = "shared_neurons"
    config: SharedNeuronsConfig
    mode: str  # "tasks" (set A vs set B, one model) or "models" (model A vs model B, set A)
    label_a: str
    label_b: str
    prompts_a: list[str]
    answers_a: list[str]
    prompts_b: list[str]
    answers_b: list[str]
    n_units: int
    k: int
    mlp_scores_a: Float[np.ndarray, "layer unit"]
    mlp_scores_b: Float[np.ndarray, "layer unit"]
    top_a: Int[np.ndarray, "layer k"]
    top_b: Int[np.ndarray, "layer k"]
    overlap_count: Int[np.ndarray, " layer"]
    overlap_fraction: Float[np.ndarray, " layer"]
    jaccard: Float[np.ndarray, " layer"]
    expected_count: Float[np.ndarray, " layer"]
    p_value: Float[np.ndarray, " layer"]
    shared_fraction: float
    chance_fraction: float
    total_p_value: float
    head_scores_a: Float[np.ndarray, "layer head"]
    head_scores_b: Float[np.ndarray, "layer head"]
    head_top_a: Int[np.ndarray, " k_heads"]  # flat indices layer * n_heads + head
    head_top_b: Int[np.ndarray, " k_heads"]
    head_overlap: int
    head_expected: float
    head_p_value: float
    conditions: list[str]  # "none" first (the unmodified model)
    eval_sets: list[str]
    group_sizes: Int[np.ndarray, " condition"]  # units changed per condition (all layers)
    logprob: Float[np.ndarray, "condition set item"]  # NaN-padded where a set has fewer items
    correct: Float[np.ndarray, "condition set item"]
    prompts_per_second: float
    seconds: float

    # ------------------------------------------------------------------------------ statistics
    @property
    def n_layers(self) -> int:
        """Number of layers scored."""
        return int(self.mlp_scores_a.shape[0])

    def causal_table(self) -> list[dict[str, Any]]:
        """Per condition and set: accuracy, mean log-prob, and the paired change vs no intervention ± SEM."""
        rows = []
        if not self.conditions:
            return rows
        for c, condition in enumerate(self.conditions):
            for s, set_name in enumerate(self.eval_sets):
                valid = ~np.isnan(self.logprob[0, s])
                delta = self.logprob[c, s, valid] - self.logprob[0, s, valid]
                delta_acc = self.correct[c, s, valid] - self.correct[0, s, valid]
                n = int(valid.sum())
                rows.append(
                    {
                        "condition": condition,
                        "set": set_name,
                        "units": int(self.group_sizes[c]),
                        "accuracy": float(self.correct[c, s, valid].mean()),
                        "logprob": float(self.logprob[c, s, valid].mean()),
                        "delta_logprob": float(delta.mean()),
                        "delta_logprob_sem": _sem(delta),
                        "delta_accuracy": float(delta_acc.mean()),
                        "delta_accuracy_sem": _sem(delta_acc),
                        "n": n,
                    }
                )
        return rows

    def dissociation(self) -> dict[str, float] | None:
        """StreetMath's test: Δlog-prob of A and of B when A-only (and B-only) units are changed."""
        if self.mode != "tasks" or "A-only" not in self.conditions or len(self.eval_sets) < 2:
            return None
        table = {(r["condition"], r["set"]): r for r in self.causal_table()}
        a, b = self.eval_sets[0], self.eval_sets[1]
        return {
            "A-only → ΔA": table["A-only", a]["delta_logprob"],
            "A-only → ΔB": table["A-only", b]["delta_logprob"],
            "B-only → ΔA": table["B-only", a]["delta_logprob"],
            "B-only → ΔB": table["B-only", b]["delta_logprob"],
            "random → ΔA": table["random", a]["delta_logprob"],
            "random → ΔB": table["random", b]["delta_logprob"],
        }

    def interpretation(self) -> str:
        """A plain-language reading of the overlap and of the dissociation test (markdown)."""
        a, b = self.label_a, self.label_b
        ratio = self.shared_fraction / max(self.chance_fraction, 1e-12)
        lines = [
            f"**Overlap.** {self.shared_fraction:.0%} of the top-{self.k} MLP units per layer are shared by "
            f"`{a}` and `{b}`, {ratio:.1f}× the {self.chance_fraction:.1%} expected for random sets "
            f"(p = {self.total_p_value:.2g}); {int((self.p_value < 0.01).sum())} of {self.n_layers} layers "
            "are individually above chance at p < 0.01."
        ]
        if self.conditions:
            table = {(r["condition"], r["set"]): r for r in self.causal_table()}
            what = {
                "zero": "Zeroing",
                "mean": "Mean-ablating",
                "amplify": f"Amplifying (×{self.config.alpha:g})",
            }
            for condition in self.conditions[1:]:
                rows = [(s, table[condition, s], table["none", s]) for s in self.eval_sets]
                parts = [
                    f"`{s}` {row['delta_logprob']:+.2f} ± {row['delta_logprob_sem']:.2f} "
                    f"(accuracy {base['accuracy']:.0%} → {row['accuracy']:.0%})"
                    for s, row, base in rows
                ]
                units = table[condition, self.eval_sets[0]]["units"]
                lines.append(
                    f"- {what[self.config.intervention]} the **{condition}** units ({units}) changes "
                    f"log p(answer) by " + ", ".join(parts)
                )
            gap = self.dissociation()
            if gap is not None:
                a_gap = gap["A-only → ΔA"] - gap["A-only → ΔB"]
                b_gap = gap["B-only → ΔB"] - gap["B-only → ΔA"]
                separates = a_gap < 0 and b_gap < 0
                lines.append(
                    f"**Dissociation.** A-only units hurt A {'more' if a_gap < 0 else 'less'} than B "
                    f"(ΔA − ΔB = {a_gap:+.2f}); B-only units hurt B {'more' if b_gap < 0 else 'less'} than A "
                    f"(ΔB − ΔA = {b_gap:+.2f}): the components "
                    + (
                        "**separate** in both directions."
                        if separates
                        else "do **not** separate in both directions."
                    )
                )
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Shared fraction vs chance, its p-value, baseline accuracies and the dissociation."""
        out: dict[str, Any] = {
            "shared fraction": self.shared_fraction,
            "chance": self.chance_fraction,
            "p-value": self.total_p_value,
            "units per layer": self.k,
        }
        if self.conditions:
            for s, set_name in enumerate(self.eval_sets):
                out[f"accuracy {set_name}"] = float(np.nanmean(self.correct[0, s]))
        gap = self.dissociation()
        if gap is not None:
            out["A-only ablation: ΔA − ΔB"] = gap["A-only → ΔA"] - gap["A-only → ΔB"]
        return out

    # -------------------------------------------------------------------------------- figures
    def figures(self) -> dict[str, go.Figure]:
        """Overlap vs chance by layer, rank heatmap by membership, Venn-style counts, causal bars."""
        figures = {
            "overlap": self._overlap_figure(),
            "membership": self._membership_figure(),
            "venn": self._venn_figure(),
            "heads": self._heads_figure(),
        }
        if self.conditions:
            figures["causal_logprob"] = self._causal_figure(
                "delta_logprob", "Δ log p(answer) vs no intervention"
            )
            figures["causal_accuracy"] = self._causal_figure("accuracy", "accuracy")
        return figures

    def _names(self) -> tuple[str, str]:
        return label(self.label_a), label(self.label_b)

    def _overlap_figure(self) -> go.Figure:
        layers = list(range(self.n_layers))
        chance = self.expected_count / self.k
        stars = ["★" if p < 0.01 else "" for p in self.p_value]
        fig = go.Figure()
        fig.add_bar(
            x=layers,
            y=self.overlap_fraction,
            name="|A∩B| / k",
            text=stars,
            textposition="outside",
            customdata=np.stack([self.overlap_count, self.p_value, self.jaccard], axis=-1),
            hovertemplate="layer %{x}<br>|A∩B|/k = %{y:.3f} (%{customdata[0]} units)"
            "<br>Jaccard %{customdata[2]:.3f}<br>p = %{customdata[1]:.2e}<extra></extra>",
            marker_color=COLOURS["shared"],
        )
        fig.add_scatter(
            x=layers, y=self.jaccard, mode="lines+markers", name="Jaccard", line={"color": "#2ca02c"}
        )
        fig.add_scatter(
            x=layers, y=chance, mode="lines", name="chance k/n", line={"dash": "dash", "color": "black"}
        )
        a, b = self._names()
        fig.update_layout(
            title=f"Top-{self.k} MLP units shared by {a} and {b}, per layer (★ p < 0.01 vs random sets)",
            xaxis_title="layer",
            yaxis_title="overlap",
            yaxis_range=[0, 1.08],
            template="plotly_white",
        )
        return fig

    def _membership_figure(self) -> go.Figure:
        a, b = self._names()
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=(f"top units of {a}", f"top units of {b}"), shared_yaxes=True
        )
        for col, (top, other, own_name) in enumerate(
            ((self.top_a, self.top_b, "A-only"), (self.top_b, self.top_a, "B-only")), start=1
        ):
            shared = np.stack([np.isin(top[layer], other[layer]) for layer in range(self.n_layers)])
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
                    x=list(range(1, self.k + 1)),
                    y=[f"L{layer}" for layer in range(self.n_layers)],
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
            height=max(320, 22 * self.n_layers + 160),
        )
        return fig

    def _venn_figure(self) -> go.Figure:
        layers = list(range(self.n_layers))
        shared = self.overlap_count
        only_a = np.asarray([len(set(self.top_a[layer]) - set(self.top_b[layer])) for layer in layers])
        only_b = np.asarray([len(set(self.top_b[layer]) - set(self.top_a[layer])) for layer in layers])
        a, b = self._names()
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

    def _heads_figure(self) -> go.Figure:
        n_heads = self.head_scores_a.shape[1]
        membership = np.zeros(self.n_layers * n_heads)
        membership[self.head_top_a] += 1
        membership[self.head_top_b] += 2
        names = np.asarray(["", "A-only", "B-only", "shared"])[membership.astype(int)].reshape(
            self.n_layers, n_heads
        )
        a, b = self._names()
        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(f"head output norm · {a}", f"head output norm · {b}"),
            shared_yaxes=True,
        )
        for col, scores in enumerate((self.head_scores_a, self.head_scores_b), start=1):
            fig.add_trace(
                go.Heatmap(
                    z=scores,
                    x=[f"H{h}" for h in range(n_heads)],
                    y=[f"L{layer}" for layer in range(self.n_layers)],
                    text=names,
                    texttemplate="%{text}",
                    textfont={"size": 9},
                    colorscale="Blues",
                    showscale=col == 2,
                    hovertemplate="%{y} %{x}<br>mean ‖z W_O‖ = %{z:.3g}<br>%{text}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_layout(
            title=f"Attention heads: top {len(self.head_top_a)} per set, {self.head_overlap} shared "
            f"(chance {self.head_expected:.1f}, p = {self.head_p_value:.2g})",
            template="plotly_white",
            height=max(320, 22 * self.n_layers + 160),
        )
        return fig

    def _causal_figure(self, metric: str, axis: str) -> go.Figure:
        rows = self.causal_table()
        fig = go.Figure()
        shown = [c for c in self.conditions if metric != "delta_logprob" or c != "none"]
        for s, set_name in enumerate(self.eval_sets):
            picked = [next(r for r in rows if r["condition"] == c and r["set"] == set_name) for c in shown]
            if metric == "accuracy":
                values = [r["accuracy"] for r in picked]
                errors = [np.sqrt(r["accuracy"] * (1 - r["accuracy"]) / max(r["n"], 1)) for r in picked]
            else:
                values = [r[metric] for r in picked]
                errors = [r[f"{metric}_sem"] for r in picked]
            fig.add_bar(
                x=[f"{c} ({r['units']})" for c, r in zip(shown, picked, strict=True)],
                y=values,
                error_y={"type": "data", "array": errors, "visible": True},
                name=label(set_name),
                marker_color=[COLOURS["A-only"], COLOURS["B-only"]][s % 2],
            )
        what = {
            "zero": "zero-ablated",
            "mean": "mean-ablated",
            "amplify": f"amplified ×{self.config.alpha:g}",
        }
        fig.update_layout(
            barmode="group",
            title=f"Causal test: units {what[self.config.intervention]} (x: group, units changed); "
            "error bars: SEM over prompts",
            xaxis_title="units changed",
            yaxis_title=axis,
            template="plotly_white",
        )
        return fig


def _sem(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
