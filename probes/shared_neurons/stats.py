"""Statistics of the shared-neuron analysis.

- overlap of two top-unit selections per layer, Jaccard, the random-subset chance level and its
  hypergeometric p-value (:func:`overlap_stats`);
- bootstrap over prompts of the overlap of several selection pairs at once, so a task pair can
  be read against control pairs with intervals (:func:`bootstrap_overlaps`);
- the magnitude-matched random controls (:func:`matched_samples`) and its rank check (:func:`rank_ks`);
- bootstrap intervals of contrasts between causal effects, such as the double-dissociation
  interaction (:func:`bootstrap_contrasts`);
- p-values as text (:func:`format_p`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from scipy.stats import hypergeom, ks_2samp

from lenslab.probes.stats import BOOTSTRAP_RESAMPLES, LEVEL, Interval

SMALLEST_P = 1e-300


# ----------------------------------------------------------------------------------- overlap maths
@dataclass(frozen=True)
class Overlap:
    """Overlap of two top-unit selections per layer, with the chance level."""

    count: Int[np.ndarray, " layer"]
    fraction: Float[np.ndarray, " layer"]  # |A∩B| / k
    jaccard: Float[np.ndarray, " layer"]
    expected: Float[np.ndarray, " layer"]  # k_a k_b / n for random subsets
    p_value: Float[np.ndarray, " layer"]  # P(X ≥ count), X hypergeometric
    total_fraction: float
    total_expected_fraction: float
    total_p_value: float


def expected_overlap(n: int, k_a: int, k_b: int) -> float:
    """Mean overlap of a random ``k_a``-subset and a random ``k_b``-subset of ``n`` units."""
    return k_a * k_b / n


def overlap_p_value(n: int, k_a: int, k_b: int, observed: int) -> float:
    """P(overlap ≥ ``observed``) for random subsets: the hypergeometric upper tail."""
    return float(hypergeom.sf(observed - 1, n, k_a, k_b))


def total_overlap_p_value(n: int, k_a: Sequence[int], k_b: Sequence[int], observed: int) -> float:
    """P(Σ_layers overlap ≥ ``observed``) with independent random subsets in every layer (exact)."""
    pmf = np.ones(1)
    for a, b in zip(k_a, k_b, strict=True):
        support = np.arange(min(a, b) + 1)
        pmf = np.convolve(pmf, hypergeom.pmf(support, n, a, b))
    return float(min(1.0, max(0.0, pmf[observed:].sum())))


def overlap_stats(top_a: Sequence[Sequence[int]], top_b: Sequence[Sequence[int]], n: int) -> Overlap:
    """Per-layer overlap, Jaccard, chance level and p-values of two top-unit selections of ``n`` units."""
    if len(top_a) != len(top_b) or not len(top_a):
        raise ValueError("both selections need the same, non-zero number of layers")
    counts, fractions, jaccards, expected, p_values, sizes_a, sizes_b = [], [], [], [], [], [], []
    for units_a, units_b in zip(top_a, top_b, strict=True):
        set_a, set_b = {int(u) for u in units_a}, {int(u) for u in units_b}
        if not set_a or not set_b:
            raise ValueError("every layer needs at least one selected unit in both sets")
        if max(set_a | set_b) >= n or min(set_a | set_b) < 0:
            raise ValueError(f"unit index out of range for {n} units")
        shared = len(set_a & set_b)
        counts.append(shared)
        fractions.append(shared / min(len(set_a), len(set_b)))
        jaccards.append(shared / len(set_a | set_b))
        expected.append(expected_overlap(n, len(set_a), len(set_b)))
        p_values.append(overlap_p_value(n, len(set_a), len(set_b), shared))
        sizes_a.append(len(set_a))
        sizes_b.append(len(set_b))
    total = int(sum(counts))
    denominator = sum(min(a, b) for a, b in zip(sizes_a, sizes_b, strict=True))
    return Overlap(
        count=np.asarray(counts, dtype=np.int64),
        fraction=np.asarray(fractions, dtype=np.float64),
        jaccard=np.asarray(jaccards, dtype=np.float64),
        expected=np.asarray(expected, dtype=np.float64),
        p_value=np.asarray(p_values, dtype=np.float64),
        total_fraction=total / denominator,
        total_expected_fraction=float(sum(expected)) / denominator,
        total_p_value=total_overlap_p_value(n, sizes_a, sizes_b, total),
    )


def top_units(scores: Float[np.ndarray, "layer unit"], k: int) -> Int[np.ndarray, "layer k"]:
    """Indices of the ``k`` highest-scoring units in every layer, best first (ties: lower index)."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k={k} must be between 1 and the number of units {scores.shape[-1]}")
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[:, :k].astype(np.int64)


def format_p(p: float) -> str:
    """A p-value as text: ``< 1e-300`` below double precision's reach, else 2 significant digits."""
    if not np.isfinite(p):
        return "—"
    if p < SMALLEST_P:
        return "< 1e-300"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


