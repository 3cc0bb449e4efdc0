"""Direct logit attribution: a logit split over embeddings, attention layers and heads, and MLPs."""

from lenslab.probes.dla.probe import DirectLogitAttribution, DLAConfig, DLAResult
from lenslab.probes.dla.split import Attribution, Decomposition, attribute, decompose, logit_direction

__all__ = [
    "Attribution",
    "DLAConfig",
    "DLAResult",
    "Decomposition",
    "DirectLogitAttribution",
    "attribute",
    "decompose",
    "logit_direction",
]
