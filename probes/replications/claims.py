"""Claims of the seed papers, their measured outcomes, and the one verdict rule.

A :class:`Claim` is what a paper states (its number, the model it was measured on) and how
lenslab measures it; a :class:`ClaimOutcome` is lenslab's number on the loaded model with its 95%
interval. :func:`verdict` turns the interval and the paper's threshold into a plain word, the same
way for every claim: the claim *holds* when the whole interval lies on the claimed side of the
threshold, *does not hold* when the whole interval lies on the other side, else it is
*inconclusive at 95%*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive at 95%"
NOT_MEASURED = "not measured"
NO_PAPER_NUMBER = "n/a (no paper number)"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_MEASURED, NO_PAPER_NUMBER)
DIRECTIONS = (">", "<", "")  # value above / below the threshold; "" = reported only


@dataclass(frozen=True)
class Claim:
    """One paper's check: the claim, its number, the model it was measured on, lenslab's measure.

    ``threshold`` is what the verdict compares lenslab's interval with (the paper's number, or 0
    for an ordering measured as a difference); ``direction`` says on which side the claim puts
    the value. NaN threshold / empty direction: the paper states no number (the value is
    reported, no verdict).
    """

    key: str  # stable id, e.g. "future_lens.learned_gt_fixed"
    family: str  # probe family that measures it
    paper: str  # short citation
    claim: str  # the paper's claim, quoted briefly
    paper_value: str  # the paper's number as the paper states it ("> 48%", "< 1e-13", "—")
    paper_model: str  # the model the paper measured it on
    measure: str  # how lenslab measures it (and any deviation from the paper's protocol)
    threshold: float = math.nan
    direction: str = ""
    unit: str = ""  # "%" (values are fractions shown in percent), "×", or "" (plain number)
    log_scale: bool = False  # plot on a log axis (errors spanning orders of magnitude)


@dataclass(frozen=True)
class ClaimOutcome:
    """lenslab's measurement of one claim: value, 95% interval, n and the verdict with a note."""

    key: str
    value: float  # NaN when not measured
    low: float  # 95% interval (NaN: none)
    high: float
    n: int  # independent units behind the interval (documents, prompts, phrases, problems)
    unit_of_n: str  # what n counts
    verdict: str
    note: str  # how it was measured here, or why it was not


def verdict(low: float, high: float, threshold: float, direction: str) -> str:
    """Holds / does not hold / inconclusive at 95% from an interval and the claim's side.

    ``direction`` ``">"``: the claim is value > threshold, so it holds when ``low > threshold``
    and does not hold when ``high < threshold``; ``"<"`` mirrors that. An interval touching or
    straddling the threshold is inconclusive. No threshold or direction: no paper number. A
    missing interval (NaN bound) means nothing was measured.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not direction or not math.isfinite(threshold):
        return NO_PAPER_NUMBER
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_MEASURED
    if low > high:
        raise ValueError(f"interval low={low} exceeds high={high}")
    above, below = low > threshold, high < threshold
    if direction == ">":
        return HOLDS if above else DOES_NOT_HOLD if below else INCONCLUSIVE
    return HOLDS if below else DOES_NOT_HOLD if above else INCONCLUSIVE


def measured(
    claim: Claim, value: float, low: float, high: float, n: int, unit_of_n: str, note: str = ""
) -> ClaimOutcome:
    """The outcome of a measured claim, its verdict from :func:`verdict`."""
    return ClaimOutcome(
        key=claim.key,
        value=float(value),
        low=float(low),
        high=float(high),
        n=int(n),
        unit_of_n=unit_of_n,
        verdict=verdict(low, high, claim.threshold, claim.direction),
        note=note,
    )


def not_measured(
    claim: Claim, why: str, value: float = math.nan, n: int = 0, unit_of_n: str = ""
) -> ClaimOutcome:
    """An outcome that could not be measured (no artefact, a field this version lacks): says why."""
    return ClaimOutcome(
        key=claim.key,
        value=float(value),
        low=math.nan,
        high=math.nan,
        n=int(n),
        unit_of_n=unit_of_n,
        verdict=NOT_MEASURED,
        note=f"not measured: {why}",
    )


def format_value(value: float, unit: str, digits: int = 3) -> str:
    """A value in the claim's unit (fractions as percent)."""
    if not math.isfinite(value):
        return "—"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "×":
        return f"{value:.{digits}g}×"
    return f"{value:.{digits}g}"


def format_outcome(outcome: ClaimOutcome, unit: str) -> str:
    """``x [lo, hi] (n units)`` in the claim's unit, or ``—``."""
    if not math.isfinite(outcome.value):
        return "—"
    shown = format_value(outcome.value, unit)
    if math.isfinite(outcome.low) and math.isfinite(outcome.high):
        shown += f" [{format_value(outcome.low, unit)}, {format_value(outcome.high, unit)}]"
    else:
        shown += " [no interval]"
    if outcome.n:
        shown += f" (n={outcome.n} {outcome.unit_of_n})".replace(" )", ")")
    return shown
