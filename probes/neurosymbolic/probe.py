r"""Neurosymbolic hidden-state encoding: read a problem out, solve it exactly, write it back.

A hidden state is read as a vector-symbolic structure (Dhanraj & Eliasmith 2025, §5 of
shared/papers/README.md).

For a typed problem ("What is 48 * 7?") the probe builds the fixed few-shot prompt, reads the
hidden state of the prompt's last token through the fitted linear encoder (per layer), decodes the
operation (by score against the operation atoms; the system acts only above ``threshold``) and
the operands (unbinding the roles, cleaning up the digits), computes the exact answer, and
generates the model's answer greedily with and without the merge h ← (1−w)·h + w·decoded at the
answer positions.

Multi-token answers with Gemma's tokenizer: every digit is its own token, so "336\n" is four
steps. Step j (the j-th written digit, then the newline) gets its own decoded vector — the VSA
answer with the j-th digit's position unbound and cleaned up, plus a step atom — merged at the
position that predicts token j. Greedy generation re-runs the sequence each step and applies
the same merges at all earlier answer positions, so generation and the teacher-forced evaluation
see identical interventions. See :mod:`.pipeline` for fitting, :mod:`.readout` for reading out
and evaluation, :mod:`.vsa` for the algebra.

Deviations from the paper (see docs/neurosymbolic.md): operands below 100 by default
instead of 1000 (CPU budget; configurable), a few hundred training problems instead of
thousands, ridge fits only (the decoder's optional cross-entropy fine-tune is not implemented),
merge at every answer token rather than only the first (the first token alone cannot fix a
multi-digit answer), operation "similarity" is the dot product with unit-norm atoms (the weight
of the atom, ≈1 when present), and the gate also requires the read-out confidence of every slot
(operation and operand digits) to reach a threshold calibrated on held-out problems
(:mod:`.gate`; ``calibrated_gate=False`` restores the paper's operation-score gate alone).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register
from lenslab.probes.neurosymbolic.artefact import FORMAT, Artefact, TrainConfig, artefact_folder
from lenslab.probes.neurosymbolic.fit import Merge, collect
from lenslab.probes.neurosymbolic.pipeline import fit_artefact
from lenslab.probes.neurosymbolic.readout import answer_tokens, decoded_steps, greedy_answer, read_out
from lenslab.probes.neurosymbolic.tasks import (
    OPERATIONS,
    Problem,
    default_shots,
    few_shot_prompt,
    parse_problem,
)
from lenslab.probes.plotting import label
from lenslab.probes.stats import format_interval
from lenslab.progress import NO_PROGRESS, Progress

DEFAULT_PROBLEM = "What is 48 * 7?"
CURVE_METRICS = {
    "operation_accuracy": "operation accuracy (1 − encoder classification error)",
    "problem_accuracy": "whole problem read right (operation and both operands)",
    "number_accuracy": "operand accuracy (whole number)",
    "digit_accuracy": "operand digit accuracy",
    "cosine": "cosine to target vector",
    "fired": "gate coverage (share the system acts on)",
    "gate_precision": "gate precision (read right when it acts)",
    "decoder_r2": "decoder R² beyond step means (validation, point estimate)",
}
# Evaluation columns: (key in the evaluation rows, header). The baseline is the model on the same
# few-shot prompts; a chain-of-thought baseline would be one more row family here (see the doc).
EVALUATION_COLUMNS = {
    "fired": "acts (coverage)",
    "gate_precision": "read right when acting",
    "system_correct": "system answer right",
    "few_shot_accuracy": "few-shot exact match",
    "merged_accuracy": "merged exact match",
    "oracle_accuracy": "oracle exact match",
    "few_shot_ce": "few-shot CE (nats)",
    "merged_ce": "merged CE (nats)",
    "oracle_ce": "oracle CE (nats)",
    "merged_ce_change": "merged − few-shot CE (paired)",
    "oracle_ce_change": "oracle − few-shot CE (paired)",
    "merged_accuracy_change": "merged − few-shot exact match",
}
_CACHE: dict[tuple[str, float], Artefact] = {}


@dataclass(frozen=True)
class NeurosymbolicConfig(Config):
    """Settings for reading out one typed problem (the encoders are fitted separately)."""

    layer: int = field(
        default=-1,
        metadata={"help": "encoder layer to read (-1: the best layer found when fitting)", "min": -1},
    )
    threshold: float = field(
        default=0.8, metadata={"help": "act only if the best operation score exceeds this", "min": -10.0}
    )
    merge_weight: float = field(
        default=0.5, metadata={"help": "w in h ← (1−w)·h + w·decoded", "min": 0.0, "max": 1.0}
    )
    calibrated_gate: bool = field(
        default=True,
        metadata={
            "help": "also require the read-out confidence calibrated on held-out problems "
            "(off: the paper's operation-score gate alone)"
        },
    )

    def validate(self, session: ModelSession) -> None:
        """Check the layer against the model."""
        super().validate(session)
        if self.layer != -1:
            session.check_layer(self.layer)


def ci_text(estimate: float, low: float, high: float, digits: int = 2) -> str:
    """``x [lo, hi]`` rounded to ``digits`` significant digits (— where undefined)."""
    return format_interval(estimate, low, high, digits=digits)


@dataclass(frozen=True)
class FitSummary:
    """What fitting measured: the layer curve (test split, 95% intervals) and the evaluation table."""

    model_id: str
    chosen_layer: int
    merge_layer: int
    n_train: int
    n_test: int
    n_calibration: int
    shots: int
    curve_layers: np.ndarray
    curve: dict[str, np.ndarray]  # CURVE_METRICS per layer (estimates)
    curve_low: dict[str, np.ndarray]  # 95% interval per layer (NaN where none)
    curve_high: dict[str, np.ndarray]
    gate_thresholds: np.ndarray  # calibrated read-out confidence per layer (inf: never acts)
    gate_target: float
    evaluation_columns: list[str]
    evaluation_tasks: list[str]
    evaluation: np.ndarray  # [task, column] estimates
    evaluation_low: np.ndarray  # [task, column] 95% interval
    evaluation_high: np.ndarray
    evaluation_n: np.ndarray  # [task] problems
    evaluation_threshold: float
    evaluation_weight: float

    @property
    def baseline_name(self) -> str:
        """What the baseline is."""
        return f"few-shot ({self.shots}-shot prompt, no intervention)"

    def cell(self, task: str, column: str) -> tuple[float, float, float]:
        """``(estimate, low, high)`` of one evaluation cell."""
        i, j = self.evaluation_tasks.index(task), self.evaluation_columns.index(column)
        return (
            float(self.evaluation[i, j]),
            float(self.evaluation_low[i, j]),
            float(self.evaluation_high[i, j]),
        )

    def ce_change_verdict(self, task: str = "all") -> str:
        """One sentence: the merge's CE change with its interval, and whether it excludes 0."""
        est, low, high = self.cell(task, "merged_ce_change")
        n = int(self.evaluation_n[self.evaluation_tasks.index(task)])
        if self.cell(task, "fired")[0] == 0.0:
            return (
                f"the system abstained on all {n} test problems, so the merge changed nothing (CE change "
                "exactly 0); the oracle row shows what a right read-out could do"
            )
        if not np.isfinite(low):
            return f"CE change {est:+.3g} nats (n = {n}: no interval)"
        if low > 0:
            verdict = "the 95% interval excludes 0: the merge raises the answer's cross-entropy"
        elif high < 0:
            verdict = "the 95% interval excludes 0: the merge lowers the answer's cross-entropy"
        else:
            verdict = "the 95% interval includes 0: no detectable change"
        return (
            f"merged − few-shot CE {ci_text(est, low, high, 3)} nats over n = {n} test problems "
            f"(paired t); {verdict}"
        )

    def gate_text(self, layer: int | None = None) -> str:
        """The gate's test-split precision and coverage at ``layer`` (default: the chosen layer)."""
        layer = self.chosen_layer if layer is None else layer
        if not np.isfinite(self.gate_thresholds[layer]):
            return (
                f"at layer {layer} no read-out confidence threshold reached a calibrated precision of "
                f"{self.gate_target:g} on {self.n_calibration} calibration problems: the system "
                "always abstains"
            )
        prec = [self.curve[k][layer] for k in ("gate_precision",)] + [
            self.curve_low["gate_precision"][layer],
            self.curve_high["gate_precision"][layer],
        ]
        cov = [self.curve["fired"][layer], self.curve_low["fired"][layer], self.curve_high["fired"][layer]]
        return (
            f"at layer {layer} (confidence ≥ {self.gate_thresholds[layer]:.2f}, calibrated for "
            f"≥ {self.gate_target:g} on {self.n_calibration} problems) the system acts on "
            f"{ci_text(*cov)} of {self.n_test} test problems and reads them right in "
            f"{ci_text(*prec)} (Wilson)"
        )

    def markdown(self) -> str:
        """The evaluation table as Markdown, ``x [lo, hi]`` (notes, bench, notebooks)."""
        header = (
            "| task | n | " + " | ".join(EVALUATION_COLUMNS.get(c, c) for c in self.evaluation_columns) + " |"
        )
        rule = "|" + "---|" * (len(self.evaluation_columns) + 2)
        rows = [
            f"| {task} | {int(self.evaluation_n[i])} | "
            + " | ".join(self._fmt(i, j) for j in range(len(self.evaluation_columns)))
            + " |"
            for i, task in enumerate(self.evaluation_tasks)
        ]
        return "\n".join([header, rule, *rows])

    def _fmt(self, i: int, j: int) -> str:
        digits = 3 if self.evaluation_columns[j].endswith(("_ce", "_ce_change")) else 2
        return ci_text(self.evaluation[i, j], self.evaluation_low[i, j], self.evaluation_high[i, j], digits)

    def figures(self) -> dict[str, go.Figure]:
        """Layer curve with 95% intervals, evaluation table, and the CE change with its interval."""
        layers = [int(x) for x in self.curve_layers]
        curve = go.Figure()
        for key, name in CURVE_METRICS.items():
            if key not in self.curve:
                continue
            y = np.asarray(self.curve[key], dtype=np.float64)
            error = None
            if key in self.curve_low:
                low, high = np.asarray(self.curve_low[key]), np.asarray(self.curve_high[key])
                error = {
                    "type": "data",
                    "array": np.nan_to_num(high - y),
                    "arrayminus": np.nan_to_num(y - low),
                }
            curve.add_trace(
                go.Scatter(
                    x=layers,
                    y=y,
                    error_y=error,
                    mode="lines+markers",
                    name=name,
                    hovertemplate="layer %{x}: %{y:.2f}<extra>" + name + "</extra>",
                )
            )
        curve.add_vline(x=self.chosen_layer, line_dash="dash", annotation_text="encoder layer")
        curve.add_vline(
            x=self.merge_layer, line_dash="dot", annotation_text="merge layer", annotation_position="bottom"
        )
        finite = [float(np.nanmin(v)) for v in self.curve.values() if np.isfinite(v).any()]
        curve.update_layout(
            title=f"Where are problems linearly readable as symbols? (test split, n = {self.n_test} "
            "problems; bars: 95% intervals)",
            xaxis_title="layer",
            yaxis_title="rate / cosine / R² (test split)",
            yaxis_range=[min(0.0, *finite) - 0.02, 1.12],  # room above 1 for the layer labels
            template="plotly_white",
        )
        headers = ["task", "n", *[EVALUATION_COLUMNS.get(c, c) for c in self.evaluation_columns]]
        table = go.Figure(
            go.Table(
                header={"values": headers},
                cells={
                    "values": [
                        self.evaluation_tasks,
                        [str(int(n)) for n in self.evaluation_n],
                        *[
                            [self._fmt(i, j) for i in range(len(self.evaluation_tasks))]
                            for j in range(len(self.evaluation_columns))
                        ],
                    ]
                },
            )
        )
        table.update_layout(
            title=f"Test split: {self.baseline_name} vs merge at layer {self.merge_layer} (score ≥ "
            f"{self.evaluation_threshold:g}, calibrated confidence, w = {self.evaluation_weight:g}); "
            "oracle = merge the true answer. x [95% interval]",
            height=200 + 64 * len(self.evaluation_tasks),  # every task's row (cells wrap to 3 lines)
        )
        bars = go.Figure()
        for name, label_text in (
            ("merged", "merged (acts only where the gate fires)"),
            ("oracle", "oracle merge"),
        ):
            column = f"{name}_ce_change"
            if column in self.evaluation_columns:
                j = self.evaluation_columns.index(column)
                bars.add_trace(
                    go.Bar(
                        x=self.evaluation_tasks,
                        y=self.evaluation[:, j],
                        error_y={
                            "type": "data",
                            "array": np.nan_to_num(self.evaluation_high[:, j] - self.evaluation[:, j]),
                            "arrayminus": np.nan_to_num(self.evaluation[:, j] - self.evaluation_low[:, j]),
                        },
                        name=label_text,
                    )
                )
        bars.add_hline(y=0.0, line_color="black", line_width=1)
        bars.update_layout(
            title="Change in the answer's cross-entropy against the few-shot baseline (paired per problem, "
            "95% t interval; below 0 = better)",
            xaxis_title="task",
            yaxis_title="Δ mean CE of the answer tokens (nats)",
            barmode="group",
            template="plotly_white",
        )
        return {"layer_curve": curve, "evaluation": table, "evaluation_ce": bars}


