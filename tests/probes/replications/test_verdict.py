"""The verdict rule on constructed intervals, and the family read-outs on constructed results."""

import math

import numpy as np
import pytest

from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, FutureLensEvalResult
from lenslab.probes.replications import future_lens, neurosymbolic
from lenslab.probes.replications.claims import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    NO_PAPER_NUMBER,
    NOT_MEASURED,
    format_outcome,
    measured,
    verdict,
)


@pytest.mark.parametrize(
    "low, high, threshold, direction, expected",
    [
        (0.50, 0.60, 0.48, ">", HOLDS),  # whole interval above a "> 48%" claim
        (0.30, 0.40, 0.48, ">", DOES_NOT_HOLD),  # whole interval below it
        (0.40, 0.55, 0.48, ">", INCONCLUSIVE),  # straddles
        (0.48, 0.55, 0.48, ">", INCONCLUSIVE),  # touches the threshold: not excluded
        (1e-16, 5e-16, 1e-13, "<", HOLDS),  # "< 1e-13": whole interval below
        (2e-13, 5e-13, 1e-13, "<", DOES_NOT_HOLD),
        (5e-14, 2e-13, 1e-13, "<", INCONCLUSIVE),
        (-0.2, -0.1, 0.0, ">", DOES_NOT_HOLD),  # an ordering (difference > 0) reversed
        (-0.2, -0.1, 0.0, "<", HOLDS),  # the same interval for a "< 0" claim
        (math.nan, math.nan, 0.48, ">", NOT_MEASURED),
        (0.1, 0.2, math.nan, "", NO_PAPER_NUMBER),
    ],
)
def test_verdict(low, high, threshold, direction, expected):
    assert verdict(low, high, threshold, direction) == expected


def test_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="direction"):
        verdict(0.1, 0.2, 0.0, ">=")
    with pytest.raises(ValueError, match="exceeds"):
        verdict(0.3, 0.2, 0.0, ">")


def test_outcome_text_in_percent():
    outcome = measured(future_lens.BEST_TOP1, 0.5, 0.4, 0.6, 12, "documents")
    assert format_outcome(outcome, "%") == "50.0% [40.0%, 60.0%] (n=12 documents)"
    assert outcome.verdict == INCONCLUSIVE


def _future_lens_result(
    top1: dict[str, list[float]], half_width: float, bigram: float
) -> FutureLensEvalResult:
    """A result whose N=1 top-1 per method/layer is ``top1`` with ±``half_width`` intervals."""
    methods = list(top1)
    precision = np.full((len(methods), 2, 4, 1), 0.1)
    for m, name in enumerate(methods):
        precision[m, :, 1, 0] = top1[name]
    ci = np.stack([precision - half_width, precision + half_width], -1)
    bigram_arr = np.full((4, 1), bigram)
    return FutureLensEvalResult(
        model_id="m",
        prompt="p",
        config=FutureLensEvalConfig(),
        methods=methods,
        layers=np.asarray([0, 3]),
        ks=np.asarray([1]),
        precision=precision,
        bigram=bigram_arr,
        n_train=100,
        n_test=40,
        notes=[],
        protocol="free-running",
        precision_ci=ci,
        bigram_ci=np.stack([bigram_arr - half_width, bigram_arr + half_width], -1),
        n_documents=10,
    )


def test_future_lens_ordering_and_best_cell():
    result = _future_lens_result(
        {"direct": [0.10, 0.20], "linear": [0.30, 0.25], "fixed": [0.28, 0.31], "learned": [0.60, 0.40]},
        half_width=0.05,
        bigram=0.05,
    )
    by_key = {o.key: o for o in future_lens.outcomes(result)}
    learned_fixed = by_key["future_lens.learned_gt_fixed"]
    assert learned_fixed.value == pytest.approx(0.60 - 0.31)  # each method at its own best layer
    assert learned_fixed.verdict == HOLDS
    assert by_key["future_lens.fixed_gt_linear"].verdict == INCONCLUSIVE  # 0.01 ± 0.07
    assert by_key["future_lens.linear_gt_direct"].verdict == HOLDS  # 0.10 ± 0.07
    best = by_key["future_lens.best_top1"]
    assert best.value == pytest.approx(0.60) and best.verdict == HOLDS  # [0.55, 0.65] > 48%
    assert "learned at layer 0" in best.note
    assert by_key["future_lens.beats_bigram"].value == pytest.approx(0.55)


