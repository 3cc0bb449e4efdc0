"""Probes: the Probe / Config / Result contract and the built-in probe families.

The families are listed here explicitly (as sae-lens' ``__init__`` lists its SAE classes):
importing a family registers its probes with ``@register`` and its state-inspector views with
``register_state_view``. Adding a family is one subpackage plus one line in ``FAMILIES``.
"""

# The families, in the order the app lists them. Each import registers that family's probes.
from lenslab.probes import (
    attention,
    dla,
    feature_attribution,
    future_lens,
    jacobian,
    jacobian_lens,
    logit_lens,
    mlp_units,
    neurosymbolic,
    patching,
    replications,
    sae,
    shared_neurons,
    sweep_result,  # noqa: F401  registers the sweep's Result (a sweep runs probes, it is not one)
)
from lenslab.probes.base import (
    Config,
    Probe,
    Result,
    get_probe,
    register,
    registered_probes,
    result_class,
)
from lenslab.probes.logit_lens import LogitLens, LogitLensConfig, LogitLensResult

FAMILIES = (
    logit_lens,
    future_lens,
    jacobian,
    sae,
    shared_neurons,
    neurosymbolic,
    mlp_units,
    feature_attribution,
    attention,
    dla,
    patching,
    jacobian_lens,
    replications,
)

__all__ = [
    "FAMILIES",
    "Config",
    "LogitLens",
    "LogitLensConfig",
    "LogitLensResult",
    "Probe",
    "Result",
    "get_probe",
    "register",
    "registered_probes",
    "result_class",
]