def fit_summary(artefact: Artefact) -> FitSummary:
    """The metrics of fitted maps as plain data (no tensors)."""
    evaluation = artefact.metrics["evaluation"]
    rows = evaluation["rows"]
    columns = [c for c in EVALUATION_COLUMNS if c in rows[0]]
    curve = artefact.metrics["layer_curve"]

    def triple(value: Any) -> tuple[float, float, float]:
        return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),) * 3  # type: ignore[return-value]

    cells = np.asarray([[triple(row[c]) for c in columns] for row in rows], dtype=np.float64)
    return FitSummary(
        model_id=artefact.model_id,
        chosen_layer=artefact.chosen_layer,
        merge_layer=artefact.merge_layer,
        n_train=int(artefact.metrics["n_train"]),
        n_test=int(artefact.metrics["n_test"]),
        n_calibration=int(artefact.metrics["n_calibration"]),
        shots=int(artefact.config.shots),
        curve_layers=np.arange(artefact.n_layers, dtype=np.int64),
        curve={key: np.asarray(curve[key], dtype=np.float64) for key in CURVE_METRICS if key in curve},
        curve_low={
            key: np.asarray(curve[f"{key}_low"], dtype=np.float64)
            for key in CURVE_METRICS
            if f"{key}_low" in curve
        },
        curve_high={
            key: np.asarray(curve[f"{key}_high"], dtype=np.float64)
            for key in CURVE_METRICS
            if f"{key}_high" in curve
        },
        gate_thresholds=np.asarray(
            [artefact.gate(layer) for layer in range(artefact.n_layers)], dtype=np.float64
        ),
        gate_target=float(artefact.config.gate_target),
        evaluation_columns=columns,
        evaluation_tasks=[row["task"] for row in rows],
        evaluation=cells[..., 0],
        evaluation_low=cells[..., 1],
        evaluation_high=cells[..., 2],
        evaluation_n=np.asarray([int(row["n"]) for row in rows], dtype=np.int64),
        evaluation_threshold=float(evaluation["threshold"]),
        evaluation_weight=float(evaluation["weight"]),
    )


