"""Most active MLP units of one hidden state (the neuron view of the state inspector).

A unit is the MLP's hidden activation before the down projection
(:func:`lenslab.models.hooknames.mlp_hidden`: act(gate)·up for gated MLPs, the post-GELU hidden
for GPT-2), the same unit the shared-neuron analysis scores. The state at layer ℓ is the block's
output, so its units are layer ℓ's MLP units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, read_state, register_state_view
from lenslab.probes.plotting import label
from lenslab.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class MLPUnitsConfig(Config):
    """Which state and how many units."""

    layer: int = field(default=6, metadata={"help": "layer whose MLP units are read", "min": 0})
    position: int = field(default=-1, metadata={"help": "token position (-1: last)"})
    k: int = field(default=12, metadata={"help": "units shown", "min": 1, "max": 200})

    def validate(self, session: ModelSession) -> None:
        """Check the layer against the model."""
        super().validate(session)
        session.check_layer(self.layer)


@dataclass(frozen=True)
class MLPUnitsResult(Result):
    """The k units with the largest |activation| at one (layer, position)."""

    probe = "mlp_units"
    config: MLPUnitsConfig
    tokens: list[str]
    layer: int
    position: int
    units: Int[np.ndarray, " k"]
    values: Float[np.ndarray, " k"]
    mean_abs: float  # mean |activation| over all units at this state

    def summary(self) -> dict[str, Any]:
        """The strongest unit and how far it stands out."""
        return {
            "strongest unit": f"L{self.layer}.u{int(self.units[0])}",
            "activation": float(self.values[0]),
            "× mean |act|": float(abs(self.values[0]) / max(self.mean_abs, 1e-12)),
        }

    def figures(self) -> dict[str, go.Figure]:
        """Bar chart of the top units."""
        fig = go.Figure(go.Bar(x=self.values, y=[f"u{int(u)}" for u in self.units], orientation="h"))
        fig.update_layout(
            title=f"Most active MLP units, layer {self.layer}, at {label(self.tokens[self.position])}",
            xaxis_title="activation",
            yaxis={"autorange": "reversed"},
            template="plotly_white",
            height=max(280, 24 * len(self.units) + 140),
        )
        return {"units": fig}


@register
class MLPUnits(Probe[MLPUnitsConfig, MLPUnitsResult]):
    """Top MLP hidden units of one state."""

    name = "mlp_units"
    title = "MLP units"
    description = "The MLP hidden units (before the down projection) most active at one state."
    config_cls = MLPUnitsConfig
    result_cls = MLPUnitsResult

    def run(
        self, session: ModelSession, prompt: str, config: MLPUnitsConfig, progress: Progress = NO_PROGRESS
    ) -> MLPUnitsResult:
        """One forward, stopped once the chosen layer's MLP hidden has fired."""
        config.validate(session)
        layer = session.check_layer(config.layer)
        state = read_state(session, prompt, hooknames.mlp_hidden(layer), config.position)
        hidden = state.vector
        top = hidden.abs().topk(min(config.k, hidden.numel())).indices
        progress(1.0, "done")
        return MLPUnitsResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=state.tokens,
            layer=layer,
            position=state.position,
            units=to_numpy(top).astype(np.int64),
            values=to_numpy(hidden[top]).astype(np.float32),
            mean_abs=float(hidden.abs().mean()),
        )


def _view(session: ModelSession, ref: StateRef, progress: Progress) -> MLPUnitsResult:
    return MLPUnits().run(
        session, ref.prompt, MLPUnitsConfig(layer=ref.layer, position=ref.position), progress
    )


def _describe(result: MLPUnitsResult, ref: StateRef) -> list[str]:
    pairs = ", ".join(
        f"u{int(u)} ({v:+.3g})" for u, v in zip(result.units[:6], result.values[:6], strict=True)
    )
    return [f"top units: {pairs}", f"mean |activation| {result.mean_abs:.3g}"]


register_state_view(StateView("mlp_units", "MLP units", _view, order=50, describe=_describe))
