"""Inspector registrations for probes that live in several modules (one registration each).

Each view computes an ordinary probe Result for the inspected state, so the inspector can show
its figures and save everything as one report.
"""

from __future__ import annotations

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.base import Progress
from lenslab.probes.future_lens import FutureLens, FutureLensConfig, FutureLensResult
from lenslab.probes.jacobian import JacobianConfig, JacobianProbe, JacobianResult
from lenslab.probes.sae_features import SAEFeatures, SAEFeaturesConfig, SAEFeaturesResult
from lenslab.probes.sae_loading import load_sae
from lenslab.probes.state_inspector import StateRef, StateView, register_state_view


def _hook_layer(hook_name: str) -> int | None:
    """Layer of a ``blocks.<n>.…`` hook name (None for hooks outside the blocks)."""
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def _sae_view(session: ModelSession, ref: StateRef, progress: Progress) -> SAEFeaturesResult:
    loaded = load_sae(session, SAEFeaturesConfig().sae)
    layer = _hook_layer(loaded.hook_name)
    if layer != ref.layer:
        raise ValueError(
            f"the SAE reads {loaded.hook_name} (layer {layer}); open the inspector at layer {layer} "
            "or train an SAE for this layer on the SAE page"
        )
    return SAEFeatures().run(session, ref.prompt, SAEFeaturesConfig(k=10), progress, loaded=loaded)


def _sae_describe(result: SAEFeaturesResult, ref: StateRef) -> list[str]:
    if ref.position == 0:
        return ["position 0 is BOS: the SAE view leaves it out"]
    pairs = result.token_features(ref.position)
    return [
        f"SAE {result.sae_label}",
        "top features: " + ", ".join(f"f{f} ({value:.3g})" for f, value in pairs),
        f"L0 here {float(result.l0[ref.position]):.0f}; explained variance on the prompt "
        f"{result.explained_variance:.3f}",
    ]


register_state_view(StateView("sae_features", "SAE features", _sae_view, order=40, describe=_sae_describe))


def _jacobian_view(session: ModelSession, ref: StateRef, progress: Progress) -> JacobianResult:
    config = JacobianConfig(position=ref.position, layer=ref.layer, layer_sweep=False, n_components=4)
    return JacobianProbe().run(session, ref.prompt, config, progress)


def _jacobian_describe(result: JacobianResult, ref: StateRef) -> list[str]:
    order = np.argsort(-result.contribution_norm)[:3]
    drivers = ", ".join(f"{result.tokens[i]!r} ({result.contribution_norm[i]:.3g})" for i in order)
    top = ", ".join(repr(t) for t in result.left_tokens[0][:5]) if result.left_tokens else "—"
    return [
        f"reconstruction error ‖Σ J_i x_i − y‖/‖y‖ = {result.reconstruction_error:.2e}",
        f"largest token contributions ‖J_i x_i‖: {drivers}",
        f"top singular direction decodes to {top}; stable rank {result.stable_rank:.1f}",
    ]


register_state_view(
    StateView("jacobian", "Detached Jacobian", _jacobian_view, order=30, describe=_jacobian_describe)
)


def _future_view(session: ModelSession, ref: StateRef, progress: Progress) -> FutureLensResult:
    config = FutureLensConfig(method="linear", horizon=3, layers=(ref.layer,))
    try:
        return FutureLens().run(session, ref.prompt, config, progress)
    except FileNotFoundError:  # no linear maps fitted yet: the untrained fixed-prompt method
        return FutureLens().run(session, ref.prompt, config.replace(method="fixed"), progress)


def _future_describe(result: FutureLensResult, ref: StateRef) -> list[str]:
    cell = result.top_tokens[0][ref.position]
    probs = result.top_probs[0, ref.position]
    predicted = ", ".join(f"t+{n + 1}: {cell[n][0]!r} ({probs[n, 0]:.2f})" for n in range(len(cell)))
    actual = " ".join(repr(t) for t in result.actual_tokens[ref.position])
    return [f"{result.method} method — {predicted}", f"model's actual continuation: {actual}"]


register_state_view(
    StateView("future_lens", "Future Lens (t+1..t+4)", _future_view, order=20, describe=_future_describe)
)