@dataclass(frozen=True)
class NeurosymbolicResult(Result):
    """Readout of one problem, the answers with/without the merge, and the fitted maps' metrics."""

    probe = "neurosymbolic"
    config: NeurosymbolicConfig
    few_shot_prompt: str
    operation: str
    first: int
    second: int
    exact_answer: int
    readout_layer: int
    merge_layer: int
    operation_names: list[str]
    operation_scores: np.ndarray  # [n_ops] at the readout layer
    decoded_operation: str
    decoded_first: int
    decoded_second: int
    fired: bool
    system_answer: int  # -1 when the decoded problem has no answer
    confidence: float  # the weakest slot's margin at the readout layer
    gate_threshold: float  # the calibrated threshold it was compared with (inf: never acts, -inf: gate off)
    abstain_reason: str  # "" when the system acts
    slot_names: list[str]  # operation, then each digit of each operand (units first)
    slot_margins: np.ndarray  # [slot] winning minus runner-up score
    baseline_answer: str
    merged_answer: str
    baseline_answer_ce: float
    merged_answer_ce: float
    layer_operation: list[str]  # what each layer's encoder reads for this problem
    layer_first: np.ndarray
    layer_second: np.ndarray
    layer_top_score: np.ndarray
    layer_confidence: np.ndarray
    layer_fired: np.ndarray  # bool per layer: would the gate act there
    fit: FitSummary  # layer curve and evaluation table of the fitted maps

    @property
    def decoded_text(self) -> str:
        """The decoded problem as written."""
        return f"{self.decoded_first} {OPERATIONS[self.decoded_operation][0]} {self.decoded_second}"

    def summary(self) -> dict[str, Any]:
        """The decoded problem, whether the system acts, and both answers."""
        return {
            "decoded problem": self.decoded_text,
            "system": f"acts: {self.system_answer}" if self.fired else "abstains",
            "exact answer": self.exact_answer,
            "model answer (few-shot)": self.baseline_answer.strip() or "∅",
            "with merge": self.merged_answer.strip() or "∅",
        }

    def figures(self) -> dict[str, go.Figure]:
        """Operation scores, slot margins and per-layer read-out of this problem, then the fit's figures.

        The fit's figures (:meth:`FitSummary.figures`) travel with the result for reports.
        """
        layers = [int(x) for x in self.fit.curve_layers]
        scores = go.Figure(
            go.Bar(
                x=[label(OPERATIONS[op][0]) for op in self.operation_names],
                y=self.operation_scores,
                marker_color=[
                    "#d62728" if op == self.operation else "#1f77b4" for op in self.operation_names
                ],
                hovertemplate="%{x}: %{y:.2f}<extra></extra>",
            )
        )
        scores.add_hline(y=self.config.threshold, line_dash="dash", annotation_text="score threshold")
        scores.update_layout(
            title=f"Operation scores read from layer {self.readout_layer} (red: the true operation)",
            xaxis_title="operation",
            yaxis_title="dot product with operation atom",
            template="plotly_white",
        )
        margins = go.Figure(
            go.Bar(
                x=self.slot_names,
                y=self.slot_margins,
                marker_color=[  # grey: no calibrated threshold at this layer (the system abstains)
                    "#9e9e9e"
                    if not np.isfinite(self.gate_threshold)
                    else "#d62728"
                    if m < self.gate_threshold
                    else "#2ca02c"
                    for m in self.slot_margins
                ],
                hovertemplate="%{x}: %{y:.2f}<extra></extra>",
            )
        )
        if np.isfinite(self.gate_threshold):
            margins.add_hline(y=self.gate_threshold, line_dash="dash", annotation_text="calibrated threshold")
        margins.update_layout(
            title=f"Read-out confidence per slot at layer {self.readout_layer} "
            + (
                "(red: below the gate's threshold)"
                if np.isfinite(self.gate_threshold)
                else "(no calibrated threshold at this layer: the system abstains)"
            ),
            xaxis_title="slot",
            yaxis_title="margin: winning − runner-up score",
            template="plotly_white",
        )
        per_layer = go.Figure(
            go.Table(
                header={
                    "values": ["layer", "operation", "first", "second", "top score", "confidence", "acts"]
                },
                cells={
                    "values": [
                        layers,
                        [label(OPERATIONS[op][0]) for op in self.layer_operation],
                        self.layer_first.tolist(),
                        self.layer_second.tolist(),
                        [f"{v:.2f}" for v in self.layer_top_score],
                        [f"{v:.2f}" for v in self.layer_confidence],
                        ["acts" if v else "abstains" for v in self.layer_fired.tolist()],
                    ]
                },
            )
        )
        per_layer.update_layout(
            title="What each layer's encoder reads for this problem, and its gate",
            height=160 + 24 * (len(layers) + 1),  # every layer's row, none cut off
        )
        fit = self.fit.figures()  # the fitted maps' figures travel with the result (reports)
        return {
            "operation_scores": scores,
            "slot_margins": margins,
            "per_layer_readout": per_layer,
            "layer_curve": fit["layer_curve"],
            "evaluation": fit["evaluation"],
            "evaluation_ce": fit["evaluation_ce"],
        }


