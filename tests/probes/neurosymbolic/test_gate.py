"""The calibrated gate and the evaluation's intervals, on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from lenslab.probes.neurosymbolic.fit import LinearMap
from lenslab.probes.neurosymbolic.gate import calibrate, gate_performance
from lenslab.probes.neurosymbolic.readout import fully_correct, read_out
from lenslab.probes.neurosymbolic.tasks import Problem
from lenslab.probes.neurosymbolic.vsa import Codebook, bind
from lenslab.probes.stats import paired_difference, wilson

Z = scipy_stats.norm.ppf(0.975)


def wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval written out (Wilson 1927)."""
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 5), (3, 7), (49, 50), (73, 73), (150, 152), (12, 240)])
def test_wilson_matches_the_closed_form(k, n):
    interval = wilson(k, n)
    low, high = wilson_closed_form(k, n)
    assert interval.low == pytest.approx(low, abs=1e-9) and interval.high == pytest.approx(high, abs=1e-9)
    assert interval.n == n and interval.estimate == k / n


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidence uniform in [0, 1]; a read-out is right with probability 0.99 above 0.6, 0.5 below."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) < np.where(confidence >= 0.6, 0.99, 0.5)
    return confidence, correct


def test_calibrated_gate_holds_its_precision_on_disjoint_test_data():
    target = 0.95
    cal_conf, cal_ok = synthetic(2000, seed=1)
    test_conf, test_ok = synthetic(4000, seed=2)  # another draw: disjoint from calibration
    gate = calibrate(cal_conf, cal_ok, target=target)
    assert gate.acts and gate.calibration_precision().low >= target
    # Precision over c ≥ τ is (0.396 + 0.5·(0.6 − τ)) / (1 − τ) below 0.6: exactly 0.95 at τ ≈ 0.574.
    # The lower-bound rule must sit above that, and not far above (it would waste coverage).
    assert 0.574 <= gate.threshold <= 0.65
    precision, coverage = gate_performance(test_conf >= gate.threshold, test_ok)
    # On data the threshold never saw: the gate's errors stay within the allowed rate.
    assert precision.estimate >= target and precision.low >= target - 0.02
    assert 0.3 < coverage.estimate < 0.45
    # The naive gate (act on everything the other gates pass) misses the target by far (≈ 0.70).
    naive, _ = gate_performance(np.ones_like(test_ok), test_ok)
    assert naive.high < target


def test_gate_never_acts_when_no_threshold_reaches_the_target():
    confidence, _ = synthetic(500, seed=3)
    coin = np.random.default_rng(4).uniform(0, 1, 500) < 0.5  # correctness unrelated to confidence
    gate = calibrate(confidence, coin, target=0.95)
    assert not gate.acts and math.isinf(gate.threshold) and gate.n_acting == 0


def test_gate_only_counts_eligible_problems_and_needs_evidence():
    confidence = np.linspace(0, 1, 100)
    correct = np.ones(100, dtype=bool)
    eligible = np.zeros(100, dtype=bool)
    eligible[-10:] = True  # 10 of 10 right: Wilson lower bound 0.72 < 0.95
    assert not calibrate(confidence, correct, eligible, target=0.95).acts
    gate = calibrate(confidence, correct, eligible, target=0.7)
    assert gate.acts and gate.n_calibration == 10 and gate.n_acting == 10
    with pytest.raises(ValueError, match="target"):
        calibrate(confidence, correct, target=1.0)


def test_paired_difference_matches_scipy_paired_t():
    rng = np.random.default_rng(5)
    before = rng.gamma(2.0, 1.0, 240)
    after = before + rng.normal(-0.1, 0.5, 240)
    interval = paired_difference(after, before)
    reference = scipy_stats.ttest_rel(after, before).confidence_interval(0.95)
    assert interval.low == pytest.approx(reference.low, rel=1e-9)
    assert interval.high == pytest.approx(reference.high, rel=1e-9)
    assert interval.estimate == pytest.approx(np.mean(after - before)) and interval.n == 240
    # The pairing matters: an unpaired interval on the two means is wider here.
    unpaired = scipy_stats.ttest_ind(after, before).confidence_interval(0.95)
    assert unpaired.high - unpaired.low > 2 * (interval.high - interval.low)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference(after, before[:-1])


def test_read_out_abstains_when_operands_are_not_readable():
    """Noise in place of the operands: the operation reads clean, the digits do not, so it abstains."""
    book = Codebook.build(1024, seed=0, n_digits=4, operations=("add", "mul"))
    problems = [Problem(48, "mul", 7), Problem(12, "add", 30)]
    clean = book.encode_problems([48, 12], [1, 0], [7, 30])
    identity = LinearMap(torch.eye(1024), torch.zeros(1024), torch.zeros(1024))
    readable = read_out(book, identity, clean, threshold=0.8, min_confidence=0.5)
    assert readable.fired == [True, True] and fully_correct(book, readable, problems) == [True, True]
    assert readable.system_answers == [336, 42] and min(readable.confidence) > 0.5
    # Blur one digit slot of each problem: the second operand's units digit becomes an even mix of
    # its digit atom and the next one, so that slot cannot be read (margin ≈ 0) while the
    # operation and every other slot stay clean and the decoded problem keeps a valid answer.
    units = book.positions[0]
    blurred = clean.clone()
    for row, digit in enumerate((7, 0)):
        mix = 0.5 * (book.digit_atoms[digit + 1] - book.digit_atoms[digit])
        blurred[row] += bind(bind(mix, units), book.roles[1])
    unreadable = read_out(book, identity, blurred, threshold=0.8, min_confidence=0.5)
    assert unreadable.operations == ["mul", "add"]  # the operation score alone would let it act
    assert all(s >= 0.8 for s in unreadable.top_score) and all(unreadable.eligible)
    assert max(unreadable.confidence) < 0.3
    assert unreadable.fired == [False, False]
    assert all("confidence" in reason for reason in unreadable.reasons)
    # The paper's score-only gate (no confidence threshold) would act on them.
    assert read_out(book, identity, blurred, threshold=0.8).fired == [True, True]
    # A layer where no threshold reached the target: never acts, and says so.
    never = read_out(book, identity, clean, threshold=0.8, min_confidence=math.inf)
    assert never.fired == [False, False] and "no confidence threshold" in never.reasons[0]
