"""Direct logit attribution: one logit split over the embeddings, every attention layer and head, every MLP.

See :mod:`lenslab.probes.dla.split` for the split. The target is the model's own top
prediction at a position, or a token given as text; with a second (contrast) token the target is
the logit difference, the usual measure in circuit analyses (IOI: ``logit(' Mary') − logit(' John')``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.dla import split
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.plotting import label
from lenslab.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class DLAConfig(Config):
    """Which logit to attribute, at which position."""

    position: int = field(
        default=-1, metadata={"help": "token position whose prediction is split (-1: last)"}
    )
    answer: str = field(
        default="", metadata={"help": "target token as text, one token (empty: the model's top prediction)"}
    )
    contrast: str = field(
        default="", metadata={"help": "second token: attribute logit(answer) − logit(contrast) (empty: none)"}
    )

    def validate(self, session: ModelSession) -> None:
        """Types, then each answer text must be exactly one token of the model."""
        super().validate(session)
        for name in ("answer", "contrast"):
            if getattr(self, name):
                single_token(session, getattr(self, name), name)
        if self.contrast and not self.answer:
            raise ValueError("contrast needs an answer: give the answer token too")


def single_token(session: ModelSession, text: str, what: str) -> int:
    """The id of ``text`` as a single token, or a ValueError naming the field and what it split into."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates crash the tokenizer with a TypeError
        raise ValueError(f"{what} {text!r} is not valid text") from None
    ids = session.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = session.decode_each(ids)
        raise ValueError(
            f"{what} {text!r} is {len(ids)} tokens {pieces}; give exactly one token "
            "(mind the leading space, e.g. ' Paris')"
        )
    return int(ids[0])


@dataclass(frozen=True)
class DLAResult(Result):
    """The logit (difference) split over components; the parts plus ``constant`` sum to ``actual``."""

    probe = "dla"
    config: DLAConfig
    tokens: list[str]
    position: int
    target_id: int
    target_token: str
    contrast_id: int  # −1: no contrast
    contrast_token: str
    labels: list[str]  # "embed", "L0 attn", "L0 mlp", ...
    values: Float[np.ndarray, " component"]
    head_values: Float[np.ndarray, "layer head"]
    attn_bias: Float[np.ndarray, " layer"]  # the output projection's bias share of each attention layer
    constant: float  # final-norm bias + unembedding bias through the target direction
    actual: float  # the pre-soft-cap logit (difference) of the run
    model_logit: float  # the model's output logit (difference) as returned (after any soft-cap)
    softcap: float  # the final logit soft-cap (0: none)
    resid_error: float  # ‖Σ components − resid‖ / ‖resid‖
    norm: str  # how the final norm was linearised

    @property
    def residual(self) -> float:
        """Σ parts + constant − actual: the identity check (float rounding only)."""
        return float(self.values.sum(dtype=np.float64)) + self.constant - self.actual

    def target_text(self, escape: bool = False) -> str:
        """What is attributed, in words (``escape``: tokens made safe for plotly text)."""
        what = "pre-soft-cap logit" if self.softcap else "logit"
        show = (lambda t: repr(label(t))) if escape else repr
        if self.contrast_id >= 0:
            return f"{what}({show(self.target_token)}) − {what}({show(self.contrast_token)})"
        return f"{what}({show(self.target_token)})"

    def summary(self) -> dict[str, Any]:
        """Target, actual value, the identity residual and the largest parts."""
        top = int(np.argmax(np.abs(self.values)))
        layer, head = np.unravel_index(int(np.argmax(np.abs(self.head_values))), self.head_values.shape)
        return {
            "target": self.target_text(),
            "actual": self.actual,
            "Σ parts − actual": self.residual,
            "largest component": f"{self.labels[top]} {self.values[top]:+.3g}",
            "largest head": f"L{layer}H{head} {self.head_values[layer, head]:+.3g}",
        }

    def figures(self) -> dict[str, go.Figure]:
        """Waterfall over components, attention vs MLP by layer, and layer × head."""
        measures = ["relative"] * (len(self.labels) + 1) + ["total"]
        waterfall = go.Figure(
            go.Waterfall(
                x=[*self.labels, "biases", "total"],
                y=[*self.values.tolist(), self.constant, 0.0],
                measure=measures,
                hovertemplate="%{x}: %{y:+.4f}<extra></extra>",
            )
        )
        waterfall.update_layout(
            title=f"Direct logit attribution of {self.target_text(escape=True)} at position {self.position} "
            f"(Σ parts − actual = {self.residual:.1e})",
            yaxis_title="contribution (logit units)",
            template="plotly_white",
            height=420,
        )
        n_layers = len(self.attn_bias)
        layers = go.Figure(
            [
                go.Bar(name="attention", x=list(range(n_layers)), y=self.values[1::2]),
                go.Bar(name="MLP", x=list(range(n_layers)), y=self.values[2::2]),
            ]
        )
        layers.update_layout(
            title=f"By layer (embeddings: {self.values[0]:+.3g}, biases: {self.constant:+.3g})",
            barmode="group",
            xaxis_title="layer",
            yaxis_title="contribution (logit units)",
            template="plotly_white",
        )
        limit = float(np.abs(self.head_values).max()) or 1.0
        heads = go.Figure(
            go.Heatmap(
                z=self.head_values,
                x=[f"H{h}" for h in range(self.head_values.shape[1])],
                y=[f"L{layer}" for layer in range(n_layers)],
                colorscale="RdBu",
                zmid=0.0,
                zmin=-limit,
                zmax=limit,
                colorbar={"title": "contribution"},
                hovertemplate="%{y} %{x}: %{z:+.4f}<extra></extra>",
            )
        )
        heads.update_layout(
            title="Per head (each layer's heads + its output bias = its attention bar)",
            xaxis_title="head",
            yaxis={"title": "layer", "autorange": "reversed"},
            template="plotly_white",
            height=max(320, 22 * n_layers + 140),
        )
        return {"waterfall": waterfall, "layers": layers, "heads": heads}


