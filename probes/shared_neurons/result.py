"""Config and Result of the shared-neuron analysis; :mod:`.probe` holds the probe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Result
from lenslab.probes.shared_neurons.stats import format_p
from lenslab.probes.shared_neurons.tasks import builtin_names
from lenslab.probes.shared_neurons.units import mlp_width
from lenslab.probes.stats import Interval, format_interval, mean_ci, wilson

PERTURBED = "perturbed"
CONDITIONS = ("none", "shared", "A-only", "B-only", "random-A", "random-B")
MODEL_CONDITIONS = ("none", "shared", "A-only", "random-A")
MIN_BASELINE_ACCURACY = 0.3  # below this, accuracy has too little room to fall under ablation
# Contrast names of the dissociation test (Δ = change of log p(answer) under ablation, per prompt).
GAP_A = "A-only: ΔA − ΔB"
GAP_B = "B-only: ΔB − ΔA"
INTERACTION = "interaction"
SPECIFIC_A = "A-only − random-A, on A"
SPECIFIC_B = "B-only − random-B, on B"
# Overlap comparisons (shared fraction of the task pair against the control pairs).
VS_CEILING = "task pair − same-task halves"
VS_FLOOR = "task pair − task vs control"
RELATIVE = "relative position (0 = control, 1 = same task)"


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
        default=32,
        metadata={
            "help": "prompts per set (the first n), split in half: units are selected on one half "
            "and ablated on the other",
            "min": 4,
            "max": 2000,
        },
    )
    positions: str = field(
        default="answer",
        metadata={
            "help": "score at the answer position (the last prompt token, which predicts the answer) "
            "or, labelled 'all', over every prompt token (BOS excluded; includes the few-shot context)",
            "choices": ("answer", "all"),
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
        default=0,
        metadata={
            "help": "seed of the built-in sets, the split, the random control, noise and bootstrap",
            "min": 0,
        },
    )
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass", "min": 1, "max": 256})
    control: str = field(
        default="capitals",
        metadata={
            "help": "control task for the floor of the overlap (a task unrelated to both sets): a "
            "built-in name, a .txt/.jsonl path or typed lines; empty: no floor",
            "hidden": True,
        },
    )
    resamples: int = field(
        default=1000, metadata={"help": "bootstrap resamples of the intervals", "min": 100, "max": 10000}
    )

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
        if self.control.strip() and self.control.strip() in (self.set_a.strip(), self.set_b.strip()):
            raise ValueError(
                f"control {self.control!r} must differ from the compared sets: the floor is an unrelated "
                f"task (e.g. one of {builtin_names()})"
            )

    def units_per_layer(self, n_units: int) -> int:
        """k: top units kept per layer (``top_k`` or ``top_fraction`` of ``n_units``, at least 1)."""
        return self.top_k if self.top_k > 0 else max(1, round(self.top_fraction * n_units))

    @property
    def mode(self) -> str:
        """'models' when a second model is named, else 'tasks'."""
        return "models" if self.model_b.strip() else "tasks"


# ------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class PairOverlap:
    """Top-unit overlap of one pair of selections, with its bootstrap interval over prompts.

    ``kind`` says how to read it: ``test`` (the compared pair), ``ceiling`` (two disjoint halves
    of one task: the overlap prompt sampling alone leaves) or ``floor`` (a task against an
    unrelated control task: what generic, always-active units give).
    """

    name: str
    kind: str  # "test", "ceiling" or "floor"
    first: str
    second: str
    n_first: int  # prompts behind each selection
    n_second: int
    fraction: Interval  # Σ_layers |A∩B| / Σ_layers k
    by_layer: Float[np.ndarray, "layer 3"]  # per layer: |A∩B|/k, 95% low, 95% high
    chance: float  # expected fraction for random k-subsets (k/n)
    p_value: float  # hypergeometric P(overlap ≥ observed) under random k-subsets
    heads: Interval  # overlap fraction of the top heads (selected over the whole model)


@dataclass(frozen=True)
class SharedNeuronsResult(Result):
    """Top units of two sets (or models), their overlap against control pairs, and the causal test.

    The headline overlap fields (``overlap_count`` … ``total_p_value``) compare the two
    selection halves; ``pairs`` adds the control pairs with intervals; the causal arrays hold the
    held-out prompts (``heldout_a`` / ``heldout_b`` index ``prompts_a`` / ``prompts_b``).
    """

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
    logprob: Float[np.ndarray, "condition set item"]  # held-out prompts; NaN past a set's end
    correct: Float[np.ndarray, "condition set item"]
    prompts_per_second: float
    seconds: float
    # Protocol data (empty in reports saved before the split and the control pairs existed).
    control_label: str = ""
    select_a: list[int] = field(default_factory=list)  # indices into prompts_a that chose the units
    heldout_a: list[int] = field(default_factory=list)  # indices into prompts_a of the causal test
    select_b: list[int] = field(default_factory=list)
    heldout_b: list[int] = field(default_factory=list)
    pairs: list[PairOverlap] = field(default_factory=list)
    comparisons: dict[str, Interval] = field(default_factory=dict)  # VS_CEILING, VS_FLOOR, RELATIVE
    effects: dict[str, Interval] = field(default_factory=dict)  # GAP_A, GAP_B, INTERACTION, SPECIFIC_*
    control_ks: dict[str, tuple[float, float]] = field(default_factory=dict)  # control → (KS D, p)
    # What the random controls are matched on, its per-unit scores, and the controls' KS test on
    # the selection score itself (which the top sets dominate by definition; shown, not required).
    control_match: str = ""
    selection_ks: dict[str, tuple[float, float]] = field(default_factory=dict)
    match_scores: Float[np.ndarray, "layer unit"] = field(
        default_factory=lambda: np.zeros((0, 0), np.float32)
    )

    # ------------------------------------------------------------------------------ statistics
    @property
    def n_layers(self) -> int:
        """Number of layers scored."""
        return int(self.mlp_scores_a.shape[0])

    def causal_table(self) -> list[dict[str, Any]]:
        """Per condition and set: accuracy and the paired change of log p(answer) and accuracy, with 95% CIs.

        Accuracy has a Wilson interval; the changes are means of per-prompt paired differences
        against no intervention with Student-t intervals (n = held-out prompts).
        """
        rows: list[dict[str, Any]] = []
        for c, condition in enumerate(self.conditions):
            for s, set_name in enumerate(self.eval_sets):
                valid = ~np.isnan(self.logprob[0, s])
                delta = self.logprob[c, s, valid] - self.logprob[0, s, valid]
                delta_acc = self.correct[c, s, valid] - self.correct[0, s, valid]
                n = int(valid.sum())
                accuracy = wilson(int(self.correct[c, s, valid].sum()), n)
                change = mean_ci(delta)
                change_acc = mean_ci(delta_acc)
                rows.append(
                    {
                        "condition": condition,
                        "set": set_name,
                        "units": int(self.group_sizes[c]),
                        "n": n,
                        "accuracy": accuracy.estimate,
                        "accuracy_low": accuracy.low,
                        "accuracy_high": accuracy.high,
                        "logprob": float(self.logprob[c, s, valid].mean()),
                        "delta_logprob": change.estimate,
                        "delta_logprob_low": 0.0 if c == 0 else change.low,
                        "delta_logprob_high": 0.0 if c == 0 else change.high,
                        "delta_accuracy": change_acc.estimate,
                        "delta_accuracy_low": 0.0 if c == 0 else change_acc.low,
                        "delta_accuracy_high": 0.0 if c == 0 else change_acc.high,
                    }
                )
        return rows

    def causal_text_table(self) -> list[dict[str, str | int]]:
        """:meth:`causal_table` as display strings ``x [lo, hi]`` (no raw floats)."""
        return [
            {
                "units changed": f"{r['condition']} ({r['units']})",
                "set": r["set"],
                "n prompts": r["n"],
                "accuracy": format_interval(
                    r["accuracy"], r["accuracy_low"], r["accuracy_high"], percent=True
                ),
                "Δ log p(answer)": format_interval(
                    r["delta_logprob"], r["delta_logprob_low"], r["delta_logprob_high"], digits=2
                ),
                "Δ accuracy": format_interval(
                    r["delta_accuracy"], r["delta_accuracy_low"], r["delta_accuracy_high"], percent=True
                ),
            }
            for r in self.causal_table()
        ]

    def pair_text_table(self) -> list[dict[str, str | int]]:
        """The overlap of every pair (task pair and control pairs) as display strings."""
        return [
            {
                "pair": p.name,
                "kind": {
                    "test": "compared",
                    "ceiling": "ceiling: same task, two halves",
                    "floor": "floor: vs control",
                }[p.kind],
                "prompts": f"{p.n_first} + {p.n_second}",
                "shared MLP units": p.fraction.text(percent=True),
                "random subsets": f"{100 * p.chance:.1f}% (p {format_p(p.p_value)})",
                "shared heads": p.heads.text(percent=True),
            }
            for p in self.pairs
        ]

    def baseline_accuracy(self) -> dict[str, Interval]:
        """Unmodified greedy accuracy of each evaluated set on its held-out prompts (Wilson)."""
        if not self.conditions:
            return {}
        out = {}
        for s, set_name in enumerate(self.eval_sets):
            valid = ~np.isnan(self.correct[0, s])
            out[set_name] = wilson(int(self.correct[0, s, valid].sum()), int(valid.sum()))
        return out

    def dissociation(self) -> dict[str, Interval] | None:
        """The dissociation contrasts with 95% bootstrap intervals (None without a two-set causal test)."""
        if self.mode != "tasks" or not self.effects:
            return None
        return dict(self.effects)

    def warnings(self) -> list[str]:
        """What limits the reading of this run (low accuracy, poor control match, no controls)."""
        out = []
        for set_name, accuracy in self.baseline_accuracy().items():
            if accuracy.estimate < MIN_BASELINE_ACCURACY:
                out.append(
                    f"Baseline accuracy of `{set_name}` is {accuracy.text(percent=True)} (n = {accuracy.n}): "
                    f"below {MIN_BASELINE_ACCURACY:.0%}, ablation has little accuracy left to remove, so "
                    "accuracy changes are not measurable; read the Δ log p(answer) effects instead."
                )
        for name, (_, p) in self.control_ks.items():
            if math.isfinite(p) and p < 0.05:
                out.append(
                    f"The `{name}` control is not fully magnitude-matched on the "
                    f"{self.control_match or 'selection score'} (KS p = {format_p(p)}): too few free "
                    "units at the selected units' activation ranks."
                )
        if self.control_match.startswith("selection score"):
            out.append(
                "No control task was scored, so the random controls are matched on the selection score, "
                "whose strongest ranks are the selected units themselves: the controls are weaker units."
            )
        if self.pairs and not any(p.kind == "floor" for p in self.pairs):
            out.append("No control task was scored: the overlap has no cross-task floor.")
        if self.config.positions == "all":
            out.append(
                "Scored over all prompt tokens: shared few-shot context inflates the overlap of any two "
                "sets with similar prompts; the answer position is the task-specific default."
            )
        return out

    def verdict(self) -> tuple[str, list[str]]:
        """Whether the two sets use largely separate components, at 95%: status and reasons.

        Status is ``holds`` when both (1) the task pair shares fewer top units than two halves of
        one task (interval of the difference below 0) and (2) the double dissociation holds
        (each set's own units hurt it more than the other set, both intervals below 0);
        ``partly`` when one of the two holds; ``does not hold`` when neither; ``not tested``
        when the run has no control pairs or no two-set causal test.
        """
        reasons: list[str] = []
        checks: list[bool] = []
        ceiling = self.comparisons.get(VS_CEILING)
        if ceiling is not None and math.isfinite(ceiling.high):
            below = ceiling.high < 0
            checks.append(below)
            reasons.append(
                f"overlap of the task pair minus the same-task ceiling = {ceiling.text(percent=True)}: "
                + ("below the ceiling" if below else "not below the ceiling")
            )
        gaps = self.dissociation()
        if gaps is not None and GAP_A in gaps:
            a, b = gaps[GAP_A], gaps[GAP_B]
            double = a.high < 0 and b.high < 0
            checks.append(double)
            reasons.append(
                f"A-only ablation hurts A more than B: ΔA − ΔB = {a.text(digits=2)}; B-only ablation hurts "
                f"B more than A: ΔB − ΔA = {b.text(digits=2)}; "
                + ("a double dissociation" if double else "no double dissociation")
            )
        if len(checks) < 2:
            return "not tested", reasons
        status = "holds" if all(checks) else ("partly" if any(checks) else "does not hold")
        return status, reasons

    def interpretation(self, with_warnings: bool = True) -> str:
        """Plain-language reading: overlap vs control pairs, the causal test, the verdict (markdown)."""
        a, b = self.label_a, self.label_b
        lines = []
        test = next((p for p in self.pairs if p.kind == "test"), None)
        if test is not None:
            controls = "; ".join(
                f"{'same task, two halves' if p.kind == 'ceiling' else 'vs control'} `{p.name}` "
                f"{p.fraction.text(percent=True)}"
                for p in self.pairs
                if p.kind != "test"
            )
            lines.append(
                f"**Overlap.** `{a}` and `{b}` share {test.fraction.text(percent=True)} of their "
                f"top-{self.k} MLP units per layer (units chosen on {test.n_first} + {test.n_second} "
                "selection prompts, "
                f"95% bootstrap over prompts). Control pairs: {controls}. Random {self.k}-subsets would "
                f"share {100 * test.chance:.1f}% (p {format_p(test.p_value)}): any two text sets beat that "
                "null, so read the task pair against the control pairs."
            )
            relative = self.comparisons.get(RELATIVE)
            if relative is not None:
                lines.append(
                    "On a scale from the control pair (0) to the same-task halves (1), the task pair "
                    f"sits at {relative.text(digits=2)}."
                )
        else:
            lines.append(
                f"**Overlap.** {self.shared_fraction:.0%} of the top-{self.k} MLP units per layer are "
                f"shared by `{a}` and `{b}` (random sets: {self.chance_fraction:.1%}, "
                f"p {format_p(self.total_p_value)})."
            )
        if self.conditions:
            table = {(r["condition"], r["set"]): r for r in self.causal_table()}
            what = {
                "zero": "Zeroing",
                "mean": "Mean-ablating",
                "amplify": f"Amplifying (×{self.config.alpha:g})",
            }
            for condition in self.conditions[1:]:
                parts = []
                for s in self.eval_sets:
                    row, base = table[condition, s], table["none", s]
                    change = format_interval(
                        row["delta_logprob"], row["delta_logprob_low"], row["delta_logprob_high"], digits=2
                    )
                    parts.append(
                        f"`{s}` {change} (accuracy {base['accuracy']:.0%} → {row['accuracy']:.0%}, "
                        f"n = {row['n']})"
                    )
                units = table[condition, self.eval_sets[0]]["units"]
                lines.append(
                    f"- {what[self.config.intervention]} the **{condition}** units ({units}) changes "
                    "log p(answer) on held-out prompts by " + ", ".join(parts)
                )
            gaps = self.dissociation()
            if gaps:
                lines.append(
                    f"**Dissociation** (held-out prompts, 95% bootstrap): A-only units, ΔA − ΔB = "
                    f"{gaps[GAP_A].text(digits=2)}; B-only units, ΔB − ΔA = {gaps[GAP_B].text(digits=2)}; "
                    f"interaction {gaps[INTERACTION].text(digits=2)} (negative: each set's own units hurt it "
                    f"more); against magnitude-matched random units: {gaps[SPECIFIC_A].text(digits=2)} on "
                    f"`{a}`, {gaps[SPECIFIC_B].text(digits=2)} on `{b}`"
                    + (
                        f" (matched in activation rank on the {self.control_match})."
                        if self.control_match
                        else "."
                    )
                )
        status, reasons = self.verdict()
        if status != "not tested":
            said = {
                "holds": "**holds**",
                "partly": "holds only **partly**",
                "does not hold": "does **not** hold",
            }[status]
            lines.append(
                f"**Verdict at 95% on `{self.model_id}`:** the claim that `{a}` and `{b}` use largely "
                f"separate components {said}: " + "; ".join(reasons) + "."
            )
        if with_warnings:
            lines += [f"⚠️ {w}" for w in self.warnings()]
        return "\n\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Headline strings: overlap vs control pairs with intervals, accuracies, dissociation, verdict."""
        test = next((p for p in self.pairs if p.kind == "test"), None)
        out: dict[str, Any] = {
            "shared fraction": test.fraction.text(percent=True)
            if test
            else f"{100 * self.shared_fraction:.1f}%",
        }
        for kind, name in (("ceiling", "same-task halves"), ("floor", "vs control task")):
            chosen = [p.fraction.estimate for p in self.pairs if p.kind == kind]
            if chosen:
                out[name] = f"{100 * float(np.mean(chosen)):.1f}%"
        out["random subsets"] = f"{100 * self.chance_fraction:.1f}% (p {format_p(self.total_p_value)})"
        out["units per layer"] = self.k
        for set_name, accuracy in self.baseline_accuracy().items():
            out[f"accuracy {set_name}"] = accuracy.text(percent=True)
        gaps = self.dissociation()
        if gaps:
            out["dissociation interaction"] = gaps[INTERACTION].text(digits=2)
        status, _ = self.verdict()
        if status != "not tested":
            out["separate components (95%)"] = status
        return out

    def figures(self) -> dict[str, go.Figure]:
        """Overlap vs control pairs, by layer, membership, Venn counts, heads, causal bars, dissociation."""
        from lenslab.probes.shared_neurons import figures

        return figures.all_figures(self)
