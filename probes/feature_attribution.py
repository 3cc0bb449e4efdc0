"""Exact feature attribution: which input tokens make an SAE feature fire at one state.

Combines the detached Jacobian with an SAE. With every nonlinear coefficient frozen, the state
y at (layer, position) is exactly Σ_i c_i (+ b for models with biases), where c_i = J_i x_i is
input token i's contribution (one batched forward, see ``jacobian.algorithms.contributions``). The
SAE's pre-activation f(y) = process_in(y)·W_enc + b_enc is affine in y, so token i's share of
feature f is f(c_i) − f(0) and the shares plus the constant term f(0) (plus f(b) − f(0)) add up
exactly to the feature's pre-activation. SAEs with a non-affine input normalisation are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.jacobian.algorithms import contributions
from lenslab.probes.jacobian.detached import record_coefficients
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.probes.plotting import label, unique_labels
from lenslab.probes.sae.loading import LoadedSAE, load_sae
from lenslab.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class FeatureAttributionConfig(Config):
    """Settings of the exact token → SAE feature attribution."""

    sae: str = field(default="default", metadata={"help": "SAE spec (as on the SAE page)"})
    position: int = field(default=-1, metadata={"help": "state position (-1: last token)"})
    n_features: int = field(
        default=8, metadata={"help": "strongest features attributed", "min": 1, "max": 64}
    )
    max_tokens: int = field(default=64, metadata={"help": "longest prompt accepted", "min": 2, "max": 512})

    def validate(self, session: ModelSession) -> None:
        """Numbers only; the SAE is checked when loaded."""
        super().validate(session)
        if not self.sae.strip():
            raise ValueError("choose an SAE ('default' is the shipped one)")


@dataclass(frozen=True)
class FeatureAttributionResult(Result):
    """Token × feature attribution of the SAE pre-activations at one state."""

    probe = "feature_attribution"
    config: FeatureAttributionConfig
    tokens: list[str]
    hook_name: str
    position: int
    features: Int[np.ndarray, " feature"]
    activations: Float[np.ndarray, " feature"]  # the SAE's real activations of those features
    pre_activations: Float[np.ndarray, " feature"]  # f(y) from the real state
    attribution: Float[np.ndarray, "token feature"]  # f(c_i) − f(0)
    constant: Float[np.ndarray, " feature"]  # f(0) (+ f(b) − f(0) for models with biases)
    max_sum_error: float  # max |Σ_i attribution + constant − pre_activation|

    def summary(self) -> dict[str, Any]:
        """Where the strongest feature comes from and how exact the sum is."""
        top = int(np.argmax(self.activations)) if len(self.activations) else 0
        driver = int(np.argmax(self.attribution[:, top])) if self.attribution.size else 0
        return {
            "state": f"{self.hook_name} @ {self.position}",
            "strongest feature": f"f{int(self.features[top])}" if len(self.features) else "—",
            "its main token": self.tokens[driver] if self.tokens else "—",
            "max |sum − pre-activation|": self.max_sum_error,
        }

    def figures(self) -> dict[str, go.Figure]:
        """Tokens × features heatmap of exact contributions to each pre-activation."""
        names = [f"f{int(f)}" for f in self.features]
        limit = float(np.abs(self.attribution).max()) if self.attribution.size else 1.0
        fig = go.Figure(
            go.Heatmap(
                z=self.attribution.T,
                x=unique_labels(self.tokens),
                y=names,
                colorscale="RdBu",
                zmid=0.0,
                zmin=-limit,
                zmax=limit,
                colorbar={"title": "contribution"},
                hovertemplate="%{x} → %{y}: %{z:.4g}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Exact attribution of SAE features at {label(self.tokens[self.position])!s} "
            f"(position {self.position}) to input tokens",
            xaxis={"title": "input token", "tickangle": -45},
            yaxis={"title": "feature", "autorange": "reversed"},
            template="plotly_white",
            height=max(300, 30 * len(names) + 160),
        )
        return {"attribution": fig}


def pre_activation(loaded: LoadedSAE, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
    """The SAE's encoder pre-activation (before its activation function)."""
    sae = loaded.sae
    return sae.process_sae_in(x.to(sae.dtype)) @ sae.W_enc + sae.b_enc


