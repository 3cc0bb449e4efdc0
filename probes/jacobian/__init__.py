"""Detached Jacobian (Golden 2025): the exact linear system the network computes for one input.

Modules: ``detached`` (freezing every nonlinear coefficient on this input), ``operator`` (the
detached network compiled into an explicit linear operator and its transpose), ``algorithms``
(contributions, full J, matrix-free SVD, layer sweep), ``result`` (config, result, figures) and
``probe`` (the probe and its inspector view).
"""

from lenslab.probes.jacobian.algorithms import contributions, jacobian, krylov_svd
from lenslab.probes.jacobian.detached import detached, record_coefficients, target_hook
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.probes.jacobian.probe import JacobianProbe
from lenslab.probes.jacobian.result import JacobianConfig, JacobianResult

__all__ = [
    "JacobianConfig",
    "JacobianProbe",
    "JacobianResult",
    "LinearizedModel",
    "contributions",
    "detached",
    "jacobian",
    "krylov_svd",
    "record_coefficients",
    "target_hook",
]
