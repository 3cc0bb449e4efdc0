"""Cheap settings for the reliability, browser and every-probe tests, keyed by probe name.

Test-only knobs live here, not in the probes: probes whose defaults take long on the embedded
(or tiny) model get smaller sizes; every other probe runs at its defaults. ``tests/e2e_app.py``
starts the browser tests' app with these as each probe's ``default_config()``.
"""

from __future__ import annotations

from collections.abc import Callable

from lenslab.probes import Config, get_probe
from lenslab.probes.attention import AttentionConfig
from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig
from lenslab.probes.jacobian.result import JacobianConfig
from lenslab.probes.jacobian_lens.probe import JacobianLensConfig
from lenslab.probes.mlp_units import MLPUnitsConfig
from lenslab.probes.neurosymbolic.vsa_readout import VSAReadoutConfig
from lenslab.probes.patching import PatchingConfig
from lenslab.probes.replications import ReplicationsConfig
from lenslab.probes.sae.features import SAEFeatureConfig
from lenslab.probes.shared_neurons.result import SharedNeuronsConfig

FAST: dict[str, Callable[[], Config]] = {
    "future_lens_eval": lambda: FutureLensEvalConfig(
        n_examples=16, prefix_tokens=8, layers=(0,), fixed_prompt=False, learned_prompt=False
    ),
    "jacobian": lambda: JacobianConfig(max_tokens=48, layer_sweep=False, n_components=2),
    "mlp_units": lambda: MLPUnitsConfig(layer=0),
    "sae_feature": lambda: SAEFeatureConfig(n_seq=8, context_size=16),
    "shared_neurons": lambda: SharedNeuronsConfig(n_prompts=4, causal=False),
    "vsa_readout": lambda: VSAReadoutConfig(layer=0),
    "attention": lambda: AttentionConfig(induction_length=8, induction_sequences=2),
    # one digit changed: same token count on the tiny character tokenizer and on Gemma
    "activation_patching": lambda: PatchingConfig(
        corrupted="The Eiffel Tower is in <b>Paris</b> & 48 + 8 =",
        clean_answer="5",
        corrupted_answer="6",
        sweeps=("resid", "heads"),
        layers=(0, 1),
    ),
    "jacobian_lens": lambda: JacobianLensConfig(auto_fit_prompts=2),
    "replications": lambda: ReplicationsConfig(families=("jacobian", "sae", "neurosymbolic")),
}


def fast_config(name: str) -> Config:
    """The fast config of probe ``name``: its entry in :data:`FAST`, else its default config."""
    return FAST[name]() if name in FAST else get_probe(name).default_config()


# The browser tests' app always runs the embedded model (18 layers): sizes valid only there. The
# J-lens page decodes four layers (each layer decodes every position through the 262k-token
# unembedding twice), and the J-gap's cost grows with the layers after its layer, so it is
# computed near the end (the middle layer, the default, is exercised by the notebook and the
# integration tests). The replications
# page re-runs the families that read prepared artefacts (as its notebook does): the Jacobian
# family's float64 runs take minutes on the embedded model on a CPU; its claims are tested on the
# tiny model (tests/probes/replications) and its float64 probe run on the embedded model in the
# jacobian notebook.
BROWSER: dict[str, Callable[[], Config]] = {
    **FAST,
    "jacobian_lens": lambda: JacobianLensConfig(auto_fit_prompts=2, layers=(0, 9, 16, 17), gap_layer=16),
    "replications": lambda: ReplicationsConfig(families=("sae", "neurosymbolic")),
}
