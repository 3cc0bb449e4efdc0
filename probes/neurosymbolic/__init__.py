"""Neurosymbolic encoding (Dhanraj & Eliasmith 2025): problems read out of hidden states as VSA.

Modules: ``vsa`` (holographic reduced representations and a codebook), ``tasks`` (problems with
exact answers), ``fit`` (ridge maps and batched state collection), ``artefact`` (what is fitted
and where it is stored), ``readout`` (read out, solve, write back), ``pipeline`` (fitting an
artefact from tasks), ``probe`` (the problem-solving probe) and ``vsa_readout`` (the VSA lens of
any hidden state, shown in the inspector).
"""

from lenslab.probes.neurosymbolic import vsa
from lenslab.probes.neurosymbolic.artefact import TrainConfig
from lenslab.probes.neurosymbolic.probe import (
    NeurosymbolicConfig,
    NeurosymbolicProbe,
    NeurosymbolicResult,
    fit_summary,
    load_artefact,
    prepare_default_artefacts,
)
from lenslab.probes.neurosymbolic.vsa_readout import VSAReadout, VSAReadoutConfig, VSAReadoutResult

__all__ = [
    "NeurosymbolicConfig",
    "NeurosymbolicProbe",
    "NeurosymbolicResult",
    "TrainConfig",
    "VSAReadout",
    "VSAReadoutConfig",
    "VSAReadoutResult",
    "fit_summary",
    "load_artefact",
    "prepare_default_artefacts",
    "vsa",
]
