"""Sample sizes and 95% intervals for every rate and mean a probe reports.

One small module so that all probes state uncertainty the same way:

- :func:`wilson` — a proportion of independent trials (scipy's Wilson score interval);
- :func:`mean_ci` — a mean of independent values (Student t);
- :func:`bootstrap_by_group` — any statistic of correlated items, resampling whole groups
  (documents, prompts, problems) with replacement: overlapping windows of one document are not
  independent evidence, so the interval must come from resampling documents, not windows.

Each returns an :class:`Interval` (estimate, low, high, n, method) that results store as plain
numbers, figures draw as error bars and tables print as ``x [lo, hi]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Shaped
from scipy import stats as scipy_stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval, the number of units behind it and how it was computed."""

    estimate: float
    low: float
    high: float
    n: int  # independent units: trials (Wilson), values (t) or groups (bootstrap)
    method: str  # "wilson", "t", "bootstrap over <unit>"

    def as_tuple(self) -> tuple[float, float, float]:
        """``(estimate, low, high)`` for arrays in results."""
        return (self.estimate, self.low, self.high)

    def text(self, digits: int = 3, percent: bool = False) -> str:
        """``0.412 [0.35, 0.47]`` (or ``41.2% [35.0, 47.0]``) — how tables print an estimate."""
        return format_interval(self.estimate, self.low, self.high, digits=digits, percent=percent)


def format_interval(
    estimate: float, low: float, high: float, *, digits: int = 3, percent: bool = False
) -> str:
    """``x [lo, hi]`` with ``digits`` significant digits (percent: one decimal, in %)."""
    if not math.isfinite(estimate):
        return "—"
    if percent:
        return f"{100 * estimate:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{estimate:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def wilson(successes: int, trials: int) -> Interval:
    """Proportion ``successes / trials`` with the Wilson score interval (good at small n and near 0/1)."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 ≤ successes ≤ trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson")
    ci = scipy_stats.binomtest(int(successes), int(trials)).proportion_ci(LEVEL, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high), int(trials), "wilson")


def mean_ci(values: Float[np.ndarray, " n"], bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of independent ``values`` with a Student-t interval (NaN interval for n < 2).

    ``bounds`` is the range the quantity can take (e.g. (0, 1) for an attention weight): the
    symmetric t interval is cut to it, so a few values near a bound never yield an impossible
    endpoint such as 1.05; the method then reads "t, cut to [lo, hi]".
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "t")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "t")
    sem = float(x.std(ddof=1) / math.sqrt(n))
    half = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sem
    low, high = mean - half, mean + half
    if bounds is None or (bounds[0] <= low and high <= bounds[1]):
        return Interval(mean, low, high, n, "t")
    low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, n, f"t, cut to [{bounds[0]:g}, {bounds[1]:g}]")


def bootstrap_by_group(
    values: Shaped[np.ndarray, "n ..."],
    groups: Shaped[np.ndarray, " n"],
    statistic: Callable[[np.ndarray], float] = lambda v: float(np.mean(v)),
    *,
    unit: str = "groups",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``statistic(values)`` with a percentile interval from resampling whole groups.

    ``values[i]`` belongs to group ``groups[i]`` (e.g. the document a window was cut from). Each
    resample draws as many groups as there are, with replacement, and keeps all their items, so
    items that share a group move together. The estimate is the statistic on the data as given;
    with a single group the interval is NaN (there is nothing to resample).
    """
    values = np.asarray(values)
    groups = np.asarray(groups)
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} group labels")
    method = f"bootstrap over {unit}"
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, method)
    estimate = float(statistic(values))
    labels, index = np.unique(groups, return_inverse=True)
    n_groups = len(labels)
    if n_groups < 2:
        return Interval(estimate, math.nan, math.nan, n_groups, method)
    members = [np.flatnonzero(index == g) for g in range(n_groups)]
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(0, n_groups, n_groups)
        draws[r] = statistic(values[np.concatenate([members[g] for g in chosen])])
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(estimate, float(low), float(high), n_groups, method)


def paired_difference(after: Float[np.ndarray, " n"], before: Float[np.ndarray, " n"]) -> Interval:
    """Mean of ``after − before`` over paired units with a Student-t interval (the paired t-test's).

    Pairing (the same problem under two conditions) removes the between-unit spread that an
    interval on the difference of two separate means would carry.
    """
    a = np.asarray(after, dtype=np.float64).ravel()
    b = np.asarray(before, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    interval = mean_ci(a - b)
    return Interval(interval.estimate, interval.low, interval.high, interval.n, "paired t")