# ---------------------------------------------------------------------------- matched random control
def magnitude_ranks(magnitude: Float[np.ndarray, " unit"]) -> Int[np.ndarray, " unit"]:
    """Rank of every unit by ``magnitude`` within its layer, 0 = strongest (ties: lower index first)."""
    ranks = np.empty(len(magnitude), dtype=np.int64)
    ranks[np.argsort(-np.asarray(magnitude), kind="stable")] = np.arange(len(magnitude))
    return ranks


def matched_samples(
    selected: Mapping[str, Sequence[int]],
    excluded: set[int],
    magnitude: Float[np.ndarray, " unit"],
    rng: np.random.Generator,
) -> dict[str, list[int]]:
    """Distinct units outside ``excluded`` at the nearest magnitude rank, one per selected unit.

    ``selected`` maps a control's name to the units it stands in for (e.g. ``random-A`` → the
    A-only units). Every selected unit of every control is visited in one random order and
    takes, among the still-free units, one whose rank by ``magnitude`` is closest to its own
    (ties at random), so the controls draw without replacement from one pool and none of them
    is systematically left the ranks the others passed over. Each control therefore has (up to
    the gaps ``excluded`` leaves) the rank distribution of its selected units. A uniform draw
    from outside the top sets would instead hold mostly weak units, whose ablation does little.
    """
    ranks = magnitude_ranks(magnitude)
    pool = np.setdiff1d(np.arange(len(magnitude)), np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    pool_ranks = ranks[pool].astype(np.float64)
    free = np.ones(len(pool), dtype=bool)
    todo = [(name, int(unit)) for name, units in selected.items() for unit in units]
    chosen: dict[str, list[int]] = {name: [] for name in selected}
    for index in rng.permutation(len(todo)):
        if not free.any():
            break
        name, unit = todo[int(index)]
        distance = np.where(free, np.abs(pool_ranks - ranks[unit]), np.inf)
        pick = int(rng.choice(np.flatnonzero(distance == distance.min())))
        free[pick] = False
        chosen[name].append(int(pool[pick]))
    return {name: sorted(units) for name, units in chosen.items()}


def matched_sample(
    selected: Sequence[int],
    excluded: set[int],
    magnitude: Float[np.ndarray, " unit"],
    rng: np.random.Generator,
) -> list[int]:
    """One distinct unit outside ``excluded`` per ``selected`` unit, at the nearest magnitude rank.

    The single-control case of :func:`matched_samples`.
    """
    return matched_samples({"control": selected}, excluded, magnitude, rng)["control"]


def rank_ks(
    groups: Mapping[int, Sequence[int]],
    reference: Mapping[int, Sequence[int]],
    magnitude: Float[np.ndarray, "layer unit"],
) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and p-value of within-layer magnitude ranks.

    Compares the ranks of ``groups`` (e.g. a random control) with those of ``reference`` (the
    units it stands in for), pooled over layers; a small p-value means the control is not
    magnitude-matched.
    """
    ranks = [magnitude_ranks(row) for row in magnitude]
    sample = [ranks[layer][u] for layer, units in groups.items() for u in units]
    target = [ranks[layer][u] for layer, units in reference.items() for u in units]
    if not sample or not target:
        return float("nan"), float("nan")
    test = ks_2samp(sample, target)
    return float(test.statistic), float(test.pvalue)


# ------------------------------------------------------------------------- bootstrap over prompts
@dataclass(frozen=True)
class GroupedScores:
    """Unit scores of one prompt set kept per prompt group: the mean is Σ sums / Σ counts.

    ``key`` names the prompts: sets with the same key (one prompt set scored on two models) are
    resampled together, sets with different keys independently.
    """

    sums: Float[np.ndarray, "group layer unit"]
    counts: Float[np.ndarray, " group"]
    key: str

    def mean(self) -> Float[np.ndarray, "layer unit"]:
        """Scores on the prompts as given."""
        return self.sums.sum(0) / self.counts.sum()


def _candidates(scores: GroupedScores, k: int) -> Int[np.ndarray, "layer m"]:
    """Per layer, the units that can enter the top ``k`` of some resample (padded with -1).

    A resampled mean is a weighted mean of the group means, so it lies between a unit's smallest
    and largest group mean; a unit whose largest group mean is below the ``k``-th largest
    smallest group mean can never be in the top ``k``. Pruning them is exact and makes the
    bootstrap several times cheaper.
    """
    group_means = scores.sums / np.maximum(scores.counts, 1e-12)[:, None, None]
    floor = -np.partition(-group_means.min(0), k - 1, axis=-1)[:, k - 1 : k]  # [layer, 1]
    possible = group_means.max(0) >= floor
    width = int(possible.sum(-1).max())
    order = np.argsort(~possible, axis=-1, kind="stable")[:, :width]  # possible units first
    return np.where(np.take_along_axis(possible, order, axis=-1), order, -1)


def bootstrap_overlaps(
    sets: Sequence[GroupedScores],
    pairs: Sequence[tuple[int, int]],
    k: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    chunk: int = 50,
) -> Int[np.ndarray, "resample pair layer"]:
    """Per-layer top-``k`` overlap counts of every pair, recomputed on prompt-resampled scores.

    Each resample draws every prompt key's groups with replacement (one draw per key, shared by
    the sets with that key), recomputes each set's mean scores and top-``k`` units per layer,
    and counts the units each pair (indices into ``sets``) shares. All pairs come from the same
    draws, so differences between pairs (task pair minus control pair) get joint intervals.
    """
    if not sets or not pairs:
        raise ValueError("bootstrap_overlaps needs at least one set and one pair")
    n_layers, n_units = sets[0].sums.shape[1:]
    if not 1 <= k <= n_units:
        raise ValueError(f"k={k} must be between 1 and the number of units {n_units}")
    sizes: dict[str, int] = {}
    for scores in sets:
        if scores.sums.shape[1:] != (n_layers, n_units):
            raise ValueError("every set needs the same [layer, unit] shape")
        if sizes.setdefault(scores.key, len(scores.counts)) != len(scores.counts):
            raise ValueError(f"sets with prompt key {scores.key!r} have different numbers of groups")
    rng = np.random.default_rng(seed)
    weights = {
        key: rng.multinomial(size, np.full(size, 1.0 / size), size=resamples).astype(np.float64)
        for key, size in sizes.items()
    }
    candidates = [_candidates(scores, k) for scores in sets]
    columns = [
        np.take_along_axis(scores.sums, np.maximum(cand, 0)[None], axis=-1)
        .reshape(len(scores.counts), -1)
        .astype(np.float32)  # float32 ranks ties only below its 1e-7 relative resolution
        for scores, cand in zip(sets, candidates, strict=True)
    ]
    counts = np.zeros((resamples, len(pairs), n_layers), dtype=np.int64)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        tops = []
        for scores, cand, cols in zip(sets, candidates, columns, strict=True):
            w = weights[scores.key][start:stop].astype(np.float32)
            means = ((w @ cols) / (w @ scores.counts)[:, None]).reshape(stop - start, *cand.shape)
            means[:, cand < 0] = -np.inf
            top = np.argpartition(-means, k - 1, axis=-1)[..., :k]
            tops.append(np.take_along_axis(np.broadcast_to(cand, means.shape), top, axis=-1))  # unit ids
        for p, (i, j) in enumerate(pairs):
            counts[start:stop, p] = (tops[i][..., :, None] == tops[j][..., None, :]).sum((-1, -2))
    return counts


def percentile_interval(
    estimate: float, draws: Float[np.ndarray, " resample"], n: int, unit: str
) -> Interval:
    """``estimate`` with the 95% percentile interval of its bootstrap ``draws``."""
    finite = np.asarray(draws, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return Interval(float(estimate), float("nan"), float("nan"), n, f"bootstrap over {unit}")
    low, high = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(float(estimate), float(low), float(high), n, f"bootstrap over {unit}")


# ------------------------------------------------------------------------- contrasts of effects
Contrast = Mapping[tuple[str, int], float]  # (condition, set index) → coefficient on that mean effect


def bootstrap_contrasts(
    delta: Float[np.ndarray, "condition set item"],
    conditions: Sequence[str],
    contrasts: Mapping[str, Contrast],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """Linear contrasts of mean per-prompt effects, with 95% bootstrap intervals over prompts.

    ``delta[c, s, i]`` is the paired effect of condition ``c`` on prompt ``i`` of set ``s`` (NaN
    past a set's end); contrast terms name a condition and a set index. Each resample redraws
    every set's prompts with replacement, keeping all conditions of a prompt together (the
    effects are paired); the sets are independent samples.
    A contrast such as the double-dissociation interaction is Σ coefficient × mean effect.
    """
    rng = np.random.default_rng(seed)
    c_index = {c: i for i, c in enumerate(conditions)}
    n_sets = delta.shape[1]
    if delta.shape[0] != len(conditions):
        raise ValueError(f"delta has {delta.shape[0]} conditions, {len(conditions)} names given")
    for contrast in contrasts.values():
        for condition, s in contrast:
            if condition not in c_index or not 0 <= s < n_sets:
                raise ValueError(f"contrast term ({condition!r}, set {s}) names no measured effect")
    valid = [np.flatnonzero(~np.isnan(delta[0, s])) for s in range(n_sets)]
    n = min(len(v) for v in valid)
    point = np.stack([np.nanmean(delta[:, s], axis=-1) for s in range(n_sets)], axis=1)  # [c, s]
    draws = np.empty((resamples, len(conditions), n_sets))
    for s, rows in enumerate(valid):
        picks = rows[rng.integers(0, len(rows), (resamples, len(rows)))] if len(rows) else None
        draws[:, :, s] = np.nan if picks is None else delta[:, s][:, picks].mean(-1).T
    out = {}
    for name, contrast in contrasts.items():
        estimate = sum(w * point[c_index[c], s] for (c, s), w in contrast.items())
        replicate = sum(w * draws[:, c_index[c], s] for (c, s), w in contrast.items())
        out[name] = percentile_interval(float(estimate), np.asarray(replicate), n, "prompts")
    return out