def checked_problem(text: str, artefact: Artefact) -> Problem:
    """The problem typed in ``text``, if the fitted encoders can read it (``ValueError`` otherwise).

    It must parse (two whole numbers and an operation), use an operation the encoders were fitted
    on, and keep both operands below the fit's bound.
    """
    problem = parse_problem(text)
    if problem.operation not in artefact.codebook.operations:
        raise ValueError(
            f"the encoders were fitted on {list(artefact.codebook.operations)}, not {problem.operation}"
        )
    bound = artefact.config.bound
    if max(problem.first, problem.second) >= bound:
        raise ValueError(
            f"operands must be below {bound} (the encoders were fitted on operands 0..{bound - 1})"
        )
    return problem


def load_artefact(
    session: ModelSession, train_config: TrainConfig | None = None, folder: Path | None = None
) -> Artefact:
    """The saved encoders/decoder for this model (cached in memory); refuses another model's."""
    folder = (
        Path(folder)
        if folder is not None
        else artefact_folder(session.model_id, train_config or TrainConfig())
    )
    meta = folder / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(
            f"no neurosymbolic encoders fitted for {session.model_id} yet (looked in {folder}); "
            "fit them with prepare_default_artefacts(session) or the page's 'Fit encoders' button"
        )
    key = (str(folder), meta.stat().st_mtime)
    artefact = _CACHE.get(key)
    if artefact is None:
        artefact = Artefact.load(folder, session)
        _CACHE.clear()
        _CACHE[key] = artefact
    artefact.check_session(session)
    return artefact


