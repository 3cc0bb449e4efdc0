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
of the atom, ≈1 when present).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register
from lenslab.probes.neurosymbolic.artefact import FORMAT, Artefact, TrainConfig, artefact_folder
from lenslab.probes.neurosymbolic.fit import Merge, collect
from lenslab.probes.neurosymbolic.pipeline import fit_artefact
from lenslab.probes.neurosymbolic.readout import answer_tokens, decoded_steps, greedy_answer, read_out
from lenslab.probes.neurosymbolic.tasks import OPERATIONS, default_shots, few_shot_prompt, parse_problem
from lenslab.probes.plotting import label
from lenslab.progress import NO_PROGRESS, Progress

DEFAULT_PROBLEM = "What is 48 * 7?"
CURVE_METRICS = {
    "operation_accuracy": "operation accuracy",
    "digit_accuracy": "operand digit accuracy",
    "number_accuracy": "operand accuracy (whole number)",
    "cosine": "cosine to target vector",
    "fired": "share above threshold",
    "decoder_r2": "decoder R² beyond step means (answer digit writable)",
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

    def validate(self, session: ModelSession) -> None:
        """Check the layer against the model."""
        super().validate(session)
        if self.layer != -1:
            session.check_layer(self.layer)


@dataclass(frozen=True)
class FitSummary:
    """What fitting measured: the layer curve (test split) and the evaluation table."""

    model_id: str
    chosen_layer: int
    merge_layer: int
    n_train: int
    n_test: int
    curve_layers: np.ndarray
    curve: dict[str, np.ndarray]  # CURVE_METRICS per layer
    evaluation_columns: list[str]
    evaluation_tasks: list[str]
    evaluation: np.ndarray  # [task, column]
    evaluation_threshold: float
    evaluation_weight: float

    def markdown(self) -> str:
        """The evaluation table as Markdown (notes, bench, notebooks)."""
        header = "| task | " + " | ".join(self.evaluation_columns) + " |"
        rule = "|" + "---|" * (len(self.evaluation_columns) + 1)
        rows = [
            f"| {task} | "
            + " | ".join(_fmt_cell(c, v) for c, v in zip(self.evaluation_columns, row, strict=True))
            + " |"
            for task, row in zip(self.evaluation_tasks, self.evaluation.tolist(), strict=True)
        ]
        return "\n".join([header, rule, *rows])

    def figures(self) -> dict[str, go.Figure]:
        """Layer curve, evaluation table and answer cross-entropy bars."""
        layers = [int(x) for x in self.curve_layers]
        curve = go.Figure()
        for key, name in CURVE_METRICS.items():
            if key in self.curve:
                curve.add_trace(go.Scatter(x=layers, y=self.curve[key], mode="lines+markers", name=name))
        curve.add_vline(x=self.merge_layer, line_dash="dot", annotation_text="merge layer")
        curve.update_layout(
            title=f"Where are problems linearly readable as symbols? (test split, {self.n_test} problems)",
            xaxis_title="layer",
            yaxis_title="accuracy / cosine",
            yaxis_range=[min(0.0, *(float(np.min(v)) for v in self.curve.values())) - 0.02, 1.02],
            template="plotly_white",
        )
        table = go.Figure(
            go.Table(
                header={"values": ["task", *self.evaluation_columns]},
                cells={
                    "values": [
                        self.evaluation_tasks,
                        *[
                            [_fmt_cell(c, v) for v in self.evaluation[:, j]]
                            for j, c in enumerate(self.evaluation_columns)
                        ],
                    ]
                },
            )
        )
        table.update_layout(
            title=f"Test split: baseline vs merge at layer {self.merge_layer} (threshold "
            f"{self.evaluation_threshold:g}, w={self.evaluation_weight:g}); oracle = merge the true answer",
            height=420,
        )
        bars = go.Figure()
        for name in ("baseline", "merged", "oracle"):
            column = f"{name}_ce"
            if column in self.evaluation_columns:
                j = self.evaluation_columns.index(column)
                bars.add_trace(go.Bar(x=self.evaluation_tasks, y=self.evaluation[:, j], name=name))
        bars.update_layout(
            title="Mean cross-entropy of the answer tokens (nats, lower is better)",
            barmode="group",
            template="plotly_white",
        )
        return {"layer_curve": curve, "evaluation": table, "evaluation_ce": bars}


def fit_summary(artefact: Artefact) -> FitSummary:
    """The metrics of fitted maps as plain data (no tensors)."""
    evaluation = artefact.metrics["evaluation"]
    columns = [c for c in evaluation["rows"][0] if c != "task"]
    curve = artefact.metrics["layer_curve"]
    return FitSummary(
        model_id=artefact.model_id,
        chosen_layer=artefact.chosen_layer,
        merge_layer=artefact.merge_layer,
        n_train=int(artefact.metrics["n_train"]),
        n_test=int(artefact.metrics["n_test"]),
        curve_layers=np.arange(artefact.n_layers, dtype=np.int64),
        curve={key: np.asarray(curve[key], dtype=np.float32) for key in CURVE_METRICS if key in curve},
        evaluation_columns=columns,
        evaluation_tasks=[row["task"] for row in evaluation["rows"]],
        evaluation=np.asarray(
            [[float(row[c]) for c in columns] for row in evaluation["rows"]], dtype=np.float64
        ),
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
    baseline_answer: str
    merged_answer: str
    baseline_answer_ce: float
    merged_answer_ce: float
    layer_operation: list[str]  # what each layer's encoder reads for this problem
    layer_first: np.ndarray
    layer_second: np.ndarray
    layer_top_score: np.ndarray
    fit: FitSummary  # layer curve and evaluation table of the fitted maps

    def summary(self) -> dict[str, Any]:
        """The decoded problem and both answers."""
        decoded = f"{self.decoded_first} {OPERATIONS[self.decoded_operation][0]} {self.decoded_second}"
        return {
            "decoded problem": decoded,
            "exact answer": self.exact_answer,
            "model answer": self.baseline_answer.strip() or "∅",
            "with merge": self.merged_answer.strip() or "∅",
        }

    def figures(self) -> dict[str, go.Figure]:
        """Layer curve, this problem's operation scores, evaluation table and CE bars."""
        layers = [int(x) for x in self.fit.curve_layers]
        scores = go.Figure(
            go.Bar(
                x=[label(OPERATIONS[op][0]) for op in self.operation_names],
                y=self.operation_scores,
                marker_color=[
                    "#d62728" if op == self.operation else "#1f77b4" for op in self.operation_names
                ],
                hovertemplate="%{x}: %{y:.3f}<extra></extra>",
            )
        )
        scores.add_hline(y=self.config.threshold, line_dash="dash", annotation_text="threshold")
        scores.update_layout(
            title=f"Operation scores read from layer {self.readout_layer} (red: the true operation)",
            yaxis_title="dot product with operation atom",
            template="plotly_white",
        )
        per_layer = go.Figure(
            go.Table(
                header={"values": ["layer", "operation", "first", "second", "top score"]},
                cells={
                    "values": [
                        layers,
                        [label(OPERATIONS[op][0]) for op in self.layer_operation],
                        self.layer_first.tolist(),
                        self.layer_second.tolist(),
                        [f"{v:.2f}" for v in self.layer_top_score],
                    ]
                },
            )
        )
        per_layer.update_layout(title="What each layer's encoder reads for this problem")
        fit = self.fit.figures()
        return {
            "layer_curve": fit["layer_curve"],
            "operation_scores": scores,
            "per_layer_readout": per_layer,
            "evaluation": fit["evaluation"],
            "evaluation_ce": fit["evaluation_ce"],
        }


def _fmt_cell(column: str, value: float) -> str:
    return str(int(value)) if column == "n" else f"{value:.3f}"


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
        problem = parse_problem(prompt)
        if problem.operation not in artefact.codebook.operations:
            raise ValueError(
                f"the encoders were fitted on {list(artefact.codebook.operations)}, not {problem.operation}"
            )
        bound = artefact.config.bound
        if max(problem.first, problem.second) >= bound:
            raise ValueError(
                f"operands must be below {bound} (the encoders were fitted on operands 0..{bound - 1})"
            )
        shots = default_shots(problem.operation, bound, artefact.config.shots, artefact.config.seed)
        text = few_shot_prompt(problem, shots)
        prompt_ids = session.tokenize(text)[0].tolist()
        answer_ids = answer_tokens(session, problem.answer)
        readout_layer = artefact.chosen_layer if config.layer == -1 else session.check_layer(config.layer)
        progress(0.1, "reading the hidden states")
        with session.lock:
            layers = list(range(session.n_layers))
            clean = collect(session, [prompt_ids + answer_ids], [[len(prompt_ids) - 1]], layers)
            per_layer = {
                layer: read_out(
                    artefact.codebook, artefact.encoders[layer], clean.states[layer][0], config.threshold
                )
                for layer in layers
            }
            readout = per_layer[readout_layer]
            steps = decoded_steps(artefact, readout.system_answers, readout.fired)[0]
            progress(0.3, "generating without the merge")
            max_steps = artefact.codebook.n_digits + 2
            baseline, _ = greedy_answer(
                session, prompt_ids, merge_layer=artefact.merge_layer, max_steps=max_steps
            )
            progress(0.6, "generating with the merge")
            merged, _ = greedy_answer(
                session,
                prompt_ids,
                merge_vectors=steps,
                merge_layer=artefact.merge_layer,
                weight=config.merge_weight,
                max_steps=max_steps,
            )
            progress(0.9, "scoring the exact answer")
            positions = [list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids)))]
            sequence = [prompt_ids + answer_ids]
            ce = {}
            for name, vectors in (("baseline", None), ("merged", steps)):
                merge = (
                    None
                    if vectors is None
                    else Merge(artefact.merge_layer, config.merge_weight, [vectors], [positions[0][0]])
                )
                run = collect(
                    session, sequence, positions, [artefact.merge_layer], targets=[answer_ids], merge=merge
                )
                assert run.target_logprob is not None
                ce[name] = float(-run.target_logprob[0].mean())
        answer = readout.system_answers[0]
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
            fit=fit_summary(artefact),
        )
