"""Activation patching: which activations carry the difference between a clean and a corrupted prompt.

Modules: ``pair`` (the prompt pair, answer tokens and metric), ``sweeps`` (batched patched forward
passes), ``result`` (config, result, heatmaps), ``probe`` (the sweep probe) and ``patch_lens`` (one
state patched into another prompt, read with the logit lens; also the state inspector's view).
"""

from lenslab.probes.patching.pair import PromptPair, metric, normalise, resolve_pair
from lenslab.probes.patching.patch_lens import IDENTITY_PROMPT, PatchLens, PatchLensConfig, PatchLensResult
from lenslab.probes.patching.probe import ActivationPatching
from lenslab.probes.patching.result import PatchingConfig, PatchingResult, PatchSweep
from lenslab.probes.patching.sweeps import Patch, patched_hidden, source_activations, sweep_rows

__all__ = [
    "IDENTITY_PROMPT",
    "ActivationPatching",
    "Patch",
    "PatchLens",
    "PatchLensConfig",
    "PatchLensResult",
    "PatchSweep",
    "PatchingConfig",
    "PatchingResult",
    "PromptPair",
    "metric",
    "normalise",
    "patched_hidden",
    "resolve_pair",
    "source_activations",
    "sweep_rows",
]
