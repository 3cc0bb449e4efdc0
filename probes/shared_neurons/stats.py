"""Overlap statistics of the shared-neuron analysis: per-layer overlap, Jaccard, chance, p-values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from scipy.stats import hypergeom


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