def prepare_default_artefacts(
    session: ModelSession, progress: Progress = NO_PROGRESS, train_config: TrainConfig | None = None
) -> Path:
    """Fit and save what the page needs by default (idempotent: returns at once if present)."""
    config = train_config or TrainConfig()
    folder = artefact_folder(session.model_id, config)
    if (folder / "meta.json").is_file() and _saved_format(folder) == FORMAT:
        load_artefact(session, config, folder)  # refuses a mismatched model clearly
        progress(1.0, "neurosymbolic encoders already fitted")
        return folder
    artefact = fit_artefact(session, config, progress)
    artefact.save(folder)
    progress(1.0, f"saved neurosymbolic encoders to {folder}")
    return folder


def _saved_format(folder: Path) -> int | None:
    try:
        return json.loads((folder / "meta.json").read_text()).get("format")
    except (OSError, ValueError):
        return None


@register
class NeurosymbolicProbe(Probe[NeurosymbolicConfig, NeurosymbolicResult]):
    """Encode a typed problem from the hidden state, solve it exactly, merge the answer back."""

    name = "neurosymbolic"
    title = "Neurosymbolic"
    description = (
        "Reads arithmetic/rule problems out of hidden states as vector-symbolic structures, "
        "solves them exactly and merges the answer back into the residual stream."
    )
    config_cls = NeurosymbolicConfig
    result_cls = NeurosymbolicResult

    def __init__(self, train_config: TrainConfig | None = None, folder: Path | None = None) -> None:
        self.train_config = train_config or TrainConfig()
        self.folder = folder

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: NeurosymbolicConfig,
        progress: Progress = NO_PROGRESS,
    ) -> NeurosymbolicResult:
        """Read out, solve and answer the problem typed in ``prompt``."""
        config.validate(session)
        artefact = load_artefact(session, self.train_config, self.folder)
        problem = checked_problem(prompt, artefact)
        bound = artefact.config.bound
        shots = default_shots(problem.operation, bound, artefact.config.shots, artefact.config.seed)
        text = few_shot_prompt(problem, shots)
        prompt_ids = session.tokenize(text)[0].tolist()
        answer_ids = answer_tokens(session, problem.answer)
        readout_layer = artefact.chosen_layer if config.layer == -1 else session.check_layer(config.layer)
        progress(0.1, "reading the hidden states")
        # One forward of the prompt followed by the exact answer gives every layer's state at the
        # prompt's last position (the read-out), the answer's CE and the teacher-forced argmax that
        # is the greedy answer while the model follows the exact answer (``greedy_answer``).
        positions = [list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids)))]
        sequence = [prompt_ids + answer_ids]
        max_steps = artefact.codebook.n_digits + 2
        with session.lock:
            layers = list(range(session.n_layers))
            clean = collect(session, sequence, positions, layers, targets=[answer_ids])
            assert clean.target_logprob is not None and clean.argmax is not None

            def gate(layer: int) -> float:
                return artefact.gate(layer) if config.calibrated_gate else -math.inf

            per_layer = {
                layer: read_out(
                    artefact.codebook,
                    artefact.encoders[layer],
                    clean.states[layer][0][:1],
                    config.threshold,
                    gate(layer),
                )
                for layer in layers
            }
            readout = per_layer[readout_layer]
            steps = decoded_steps(artefact, readout.system_answers, readout.fired)[0]
            progress(0.4, "generating without the merge")
            baseline, _ = greedy_answer(
                session,
                prompt_ids,
                merge_layer=artefact.merge_layer,
                max_steps=max_steps,
                teacher_forced=(answer_ids, clean.argmax[0].tolist()),
            )
            ce = {"baseline": float(-clean.target_logprob[0].mean())}
            if len(steps):
                progress(0.6, "generating with the merge")
                merge = Merge(artefact.merge_layer, config.merge_weight, [steps], [positions[0][0]])
                run = collect(
                    session, sequence, positions, [artefact.merge_layer], targets=[answer_ids], merge=merge
                )
                assert run.target_logprob is not None and run.argmax is not None
                merged, _ = greedy_answer(
                    session,
                    prompt_ids,
                    merge_vectors=steps,
                    merge_layer=artefact.merge_layer,
                    weight=config.merge_weight,
                    max_steps=max_steps,
                    teacher_forced=(answer_ids, run.argmax[0].tolist()),
                )
                ce["merged"] = float(-run.target_logprob[0].mean())
            else:  # the system abstains: the merge writes nothing, so it is the baseline run
                merged, ce["merged"] = baseline, ce["baseline"]
        answer = readout.system_answers[0]
        decoded = readout.decoded
        n_digits = artefact.codebook.n_digits
        slot_names = ["operation"] + [
            f"{which} {10**i}s" for which in ("first", "second") for i in range(n_digits)
        ]
        slot_margins = torch.cat(
            [decoded.operation_margin[:1], decoded.first_margins[0], decoded.second_margins[0]]
        )
        return NeurosymbolicResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            few_shot_prompt=text,
            operation=problem.operation,
            first=problem.first,
            second=problem.second,
            exact_answer=problem.answer,
            readout_layer=readout_layer,
            merge_layer=artefact.merge_layer,
            operation_names=list(artefact.codebook.operations),
            operation_scores=readout.decoded.operation_scores[0].cpu().numpy().astype(np.float32),
            decoded_operation=readout.operations[0],
            decoded_first=int(readout.decoded.first[0]),
            decoded_second=int(readout.decoded.second[0]),
            fired=bool(readout.fired[0]),
            system_answer=-1 if answer is None else int(answer),
            confidence=float(readout.confidence[0]),
            gate_threshold=float(gate(readout_layer)),
            abstain_reason=readout.reasons[0],
            slot_names=slot_names,
            slot_margins=slot_margins.cpu().numpy().astype(np.float32),
            baseline_answer=baseline,
            merged_answer=merged,
            baseline_answer_ce=ce["baseline"],
            merged_answer_ce=ce["merged"],
            layer_operation=[per_layer[layer].operations[0] for layer in layers],
            layer_first=np.asarray(
                [int(per_layer[layer].decoded.first[0]) for layer in layers], dtype=np.int64
            ),
            layer_second=np.asarray(
                [int(per_layer[layer].decoded.second[0]) for layer in layers], dtype=np.int64
            ),
            layer_top_score=np.asarray([per_layer[layer].top_score[0] for layer in layers], dtype=np.float32),
            layer_confidence=np.asarray(
                [per_layer[layer].confidence[0] for layer in layers], dtype=np.float32
            ),
            layer_fired=np.asarray([per_layer[layer].fired[0] for layer in layers], dtype=bool),
            fit=fit_summary(artefact),
        )