def _check_affine(loaded: LoadedSAE, d_in: int, device: torch.device) -> None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(d_in, generator=generator).to(device) * 50 for _ in range(2))
    zero = pre_activation(loaded, torch.zeros(d_in, device=device))
    lhs = pre_activation(loaded, a + b) - zero
    rhs = (pre_activation(loaded, a) - zero) + (pre_activation(loaded, b) - zero)
    if not torch.allclose(lhs, rhs, rtol=1e-3, atol=1e-3 * float(rhs.abs().max() + 1)):
        raise ValueError("this SAE normalises its input non-linearly: exact attribution is not defined")


@register
class FeatureAttribution(Probe[FeatureAttributionConfig, FeatureAttributionResult]):
    """Attribute one state's SAE features exactly to the input tokens (Jacobian × SAE)."""

    name = "feature_attribution"
    title = "Feature attribution"
    description = "Exact per-token contributions to the SAE features of one hidden state."
    config_cls = FeatureAttributionConfig
    result_cls = FeatureAttributionResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: FeatureAttributionConfig,
        progress: Progress = NO_PROGRESS,
    ) -> FeatureAttributionResult:
        """Contributions of every token to the state, pushed through the SAE encoder."""
        config.validate(session)
        loaded = load_sae(session, config.sae)
        hook = loaded.hook_name
        if not hooknames.is_resid(hook):
            raise ValueError(
                f"attribution needs an SAE on a residual stream (a block's output such as "
                f"{hooknames.resid(0)}), not {hook}"
            )
        tokens = session.tokenize(prompt)
        seq = int(tokens.shape[-1])
        if seq > config.max_tokens:
            raise ValueError(f"the prompt is {seq} tokens; attribution is capped at {config.max_tokens}")
        position = session.check_position(config.position, seq)
        _check_affine(loaded, loaded.d_in, session.device)
        progress(0.1, "recording coefficients")
        with session.lock, torch.no_grad():
            # the forward stops after the SAE's layer: later layers and the unembedding are never read
            coefficients = record_coefficients(session, tokens, last_layer=hooknames.layer_of(hook))
            model = LinearizedModel(session, coefficients)
            progress(0.4, "token contributions")
            contrib, bias = contributions(model, coefficients.inputs, [hook])
            token_contrib = contrib[hook][:, position].float()  # [seq, d]
            state = coefficients.outputs[hook][0, position].float()  # the recording forward's own state
            acts = loaded.encode(state[None])[0]
            chosen = acts.topk(min(config.n_features, acts.numel())).indices
            zero = pre_activation(loaded, torch.zeros_like(state))[chosen]
            shares = pre_activation(loaded, token_contrib)[:, chosen] - zero
            constant = pre_activation(loaded, bias[hook][position].float())[chosen]
            real = pre_activation(loaded, state)[chosen]
            error = float((shares.sum(0) + constant - real).abs().max())
        progress(1.0, "done")
        return FeatureAttributionResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(tokens[0].tolist()),
            hook_name=hook,
            position=position,
            features=to_numpy(chosen).astype(np.int64),
            activations=to_numpy(acts[chosen]).astype(np.float32),
            pre_activations=to_numpy(real).astype(np.float32),
            attribution=to_numpy(shares).astype(np.float32),
            constant=to_numpy(constant).astype(np.float32),
            max_sum_error=error,
        )


def _view(session: ModelSession, ref: StateRef, progress: Progress) -> FeatureAttributionResult:
    loaded = load_sae(session, "default")
    if loaded.hook_name != ref.hook_name():
        raise ValueError(f"the SAE reads {loaded.hook_name}; open the inspector at that layer to attribute")
    return FeatureAttribution().run(
        session, ref.prompt, FeatureAttributionConfig(position=ref.position), progress
    )


def _describe(result: FeatureAttributionResult, ref: StateRef) -> list[str]:
    lines = []
    for j, feature in enumerate(result.features[:3]):
        driver = int(np.argmax(result.attribution[:, j]))
        lines.append(
            f"f{int(feature)} (act {result.activations[j]:.3g}): mostly from token "
            f"{result.tokens[driver]!r} ({result.attribution[driver, j]:+.3g})"
        )
    lines.append(f"sums match the pre-activations to {result.max_sum_error:.2g}")
    return lines


register_state_view(
    StateView("feature_attribution", "Feature attribution (Jacobian × SAE)", _view, 60, _describe)
)
