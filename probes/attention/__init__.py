"""Attention heads: every pattern of a prompt, per-head scores, and the inspector's head view."""

from lenslab.probes.attention import lens as _lens  # noqa: F401  (registers the inspector lens)
from lenslab.probes.attention.probe import AttentionHeads, induction_scores, random_repeated_tokens
from lenslab.probes.attention.result import AttentionConfig, AttentionResult
from lenslab.probes.attention.scores import entropy, first_token, induction, previous_token

__all__ = [
    "AttentionConfig",
    "AttentionHeads",
    "AttentionResult",
    "entropy",
    "first_token",
    "induction",
    "induction_scores",
    "previous_token",
    "random_repeated_tokens",
]
