"""Neurosymbolic readout of ANY hidden state (the VSA lens of the state inspector).

Applies the fitted encoder of the state's layer to the state and decodes the VSA vector: the
operation scores, the two operands and, when the gate lets it act (range, operation score and
the layer's calibrated read-out confidence), the exact answer the symbolic system would compute.
For states that are not arithmetic problems this shows what the encoder "sees" — typically low
operation scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, read_state, register_state_view
from lenslab.probes.neurosymbolic.probe import load_artefact
from lenslab.probes.neurosymbolic.readout import read_out
from lenslab.probes.neurosymbolic.tasks import OPERATIONS
from lenslab.probes.plotting import label
from lenslab.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class VSAReadoutConfig(Config):
    """Which state to read and the confidence threshold."""

    layer: int = field(default=6, metadata={"help": "layer of the state", "min": 0})
    position: int = field(default=-1, metadata={"help": "token position (-1: last)"})
    threshold: float = field(default=0.8, metadata={"help": "act only above this operation score"})

    def validate(self, session: ModelSession) -> None:
        """Check the layer against the model."""
        super().validate(session)
        session.check_layer(self.layer)


@dataclass(frozen=True)
class VSAReadoutResult(Result):
    """The encoder's decoded problem for one state."""

    probe = "vsa_readout"
    config: VSAReadoutConfig
    tokens: list[str]
    layer: int
    position: int
    operation_names: list[str]
    operation_scores: np.ndarray
    operation: str
    first: int
    second: int
    fired: bool
    answer: int  # -1 when the system would not act
    in_distribution: bool = True  # within the encoder's training states (False: not a problem state)
    confidence: float = float("nan")  # the weakest slot's margin (see gate.py)
    gate_threshold: float = float("inf")  # the layer's calibrated threshold (inf: never acts)
    reason: str = ""  # why the system abstains ("" when it acts)

    def summary(self) -> dict[str, Any]:
        """Decoded problem and whether the system would act (and why not)."""
        symbol = OPERATIONS[self.operation][0]
        if self.fired:
            answer: Any = self.answer
        elif not self.in_distribution:
            answer = "abstains (not an arithmetic-problem state: outside the encoder's training range)"
        else:
            answer = f"abstains ({self.reason or 'below threshold'})"
        return {
            "decoded problem": f"{self.first} {symbol} {self.second}",
            "best operation score": round(float(self.operation_scores.max()), 2),
            "read-out confidence": round(self.confidence, 2),
            "system answer": answer,
        }

    def figures(self) -> dict[str, go.Figure]:
        """Operation scores of this state against the threshold."""
        fig = go.Figure(
            go.Bar(x=[label(OPERATIONS[o][0]) for o in self.operation_names], y=self.operation_scores)
        )
        fig.add_hline(y=self.config.threshold, line_dash="dash", annotation_text="threshold")
        fig.update_layout(
            title=f"VSA operation scores, layer {self.layer}, at {label(self.tokens[self.position])}",
            xaxis_title="operation",
            yaxis_title="dot product with operation atom",
            template="plotly_white",
        )
        return {"operation_scores": fig}


@register
class VSAReadout(Probe[VSAReadoutConfig, VSAReadoutResult]):
    """Decode one hidden state with the fitted VSA encoder of its layer."""

    name = "vsa_readout"
    title = "VSA readout"
    description = "What the neurosymbolic encoder reads out of one hidden state."
    config_cls = VSAReadoutConfig
    result_cls = VSAReadoutResult

    def run(
        self, session: ModelSession, prompt: str, config: VSAReadoutConfig, progress: Progress = NO_PROGRESS
    ) -> VSAReadoutResult:
        """Encode the state with the saved encoder (fit them on the Neurosymbolic page first)."""
        config.validate(session)
        artefact = load_artefact(session)
        layer = session.check_layer(config.layer)
        state = read_state(session, prompt, session.resid_name(layer), config.position)
        readout = read_out(
            artefact.codebook,
            artefact.encoders[layer],
            state.vector[None],
            config.threshold,
            artefact.gate(layer),
        )
        answer = readout.system_answers[0]
        progress(1.0, "done")
        return VSAReadoutResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=state.tokens,
            layer=layer,
            position=state.position,
            operation_names=list(artefact.codebook.operations),
            operation_scores=to_numpy(readout.decoded.operation_scores[0]).astype(np.float32),
            operation=readout.operations[0],
            first=int(readout.decoded.first[0]),
            second=int(readout.decoded.second[0]),
            fired=bool(readout.fired[0]),
            answer=int(answer) if readout.fired[0] and answer is not None else -1,
            in_distribution=bool(readout.in_distribution[0]),
            confidence=float(readout.confidence[0]),
            gate_threshold=float(artefact.gate(layer)),
            reason=readout.reasons[0],
        )


def _view(session: ModelSession, ref: StateRef, progress: Progress) -> VSAReadoutResult:
    config = VSAReadoutConfig(layer=ref.layer, position=ref.position)
    return VSAReadout().run(session, ref.prompt, config, progress)


def _describe(result: VSAReadoutResult, ref: StateRef) -> list[str]:
    return [f"{k}: {v}" for k, v in result.summary().items()]


register_state_view(StateView("vsa_readout", "Neurosymbolic readout", _view, order=70, describe=_describe))
