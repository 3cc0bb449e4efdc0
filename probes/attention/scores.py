"""Per-head scores of attention patterns: pure tensor functions with one value per query position.

Each function takes patterns ``[... head query key]`` (rows sum to 1, causal) and returns the
per-query values a score averages, so the caller can give the mean its n and interval. Query 0
is left out everywhere: it can only attend to itself, so it says nothing about the head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.probes.stats import mean_ci


def previous_token(pattern: Float[Tensor, "... q k"]) -> Float[Tensor, "... q_minus_1"]:
    """Attention from each query i ≥ 1 to key i − 1 (Olsson et al.'s previous-token heads)."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)


def first_token(pattern: Float[Tensor, "... q k"]) -> Float[Tensor, "... q_minus_1"]:
    """Attention from each query i ≥ 1 to position 0 (BOS when the model adds one): the attention sink."""
    return pattern[..., 1:, 0]


def entropy(pattern: Float[Tensor, "... q k"]) -> Float[Tensor, "... q_minus_1"]:
    """Entropy in nats of each query row i ≥ 1 (0·log 0 = 0); log(i + 1) is a uniform row's."""
    p = pattern[..., 1:, :].to(torch.float64)
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)


def induction(pattern: Float[Tensor, "... q k"], period: int, start: int) -> Float[Tensor, "... period"]:
    """Attention from each token of a repeated sequence's second copy to the token after its first occurrence.

    The input is ``prefix (start tokens) + s + s`` with ``len(s) = period``: query ``i`` in the second
    copy (``start + period ≤ i < start + 2·period``) holds the token at ``i − period``, and an
    induction head attends to the token that followed it, at ``i − period + 1``
    (Olsson et al. 2022; TransformerLens' ``diagonal(offset=1 − period)``, restricted to the second copy).
    With ``period`` 2 that key is the previous token: a period of at least 3 tells the two apart.
    """
    stripe = pattern.diagonal(offset=1 - period, dim1=-2, dim2=-1)  # query i ↔ key i − period + 1
    first = start + period - (period - 1)  # stripe index of query start + period
    return stripe[..., first : first + period]


def intervals(
    values: Float[np.ndarray, "layer head n"], bounds: tuple[float, float] | None = (0.0, 1.0)
) -> Float[np.ndarray, "layer head 3"]:
    """Mean and Student-t 95% interval of the last axis, per (layer, head): ``[estimate, low, high]``.

    The interval is cut to ``bounds``, the range the score can take (attention weights: [0, 1]).
    """
    out = np.full((*values.shape[:2], 3), math.nan)
    for index in np.ndindex(*values.shape[:2]):
        out[index] = mean_ci(values[index], bounds).as_tuple()
    return out