def test_future_lens_missing_learned_prompt_is_not_measured():
    result = _future_lens_result(
        {"direct": [0.1, 0.2], "linear": [0.3, 0.2], "fixed": [0.2, 0.2], "learned": [math.nan, math.nan]},
        half_width=0.05,
        bigram=0.05,
    )
    outcome = future_lens.outcomes(result)[0]
    assert outcome.verdict == NOT_MEASURED and "learned prompt" in outcome.note


def test_neurosymbolic_merge_from_per_problem_values():
    per_problem = {
        "few_shot_ce": [2.0, 4.0, 6.0, 4.0],
        "merged_ce": [1.0, 1.0, 1.0, 1.0],
        "few_shot_exact": [1.0, 0.0, 0.0, 0.0],
        "merged_exact": [1.0, 1.0, 1.0, 0.0],
    }
    ce, solved = neurosymbolic.merge_outcomes({"per_problem": per_problem})
    assert ce.value == pytest.approx(1 - 1.0 / 4.0)  # 1 − mean merged CE / mean baseline CE
    assert solved.value == pytest.approx(3.0)  # 3 solved vs 1
    assert ce.n == 4 and ce.low <= ce.value <= ce.high


def test_neurosymbolic_gate_that_never_acts_is_not_measured():
    """An abstaining gate leaves merged = baseline: a 0% / 1× 'does not hold' would measure nothing."""
    per_problem = {
        "fired": [False, False, False],
        "few_shot_ce": [2.0, 4.0, 6.0],
        "merged_ce": [2.0, 4.0, 6.0],
        "few_shot_exact": [1.0, 0.0, 0.0],
        "merged_exact": [1.0, 0.0, 0.0],
    }
    for outcome in neurosymbolic.merge_outcomes({"per_problem": per_problem}):
        assert outcome.verdict == NOT_MEASURED
        assert "abstains on all 3" in outcome.note and "chain-of-thought" in outcome.note
        assert not math.isfinite(outcome.value)  # no number is printed for a merge that never ran
    acted = {
        **per_problem,
        "fired": [True, True, False],
        "merged_ce": [1.0, 1.0, 6.0],
        "merged_exact": [1.0, 1.0, 0.0],
    }
    ce, solved = neurosymbolic.merge_outcomes({"per_problem": acted})  # the gate acted: measured as before
    assert ce.verdict != NOT_MEASURED and ce.value == pytest.approx(1 - 8.0 / 12.0)
    assert solved.value == pytest.approx(2.0)


def test_neurosymbolic_without_intervals_reports_value_not_verdict():
    rows = [
        {
            "task": "all",
            "n": 30,
            "baseline_ce": 4.0,
            "merged_ce": 1.0,
            "baseline_accuracy": 0.1,
            "merged_accuracy": 0.5,
        }
    ]
    ce, solved = neurosymbolic.merge_outcomes({"rows": rows})
    assert ce.verdict == NOT_MEASURED and ce.value == pytest.approx(0.75)
    assert solved.value == pytest.approx(5.0) and "not available in this version" in solved.note


def test_encoder_error_wilson_on_test_problems():
    metrics = {"layer_curve": {"operation_accuracy": [0.5, 1.0]}, "n_test": 50}
    outcome = neurosymbolic.encoder_error(metrics, 1)
    assert outcome.value == 0.0 and 0.0 < outcome.high < 0.1  # Wilson upper bound for 0/50 ≈ 7.1%
    assert outcome.verdict == INCONCLUSIVE  # 0/50 cannot exclude 2% at 95%
