"""Config and result of the detached-Jacobian probe: settings, the numbers it reports, its figures.

Kept apart from :mod:`.jacobian` (the computation) so that reports, the app and notebooks can
load and plot a saved result without the algorithms, and each module stays one responsibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Result
from lenslab.probes.jacobian.detached import COMPONENTS, model_family
from lenslab.probes.plotting import label, unique_labels
from lenslab.probes.stats import format_interval

DTYPE_CHOICES = ("float32", "float64")
METHOD_CHOICES = ("auto", "full", "randomized")
STABLE_RANK_CHOICES = ("auto", "exact", "estimate")
HUTCHINSON_PROBES = 64
SWEEP_POWER_STEPS = 2
EXACT = "exact"
SVD_TOLERANCE = 1e-3
"""Relative accuracy of the matrix-free singular values (the issue's bar; about 200 products on Gemma)."""


@dataclass(frozen=True)
class JacobianConfig(Config):
    """Settings of the detached-Jacobian probe."""

    position: int = field(default=-1, metadata={"help": "target position (-1: last token)"})
    layer: int = field(
        default=-1,
        metadata={"help": "target layer; -1: the final-norm hidden state (what the unembedding reads)"},
    )
    component: str = field(
        default="resid",
        metadata={
            "help": "layer target: residual stream, or what attention / MLP adds",
            "choices": COMPONENTS,
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "float64 runs on a float64 copy of the model (2× its memory)",
            "choices": DTYPE_CHOICES,
        },
    )
    method: str = field(
        default="randomized",
        metadata={
            "help": "full: build J (exact SVDs); randomized: matrix-free top-k SVD (Lanczos from a random "
            "start, singular values to 1e-3); auto: full up to "
            "full_max_tokens tokens",
            "choices": METHOD_CHOICES,
        },
    )
    n_components: int = field(
        default=8, metadata={"help": "singular directions decoded", "min": 1, "max": 64}
    )
    top_tokens: int = field(default=5, metadata={"help": "tokens shown per direction", "min": 1, "max": 20})
    layer_sweep: bool = field(default=True, metadata={"help": "stable rank and top tokens of every layer"})
    max_tokens: int = field(
        default=64, metadata={"help": "longest prompt accepted (cost grows ~ tokens²)", "min": 2, "max": 512}
    )
    full_max_tokens: int = field(
        default=12,
        metadata={"help": "auto uses the full Jacobian up to this many tokens", "min": 1, "max": 512},
    )
    stable_rank: str = field(
        default="auto",
        metadata={
            "help": "exact: ‖J‖_F²/σ_max² from the built J (builds it if needed, within the memory budget); "
            f"estimate: ‖J‖_F² by Hutchinson ({HUTCHINSON_PROBES} probes, with a 95% interval); auto: exact "
            "when J is built anyway (method full), else the estimate",
            "choices": STABLE_RANK_CHOICES,
        },
    )

    def validate(self, session: ModelSession) -> None:
        """Check the architecture, the layer and the sizes against the model."""
        super().validate(session)
        model_family(session)
        if self.layer != -1:
            session.check_layer(self.layer)
        elif self.component != "resid":
            raise ValueError("the final-norm target (layer -1) has no attention/MLP part: choose a layer ≥ 0")
        if self.n_components > session.d_model:
            raise ValueError(f"n_components={self.n_components} exceeds d_model={session.d_model}")
        if self.dtype == "float64" and session.device.type != "cpu":
            raise ValueError("float64 is offered on CPU only; use float32 on a GPU")


@dataclass(frozen=True)
class JacobianResult(Result):
    """Reconstruction check, token contributions, SVD and layer sweep of the detached Jacobian."""

    probe = "jacobian"
    config: JacobianConfig
    tokens: list[str]
    target: str  # hook name of y
    position: int
    dtype: str
    method: str
    predicted_token: str
    predicted_id: int
    reconstruction_error: float  # ‖Σ J_i x_i + b − y‖ / ‖y‖
    detach_error: float  # max |detached − normal| / max |normal| on the logits
    bias_norm: float  # ‖b‖ (0 for bias-free models)
    target_logit: float  # W_U[pred]·y
    bias_logit: float  # W_U[pred]·b
    contribution_norm: Float[np.ndarray, " seq"]  # ‖J_i x_i‖
    contribution_logit: Float[np.ndarray, " seq"]  # W_U[pred]·J_i x_i
    singular_values: Float[np.ndarray, " k"]  # of the stacked J (all, or the top k)
    stable_rank: float
    token_singular_values: Float[np.ndarray, "seq k"]  # per-token J_i (empty when randomized)
    token_stable_rank: Float[np.ndarray, " seq"]
    left_tokens: list[list[str]]
    left_scores: Float[np.ndarray, "n top"]
    right_tokens: list[list[str]]
    right_positions: Int[np.ndarray, " n"]
    sweep_layers: Int[np.ndarray, " layer"]
    sweep_sigma_max: Float[np.ndarray, " layer"]
    sweep_stable_rank: Float[np.ndarray, " layer"]  # Hutchinson estimate
    sweep_tokens: list[list[str]]
    sweep_contribution: Float[np.ndarray, "layer seq"]  # ‖J_i x_i‖ / ‖y_layer‖ at the position
    timings: dict[str, float]
    svd_products: int = 0  # J·v and Jᵀ·u products the SVD spent (d_out adjoint rows when J is built)
    svd_error_estimate: float = 0.0  # matrix-free SVD's estimated max relative σ error (0: exact SVD)
    # How the stable rank was obtained ("" in reports saved before these fields: inferred on load).
    stable_rank_method: str = ""  # "exact" or "Hutchinson, 64 probes"
    stable_rank_low: float = math.nan  # 95% interval (NaN when exact or unknown)
    stable_rank_high: float = math.nan
    frobenius_sq: float = math.nan  # ‖J‖_F²: exact, or the mean of the Hutchinson samples
    frobenius_sq_se: float = math.nan  # standard error of that mean (NaN when exact)
    frobenius_sq_low: float = math.nan  # its 95% Student-t interval over the probe samples
    frobenius_sq_high: float = math.nan
    hutchinson_probes: int = 0  # probes behind the estimate (0: exact)
    sweep_stable_rank_ci: Float[np.ndarray, "layer 2"] | None = None  # 95% (Hutchinson part only)
    sweep_stable_rank_method: str = ""  # e.g. "‖J_ℓ‖_F² by Hutchinson, 64 probes, over σ_max²"
    sweep_sigma_method: str = ""  # e.g. "≥: a lower bound from 2 power-iteration steps"

    def __post_init__(self) -> None:
        """Fill in the method strings of reports saved before they were recorded (same algorithms)."""
        if not self.stable_rank_method:
            method = EXACT if self.method == "full" else hutchinson_method(HUTCHINSON_PROBES)
            object.__setattr__(self, "stable_rank_method", method)
        if len(self.sweep_layers) and not self.sweep_sigma_method:
            object.__setattr__(self, "sweep_sigma_method", power_method(SWEEP_POWER_STEPS))
        if len(self.sweep_layers) and not self.sweep_stable_rank_method:
            object.__setattr__(self, "sweep_stable_rank_method", sweep_rank_method(HUTCHINSON_PROBES))

    @property
    def target_description(self) -> str:
        """What y is, in words (a layer target is not a logit: no final norm, no unembedding)."""
        return describe_target(self.target)

    def stable_rank_text(self) -> str:
        """``≈ 10.6 [9.1, 12.2] (Hutchinson, 64 probes)``, or ``14.2 (exact)``."""
        if self.stable_rank_method == EXACT:
            return f"{self.stable_rank:.3g} ({EXACT})"
        if math.isnan(self.stable_rank_low):
            return f"≈ {self.stable_rank:.3g} ({self.stable_rank_method}; no interval saved)"
        interval = format_interval(self.stable_rank, self.stable_rank_low, self.stable_rank_high)
        return f"≈ {interval} ({self.stable_rank_method})"

    def summary(self) -> dict[str, Any]:
        """The reconstruction error first: it is the check that the linear system is exact."""
        top = int(np.argmax(self.contribution_logit)) if len(self.contribution_logit) else 0
        return {
            "reconstruction error": self.reconstruction_error,
            "predicted": self.predicted_token,
            "top input token": f"{top}:{self.tokens[top]}",
            "stable rank": self.stable_rank_text(),
        }

    def figures(self) -> dict[str, go.Figure]:
        """Contribution bars, spectrum, decoded singular vectors, layer sweep and heatmap."""
        figs = {"contributions": self._contribution_figure(), "spectrum": self._spectrum_figure()}
        figs["singular_vectors"] = self._vectors_figure()
        if len(self.sweep_layers):
            figs["sweep"] = self._sweep_figure()
            figs["contribution_heatmap"] = self._heatmap_figure()
        return figs

    def _contribution_figure(self) -> go.Figure:
        return contribution_figure(
            tokens=self.tokens,
            contribution_logit=self.contribution_logit,
            contribution_norm=self.contribution_norm,
            bias_logit=self.bias_logit,
            bias_norm=self.bias_norm,
            predicted_token=self.predicted_token,
            target=self.target,
            target_description=self.target_description,
            target_logit=self.target_logit,
            reconstruction_error=self.reconstruction_error,
        )

    def _spectrum_figure(self) -> go.Figure:
        fig = go.Figure(
            go.Scatter(
                x=list(range(1, len(self.singular_values) + 1)),
                y=self.singular_values,
                mode="lines+markers",
                name="stacked J",
            )
        )
        for i in range(self.token_singular_values.shape[0]):
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, self.token_singular_values.shape[1] + 1)),
                    y=self.token_singular_values[i],
                    mode="lines",
                    line={"width": 1},
                    opacity=0.5,
                    name=f"J_{i} {label(self.tokens[i])}",
                    visible="legendonly" if i < len(self.tokens) - 3 else True,
                )
            )
        fig.update_layout(
            title=f"Singular values of the Jacobian of the {self.target_description} @ position "
            f"{self.position} (SVD {self.method}; stable rank {self.stable_rank_text()})",
            xaxis_title="index",
            yaxis={"title": "singular value", "type": "log"},
            template="plotly_white",
        )
        return fig

    def _vectors_figure(self) -> go.Figure:
        n = len(self.left_tokens)
        rows = list(range(1, n + 1))
        sigma = [f"{s:.4g}" for s in self.singular_values[:n]]
        left = [" · ".join(label(t) for t in toks) for toks in self.left_tokens]
        right = [
            f"[{int(p)}:{label(self.tokens[int(p)])}] " + " · ".join(label(t) for t in toks)
            for p, toks in zip(self.right_positions, self.right_tokens, strict=True)
        ]
        fig = go.Figure(
            go.Table(
                header={
                    "values": ["#", "σ", "left vector → top output tokens", "right vector → nearest inputs"]
                },
                cells={"values": [rows, sigma, left, right], "align": "left"},
                columnwidth=[0.4, 0.8, 4, 4],
            )
        )
        fig.update_layout(
            title="Top singular directions of the stacked Jacobian, decoded", template="plotly_white"
        )
        return fig

    def _sweep_figure(self) -> go.Figure:
        hover = [" · ".join(label(t) for t in toks) for toks in self.sweep_tokens]
        ci = self.sweep_stable_rank_ci
        has_ci = ci is not None and ci.shape == (len(self.sweep_layers), 2)
        low = ci[:, 0] if has_ci else np.full(len(self.sweep_layers), np.nan)
        high = ci[:, 1] if has_ci else np.full(len(self.sweep_layers), np.nan)
        error_y = (
            {
                "type": "data",
                "symmetric": False,
                "array": high - self.sweep_stable_rank,
                "arrayminus": self.sweep_stable_rank - low,
            }
            if has_ci
            else None
        )
        fig = go.Figure(
            go.Scatter(
                x=[int(layer) for layer in self.sweep_layers],
                y=self.sweep_stable_rank,
                error_y=error_y,
                mode="lines+markers+text",
                text=[label(toks[0]) if toks else "" for toks in self.sweep_tokens],
                textposition="top center",
                customdata=np.stack([self.sweep_sigma_max, low, high], axis=-1),
                hovertext=hover,
                hovertemplate="layer %{x}<br>stable rank ≈ %{y:.3g} [%{customdata[1]:.3g}, "
                "%{customdata[2]:.3g}]<br>σ_max ≥ %{customdata[0]:.4g}<br>%{hovertext}<extra></extra>",
            )
        )
        fig.update_layout(
            title="Layer sweep: stable rank ‖J‖_F²/σ_max² of ∂(residual stream after block ℓ, no final "
            f"norm)/∂x with 95% intervals ({self.sweep_stable_rank_method}; σ_max {self.sweep_sigma_method}, "
            "so the ranks may come out high), labelled with the top left singular direction's token",
            xaxis_title="layer",
            yaxis_title="stable rank ≈ ‖J‖_F² / (σ_max lower bound)²",
            template="plotly_white",
        )
        return fig

    def _heatmap_figure(self) -> go.Figure:
        fig = go.Figure(
            go.Heatmap(
                z=self.sweep_contribution,
                x=unique_labels(self.tokens),
                y=[f"L{int(layer)}" for layer in self.sweep_layers],
                colorscale="Viridis",
                colorbar={"title": "‖J_i x_i‖/‖y‖"},
                hovertemplate="%{y} · %{x}<br>%{z:.3g}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Contribution of each input token to the residual stream after each block (no final "
            f"norm) at position {self.position}",
            xaxis={"title": "input token", "tickangle": -45},
            yaxis_title="layer",
            template="plotly_white",
            height=max(320, 22 * len(self.sweep_layers) + 160),
        )
        return fig


def hutchinson_method(probes: int) -> str:
    """Method string of a Hutchinson estimate of ‖J‖_F²."""
    return f"Hutchinson, {probes} probes"


def power_method(steps: int) -> str:
    """Method string of the sweep's σ_max: ‖J v‖ after ``steps`` power-iteration steps bounds it below."""
    return f"≥: a lower bound from {steps} power-iteration steps"


def sweep_rank_method(probes: int) -> str:
    """Method string of the sweep's stable ranks: a Hutchinson ‖J_ℓ‖_F² over a σ_max lower bound²."""
    return f"‖J_ℓ‖_F² by {hutchinson_method(probes)}, over σ_max²"


def describe_target(target: str) -> str:
    """A target hook in words: the final-norm state, or a block's part (which no final norm has read)."""
    if target == hooknames.FINAL_NORM:
        return "final-norm hidden state"
    layer = hooknames.layer_of(target)
    if layer is None:
        return target
    if hooknames.is_resid(target):
        part = "residual stream after block"
    elif target in (hooknames.attn_out(layer), hooknames.attn_post_norm(layer)):
        part = "attention output of block"
    elif target in (hooknames.mlp_out(layer), hooknames.mlp_post_norm(layer)):
        part = "MLP output of block"
    else:
        return target
    return f"{part} {layer} (no final norm)"


def contribution_figure(
    *,
    tokens: list[str],
    contribution_logit: np.ndarray,
    contribution_norm: np.ndarray,
    bias_logit: float,
    bias_norm: float,
    predicted_token: str,
    target: str,
    target_description: str,
    target_logit: float,
    reconstruction_error: float,
) -> go.Figure:
    """Bars of each input token's exact contribution (the Jacobian page's first figure).

    A function of its numbers, not of a whole result, so the probe can show it as soon as the
    contributions exist, before the SVD and the layer sweep.
    """
    x = unique_labels(tokens)
    fig = go.Figure(
        go.Bar(
            x=x,
            y=contribution_logit,
            customdata=np.stack([contribution_norm], axis=-1),
            marker_color=["#d62728" if v < 0 else "#1f77b4" for v in contribution_logit],
            hovertemplate="%{x}<br>W_U[pred] · J_i x_i %{y:.4g}<br>‖J_i x_i‖ %{customdata[0]:.4g}"
            "<extra></extra>",
        )
    )
    bias = f" + bias {bias_logit:.3g}" if bias_norm > 0 else ""
    token = repr(label(predicted_token))
    if target == hooknames.FINAL_NORM:
        what, axis = f"the logit of {token}", "logit contribution W_U[pred] · J_i x_i"
    else:  # W_U[pred]·y of a layer target is a projection, not a logit (no final norm)
        what = f"W_U[{token}] · y, y = {target_description}"
        axis = "W_U[pred] · J_i x_i (a projection; no final norm)"
    fig.update_layout(
        title=f"Exact contribution of each input token to {what} "
        f"(sum{bias} = {target_logit:.4g}; reconstruction error {reconstruction_error:.2e})",
        xaxis={"title": "input token", "tickangle": -45},
        yaxis_title=axis,
        template="plotly_white",
    )
    return fig
