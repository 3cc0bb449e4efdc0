"""Shared-neuron analysis: which MLP units two tasks (or two models) share, and what they do.

Method (after "Do LLMs and VLMs Share Neurons for Inference?" and StreetMath, see
``shared/papers/README.md`` §4), defined cleanly:

1. **Unit** = one hidden activation of a block's MLP, the input of the down projection: for gated
   MLPs (Gemma, Llama) the product ``act(gate(x)) · up(x)``, for GPT-2 the post-GELU hidden.
   The TransformerBridge exposes it as ``blocks.{l}.mlp.out.hook_in`` for all three families.
   Attention heads are a second unit type, scored by the norm of their output ``z_h W_O^h``.
2. **Score** per set: mean |activation| over the prompt tokens (BOS excluded: its activations are
   outliers that would swamp every mean) or over the answer position only (the last prompt token,
   which predicts the answer). Optionally weighted by the mean |output weight| of the unit
   (StreetMath's importance: |W| column mean × activation). Means are streamed over right-padded
   batches with padding masked out, and the forward stops before the 262k-token unembedding;
   no activation cache is kept.
3. **Selection and overlap**: top-k units per layer per set; per layer |A∩B|/k, Jaccard, the
   count expected for two random k-subsets of n units, k²/n, and the hypergeometric p-value
   P(X ≥ observed). The overall p-value is exact: the per-layer hypergeometric laws convolved.
   Heads are selected globally (a layer has only a few).
4. **Causal check**: intervene on unit groups (shared, A-only, B-only, a random control of the
   A-only size drawn outside A∪B) by zeroing, mean-ablating (mean over both sets' tokens) or
   amplifying (×α), and measure the teacher-forced log-prob of the expected answer and greedy
   accuracy (every answer token is the argmax) on both sets, paired per prompt against the
   unmodified run.

Two-model mode compares one prompt set on two models of the same architecture (refusing
mismatches); the offline demo perturbs this model's block weights with seeded noise inside a
context manager that restores them bit-exactly (see :func:`perturbed_weights`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Config, Probe, Progress, Result, register, to_numpy
from lenslab.probes.plotting import label
from lenslab.probes.shared_neurons_stats import (  # noqa: F401 - re-exported
    Overlap,
    expected_overlap,
    overlap_p_value,
    overlap_stats,
    top_units,
    total_overlap_p_value,
)
from lenslab.probes.shared_neurons_units import (  # noqa: F401 - re-exported
    AnswerScores,
    EncodedItem,
    UnitStats,
    answer_scores,
    check_same_architecture,
    describe_architecture,
    encode_items,
    head_hook,
    head_output_weight,
    intervention_hooks,
    mlp_hook,
    mlp_width,
    perturbed_weights,
    unit_groups,
    unit_output_weight,
    unit_scores,
    unit_statistics,
)
from lenslab.probes.tasks import TaskSet, builtin_names, load_task_set

if TYPE_CHECKING:
    pass

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

    @classmethod
    def fast_for_tests(cls) -> SharedNeuronsConfig:
        """Small settings for the reliability tests."""
        return cls(n_prompts=4, causal=False)

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


# ------------------------------------------------------------------------------------------- probe
def resolve_sets(config: SharedNeuronsConfig) -> tuple[TaskSet, TaskSet | None]:
    """Load set A and (in tasks mode) set B from the config."""
    set_a = load_task_set(config.set_a, n=config.n_prompts, seed=config.seed)
    set_b = (
        None if config.mode == "models" else load_task_set(config.set_b, n=config.n_prompts, seed=config.seed)
    )
    return set_a, set_b


def load_model_b(session: ModelSession, spec: str) -> ModelSession:
    """The second model named by ``spec`` (loaded with the same device and dtype), checked to match."""
    other = ModelSession.load(spec, device=session.device, dtype=session.dtype)
    check_same_architecture(session, other)
    return other


@register
class SharedNeurons(Probe[SharedNeuronsConfig, SharedNeuronsResult]):
    """Which MLP units two prompt sets (or two models) share, versus chance, and what they do."""

    name = "shared_neurons"
    title = "Shared neurons"
    description = (
        "Top MLP units per layer for two prompt sets (or two models), their overlap against the "
        "chance level, and an ablation test of shared vs set-specific units."
    )
    config_cls = SharedNeuronsConfig
    result_cls = SharedNeuronsResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
    ) -> SharedNeuronsResult:
        """Run the analysis; ``prompt`` is only a description (the sets come from ``config``).

        In two-model mode ``config.model_b`` names the second model: ``'perturbed'`` builds the
        noise copy in place (see :func:`perturbed_weights`), anything else is loaded.
        """
        config.validate(session)
        if config.mode == "models" and config.model_b.strip() != PERTURBED:
            progress(0.0, f"loading {config.model_b}")
            return self.compare(
                session, load_model_b(session, config.model_b.strip()), config, progress, prompt
            )
        return self.compare(session, None, config, progress, prompt)

    def compare(
        self,
        session: ModelSession,
        session_b: ModelSession | None,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
        description: str = "",
    ) -> SharedNeuronsResult:
        """The analysis with an explicit second model (``None``: set B, or the perturbed copy)."""
        config.validate(session)
        if session_b is not None:
            check_same_architecture(session, session_b)
        set_a, set_b = resolve_sets(config)
        eval_sets = [set_a] if set_b is None else [set_a, set_b]
        missing = [s.name for s in eval_sets if not s.has_answers]
        if config.causal and missing:
            raise ValueError(
                f"the causal check needs an expected answer for every prompt; {missing} has prompts "
                "without one (use 'prompt => answer' lines) or switch the causal check off"
            )
        started = time.perf_counter()
        with session.lock:
            stats_a = unit_statistics(session, set_a.items, config.batch_size, progress, (0.0, 0.3))
            if config.mode == "tasks":
                assert set_b is not None
                stats_b = unit_statistics(session, set_b.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = set_a.name, set_b.name, session
            elif session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    stats_b = unit_statistics(session, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a = session.model_id
                label_b = f"{session.model_id} + noise {config.noise_scale:g}"
                scorer_b = session
            else:
                with session_b.lock:
                    stats_b = unit_statistics(session_b, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = session.model_id, session_b.model_id, session_b
            scoring_seconds = stats_a.seconds + stats_b.seconds
            n_scored = len(set_a.items) + (len(set_a.items) if set_b is None else len(set_b.items))

            n_units = mlp_width(session)
            k = config.units_per_layer(n_units)
            scores_a = unit_scores(session, stats_a, config.positions, config.score)
            if config.mode == "models" and session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    scores_b = unit_scores(session, stats_b, config.positions, config.score)
            else:
                scores_b = unit_scores(scorer_b, stats_b, config.positions, config.score)
            top_a, top_b = top_units(scores_a, k), top_units(scores_b, k)
            overlap = overlap_stats(top_a, top_b, n_units)

            heads_a = to_numpy(stats_a.head_mean(config.positions)).astype(np.float32)
            heads_b = to_numpy(stats_b.head_mean(config.positions)).astype(np.float32)
            n_all_heads = heads_a.size
            head_k = max(1, round(config.head_fraction * n_all_heads))
            head_top_a = np.argsort(-heads_a.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_top_b = np.argsort(-heads_b.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_shared = len(set(head_top_a.tolist()) & set(head_top_b.tolist()))

            conditions: list[str] = []
            group_sizes: list[int] = []
            logprob = np.zeros((0, len(eval_sets), 0))
            correct = np.zeros((0, len(eval_sets), 0))
            if config.causal:
                means = (stats_a.signed_all + (stats_b.signed_all if set_b is not None else 0)) / (
                    stats_a.tokens_all + (stats_b.tokens_all if set_b is not None else 0)
                )
                groups = unit_groups(top_a, top_b, n_units, config.seed)
                conditions = list(CONDITIONS) if set_b is not None else ["none", "shared", "A-only", "random"]
                encoded = [encode_items(session, s.items, with_answer=True) for s in eval_sets]
                width = max(len(e) for e in encoded)
                logprob = np.full((len(conditions), len(eval_sets), width), np.nan)
                correct = np.full((len(conditions), len(eval_sets), width), np.nan)
                steps = len(conditions) * len(eval_sets)
                for c, condition in enumerate(conditions):
                    chosen = {} if condition == "none" else groups[condition]
                    group_sizes.append(sum(len(u) for u in chosen.values()))
                    hooks = intervention_hooks(chosen, config.intervention, alpha=config.alpha, means=means)
                    for s, items in enumerate(encoded):
                        step = c * len(eval_sets) + s
                        progress(0.6 + 0.4 * step / steps, f"causal test: {condition} on {eval_sets[s].name}")
                        scores = answer_scores(session, items, hooks, config.batch_size)
                        logprob[c, s, : len(items)] = scores.logprob
                        correct[c, s, : len(items)] = scores.correct
        progress(1.0, "done")
        return SharedNeuronsResult(
            model_id=session.model_id,
            prompt=description or f"{label_a} vs {label_b}",
            config=config,
            mode=config.mode,
            label_a=label_a,
            label_b=label_b,
            prompts_a=set_a.prompts,
            answers_a=[item.answer for item in set_a.items],
            prompts_b=[] if set_b is None else set_b.prompts,
            answers_b=[] if set_b is None else [item.answer for item in set_b.items],
            n_units=n_units,
            k=k,
            mlp_scores_a=scores_a,
            mlp_scores_b=scores_b,
            top_a=top_a,
            top_b=top_b,
            overlap_count=overlap.count,
            overlap_fraction=overlap.fraction,
            jaccard=overlap.jaccard,
            expected_count=overlap.expected,
            p_value=overlap.p_value,
            shared_fraction=overlap.total_fraction,
            chance_fraction=overlap.total_expected_fraction,
            total_p_value=overlap.total_p_value,
            head_scores_a=heads_a,
            head_scores_b=heads_b,
            head_top_a=head_top_a,
            head_top_b=head_top_b,
            head_overlap=head_shared,
            head_expected=expected_overlap(n_all_heads, head_k, head_k),
            head_p_value=overlap_p_value(n_all_heads, head_k, head_k, head_shared),
            conditions=conditions,
            eval_sets=[s.name for s in eval_sets],
            group_sizes=np.asarray(group_sizes, dtype=np.int64),
            logprob=logprob,
            correct=correct,
            prompts_per_second=n_scored / max(scoring_seconds, 1e-9),
            seconds=time.perf_counter() - started,
        )


__all__ = [
    "SharedNeurons",
    "SharedNeuronsConfig",
    "SharedNeuronsResult",
    "answer_scores",
    "builtin_names",
    "check_same_architecture",
    "intervention_hooks",
    "overlap_stats",
    "perturbed_weights",
    "top_units",
    "unit_statistics",
]