@register
class DirectLogitAttribution(Probe[DLAConfig, DLAResult]):
    """Split a logit over what each component wrote into the residual stream."""

    name = "dla"
    title = "Direct logit attribution"
    description = (
        "A prediction's logit split over the embeddings, every attention layer and head and every MLP, "
        "through the final norm with its scale from the run."
    )
    config_cls = DLAConfig
    result_cls = DLAResult

    def run(
        self, session: ModelSession, prompt: str, config: DLAConfig, progress: Progress = NO_PROGRESS
    ) -> DLAResult:
        """One forward recording every component; the split is exact up to float rounding."""
        config.validate(session)
        tokens = session.tokenize(prompt)
        position = session.check_position(config.position, int(tokens.shape[-1]))
        progress(0.0, "forward pass")
        with session.lock:
            run = session.run(tokens, split.hook_names(session))
            parts = split.decompose(session, run.activations, position)
            logits = run.logits[0, position].float()
            target = single_token(session, config.answer, "answer") if config.answer else int(logits.argmax())
            contrast = single_token(session, config.contrast, "contrast") if config.contrast else None
            attribution = split.attribute(session, parts, split.logit_direction(session, target, contrast))
        progress(1.0, "done")
        model_logit = float(logits[target]) - (float(logits[contrast]) if contrast is not None else 0.0)
        cap = getattr(session.hf_config, "final_logit_softcapping", None)
        return DLAResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(tokens[0].tolist()),
            position=position,
            target_id=target,
            target_token=session.decode_each([target])[0],
            contrast_id=-1 if contrast is None else contrast,
            contrast_token="" if contrast is None else session.decode_each([contrast])[0],
            labels=parts.labels,
            values=to_numpy(attribution.components),
            head_values=to_numpy(attribution.heads),
            attn_bias=to_numpy(attribution.attn_bias),
            constant=attribution.constant,
            actual=attribution.actual,
            model_logit=model_logit,
            softcap=float(cap or 0.0),
            resid_error=attribution.resid_error,
            norm=_norm_text(session),
        )


def _norm_text(session: ModelSession) -> str:
    norm = session.norm_parts(session.hf_final_norm())
    kind = "LayerNorm (centred per component)" if norm.centers else "RMSNorm"
    return f"{kind}, scale frozen at the run's value"


def _state_view(session: ModelSession, ref: StateRef, progress: Progress) -> DLAResult:
    return DirectLogitAttribution().run(session, ref.prompt, DLAConfig(position=ref.position), progress)


def _describe(result: DLAResult, ref: StateRef) -> list[str]:
    upto = 1 + 2 * (ref.layer + 1)  # embed, then attn and MLP of blocks 0..layer
    written = float(result.values[:upto].sum())
    order = np.argsort(-np.abs(result.values[:upto]))[:3]
    top = ", ".join(f"{result.labels[i]} {result.values[i]:+.3g}" for i in order)
    return [
        f"the state after layer {ref.layer} carries {written:+.3g} of the final {result.target_text()} "
        f"= {result.actual:+.3g} (final norm at its run scale; biases add {result.constant:+.3g})",
        f"largest parts so far: {top}",
    ]


register_state_view(StateView("dla", "Direct logit attribution", _state_view, order=45, describe=_describe))
