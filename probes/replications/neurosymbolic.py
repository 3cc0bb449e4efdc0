"""Neurosymbolic (Dhanraj & Eliasmith 2025) claims, read from the fitted encoder artefact.

``lenslab prepare`` (or the Neurosymbolic page) fits per-layer linear encoders from hidden
states to the problem's VSA vector and evaluates the merge on held-out problems; the metrics are
stored with the artefact. The encoder error is 1 − operation accuracy at the chosen layer, on
the test problems (Wilson 95%). The CE change and problems-solved ratio need per-problem values
for an interval; where the artefact lacks them they are shown without a verdict. Where the
calibrated gate acted on no test problem, the merge was never applied and both are "not
measured" (the merged output *is* the baseline's, so 0% / 1× would measure nothing).
"""

from __future__ import annotations

import math

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.replications.claims import Claim, ClaimOutcome, measured, not_measured
from lenslab.probes.stats import bootstrap_by_group, wilson

PAPER = "Neurosymbolic (Dhanraj & Eliasmith 2025)"
LLAMA = "Llama 3.1 8B"

ENCODER_ERROR = Claim(
    key="neurosymbolic.encoder_error",
    family="neurosymbolic",
    paper=PAPER,
    claim="the encoder classifies the operation with < 2% error at the chosen layer",
    paper_value="< 2%",
    paper_model=LLAMA,
    measure="1 − operation accuracy of the chosen layer's encoder on held-out problems (Wilson 95%)",
    threshold=0.02,
    direction="<",
    unit="%",
)
CE_LOWER = Claim(
    key="neurosymbolic.ce_lower",
    family="neurosymbolic",
    paper=PAPER,
    claim="88.6% lower cross-entropy than the baselines",
    paper_value="88.6% lower",
    paper_model=LLAMA,
    measure="1 − CE(merged)/CE(few-shot baseline) of the answer tokens on held-out problems "
    "(deviation: few-shot prompting, not chain-of-thought or LoRA)",
    threshold=0.886,
    direction=">",
    unit="%",
)
SOLVED = Claim(
    key="neurosymbolic.solved_ratio",
    family="neurosymbolic",
    paper=PAPER,
    claim="15.4× more problems solved than the baselines",
    paper_value="15.4×",
    paper_model=LLAMA,
    measure="exact-match rate merged / few-shot baseline on held-out problems",
    threshold=15.4,
    direction=">",
    unit="×",
)
CLAIMS = (ENCODER_ERROR, CE_LOWER, SOLVED)
NO_INTERVAL = (
    "no per-problem values stored with this artefact, so no interval (not available in this version)"
)


def load_metrics(session: ModelSession) -> tuple[dict, int] | str:
    """The artefact's metrics and chosen layer, or why they are missing."""
    from lenslab.probes.neurosymbolic.probe import load_artefact

    try:
        artefact = load_artefact(session)
    except (FileNotFoundError, ValueError) as exc:
        return f"no fitted encoders: {exc}"
    return artefact.metrics, artefact.chosen_layer


def outcomes(session: ModelSession) -> list[ClaimOutcome]:
    """Measure the three claims from the fitted artefact of ``session``'s model."""
    loaded = load_metrics(session)
    if isinstance(loaded, str):
        return [not_measured(c, loaded) for c in CLAIMS]
    metrics, layer = loaded
    return [encoder_error(metrics, layer), *merge_outcomes(metrics.get("evaluation") or {})]


def encoder_error(metrics: dict, layer: int) -> ClaimOutcome:
    """1 − operation accuracy at ``layer``; the stored interval when present, else Wilson on n_test."""
    curve = metrics.get("layer_curve") or {}
    accuracy = curve.get("operation_accuracy")
    if accuracy is None or layer >= len(accuracy):
        return not_measured(ENCODER_ERROR, "the artefact has no operation-accuracy curve")
    n = int(metrics.get("n_test", 0))
    low, high = curve.get("operation_accuracy_low"), curve.get("operation_accuracy_high")
    if low is not None and high is not None:
        error, lo, hi, how = 1 - accuracy[layer], 1 - high[layer], 1 - low[layer], "stored interval"
    elif n > 0:
        interval = wilson(round(n * (1 - accuracy[layer])), n)
        error, lo, hi, how = interval.estimate, interval.low, interval.high, "Wilson on the test problems"
    else:
        return not_measured(ENCODER_ERROR, "the artefact records no test-problem count")
    return measured(ENCODER_ERROR, error, lo, hi, n, "problems", f"layer {layer}; {how}")


def merge_outcomes(evaluation: dict) -> list[ClaimOutcome]:
    """CE reduction and solved ratio: bootstrap over problems when per-problem values exist."""
    per_problem = evaluation.get("per_problem")
    if isinstance(per_problem, dict) and "fired" in per_problem and not np.any(per_problem["fired"]):
        why = (
            f"the calibrated gate abstains on all {len(per_problem['fired'])} held-out problems (no layer's "
            "confidence threshold reaches the target precision on the calibration split), so the merged "
            "output is the baseline's and there is no merge to compare; the paper's chain-of-thought and "
            "LoRA baselines are not run"
        )
        return [not_measured(c, why) for c in (CE_LOWER, SOLVED)]
    if isinstance(per_problem, dict) and "merged_ce" in per_problem:
        base = "few_shot" if "few_shot_ce" in per_problem else "baseline"
        values = np.stack(
            [
                np.asarray(per_problem[f"{base}_ce"], dtype=np.float64),
                np.asarray(per_problem["merged_ce"], dtype=np.float64),
                np.asarray(per_problem[f"{base}_exact"], dtype=np.float64),
                np.asarray(per_problem["merged_exact"], dtype=np.float64),
            ],
            1,
        )
        groups = np.arange(len(values))
        ce = bootstrap_by_group(
            values, groups, lambda v: 1 - v[:, 1].mean() / v[:, 0].mean(), unit="problems"
        )
        ratio = bootstrap_by_group(
            values, groups, lambda v: _ratio(v[:, 3].mean(), v[:, 2].mean()), unit="problems"
        )
        note = f"paired bootstrap over {len(values)} held-out problems; baseline: {base.replace('_', '-')}"
        return [
            measured(CE_LOWER, ce.estimate, ce.low, ce.high, ce.n, "problems", note),
            measured(SOLVED, ratio.estimate, ratio.low, ratio.high, ratio.n, "problems", note),
        ]
    rows = {row.get("task"): row for row in evaluation.get("rows", [])}
    row = rows.get("all")
    if row is None or "merged_ce" not in row:
        return [not_measured(c, "the artefact holds no merge evaluation") for c in (CE_LOWER, SOLVED)]
    ce = 1 - row["merged_ce"] / row["baseline_ce"] if row.get("baseline_ce") else math.nan
    ratio = _ratio(row.get("merged_accuracy", math.nan), row.get("baseline_accuracy", math.nan))
    n = int(row.get("n", 0))
    return [
        not_measured(CE_LOWER, NO_INTERVAL, value=ce, n=n, unit_of_n="problems"),
        not_measured(SOLVED, NO_INTERVAL, value=ratio, n=n, unit_of_n="problems"),
    ]


def _ratio(merged: float, baseline: float) -> float:
    """The ratio merged / baseline; inf when the baseline solved none and the merge some, NaN when neither."""
    if baseline > 0:
        return float(merged / baseline)
    return math.inf if merged > 0 else math.nan
