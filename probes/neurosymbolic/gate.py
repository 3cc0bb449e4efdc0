"""The calibrated gate: the symbolic system acts only where its read-out is reliably right.

The paper's gate is the best operation score against a fixed 0.8. The operation is the easy part
(its token is in the prompt); the operands decide whether the computed answer is right. So the
gate here also asks how surely every *slot* was read: the read-out confidence of a problem is the
smallest margin (winning minus runner-up score) over the operation and each digit of each
operand (:meth:`~lenslab.probes.neurosymbolic.vsa.ProblemReadout.confidence`).

Its threshold is chosen per encoder layer on a **calibration split** (operand pairs never used in
training or testing): the lowest confidence τ at which the calibration problems it would act on
are fully correct (operation and both operands) with a Wilson 95% lower bound of at least the
target precision (default 0.95). Requiring the lower bound, not the point estimate, makes
"≥ 95% correct when it acts" hold on new problems with high probability; where no τ qualifies the
gate never acts at that layer (the system abstains). Precision and coverage are then measured on
the test split, which the calibration never saw.

The scan over candidate thresholds picks the best of many bounds, so the calibration bound is
slightly optimistic; the test-split precision (with its Wilson interval) is the honest number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from lenslab.probes.stats import Interval, wilson

DEFAULT_TARGET = 0.95


@dataclass(frozen=True)
class GateThreshold:
    """The calibrated confidence threshold of one layer and what calibration saw."""

    threshold: float  # math.inf: no threshold reaches the target, the gate never acts
    target: float
    n_calibration: int  # calibration problems offered (passing the range and score gates)
    n_acting: int  # of those, at or above the threshold
    n_correct: int  # of the acting ones, fully correct

    @property
    def acts(self) -> bool:
        """Whether the gate can act at all at this layer."""
        return math.isfinite(self.threshold)

    def calibration_precision(self) -> Interval:
        """Calibration precision among acting problems (Wilson)."""
        return wilson(self.n_correct, self.n_acting)

    def to_json(self) -> dict[str, float | int | None]:
        """Plain JSON (``threshold`` None when the gate never acts)."""
        return {
            "threshold": self.threshold if self.acts else None,
            "target": self.target,
            "n_calibration": self.n_calibration,
            "n_acting": self.n_acting,
            "n_correct": self.n_correct,
        }

    @classmethod
    def from_json(cls, data: dict) -> GateThreshold:
        """Inverse of :meth:`to_json`."""
        threshold = data["threshold"]
        return cls(
            threshold=math.inf if threshold is None else float(threshold),
            target=float(data["target"]),
            n_calibration=int(data["n_calibration"]),
            n_acting=int(data["n_acting"]),
            n_correct=int(data["n_correct"]),
        )


def calibrate(
    confidence: Float[np.ndarray, " n"],
    correct: Bool[np.ndarray, " n"],
    eligible: Bool[np.ndarray, " n"] | None = None,
    target: float = DEFAULT_TARGET,
) -> GateThreshold:
    """The lowest confidence threshold whose acting set's precision has a Wilson lower bound ≥ target.

    ``correct[i]``: calibration problem ``i`` was read fully right; ``eligible[i]``: it passes the
    other gates (range, operation score, a valid answer), so only those can be acted on.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"gate target precision must be in (0, 1), got {target}")
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    eligible = np.ones_like(correct) if eligible is None else np.asarray(eligible, dtype=bool).ravel()
    if not confidence.shape == correct.shape == eligible.shape:
        raise ValueError("confidence, correct and eligible need one entry per calibration problem")
    conf, ok = confidence[eligible], correct[eligible]
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    hits = np.cumsum(ok)
    best = GateThreshold(math.inf, target, int(conf.size), 0, 0)
    # Acting at τ = conf[k] takes every problem with confidence ≥ τ: the last of a run of ties.
    for k in range(conf.size):
        if k + 1 < conf.size and conf[k + 1] == conf[k]:
            continue
        n_acting, n_correct = k + 1, int(hits[k])
        if wilson(n_correct, n_acting).low >= target:
            best = GateThreshold(float(conf[k]), target, int(conf.size), n_acting, n_correct)
    return best


def gate_performance(
    fired: Bool[np.ndarray, " n"], correct: Bool[np.ndarray, " n"]
) -> tuple[Interval, Interval]:
    """Precision (fully correct among acting) and coverage (acting among all), both Wilson.

    Call it on problems the threshold was *not* calibrated on.
    """
    fired = np.asarray(fired, dtype=bool).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if fired.shape != correct.shape:
        raise ValueError("fired and correct need one entry per problem")
    precision = wilson(int((fired & correct).sum()), int(fired.sum()))
    coverage = wilson(int(fired.sum()), int(fired.size))
    return precision, coverage
