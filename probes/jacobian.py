"""Detached-Jacobian linearization (Golden 2025): the exact linear system the model computes here.

With every nonlinear coefficient frozen at its value on this input (:mod:`.detached`), the model
is linear in its input embeddings, so the target y (final-norm hidden state at a position, or a
layer's residual / attention / MLP output) is ``Σ_i J_i x_i`` (+ a bias term for GPT-2) exactly.
This probe reports that reconstruction error, each input token's exact contribution J_i x_i
(its norm and its projection on the predicted token's unembedding row — an additive logit
attribution), the SVD of the stacked Jacobian J = [J_1 … J_n] and of every J_i (spectrum, stable
rank ‖J‖_F²/σ_max², left singular vectors decoded through the unembedding with the sign that
aligns them with y, right singular vectors matched to the nearest input embeddings), and a layer
sweep (stable rank and top decoded tokens of each layer's Jacobian, contributions tokens × layers).

Cheaper variants than the paper, chosen for an interactive app and documented here:
* contributions come from one batched forward of the detached operator on ``seq`` one-token
  copies, not from J (exact, see :func:`.jacobian_linear.contributions`);
* by default (method ``randomized``) J is never formed: its top singular triplets come from a
  matrix-free block Lanczos SVD from a random start, run until the singular values are within
  ``SVD_TOLERANCE`` (per-token SVDs are then skipped); method ``full`` (or
  ``auto`` up to ``full_max_tokens`` tokens) builds J by batched adjoint products and gives every
  J_i's spectrum and the reconstruction from J itself;
* the layer sweep estimates ‖J_ℓ‖_F² by Hutchinson (64 Gaussian probes, one batched forward for
  all layers) and σ_max / the top direction by two batched power-iteration rounds started from
  that sketch, so its stable ranks are estimates (±~10-20%), labelled as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Config, Probe, Progress, Result, register, to_numpy
from lenslab.probes.detached import COMPONENTS, as_float64, model_family, record_coefficients, target_hook
from lenslab.probes.jacobian_linear import (
    LinearizedModel,
    contributions,
    jacobian,
    krylov_svd,
    layer_sweep,
)
from lenslab.probes.jacobian_operator import _unwrap
from lenslab.probes.plotting import label, unique_labels

DTYPE_CHOICES = ("float32", "float64")
METHOD_CHOICES = ("auto", "full", "randomized")
HUTCHINSON_PROBES = 64
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

    @classmethod
    def fast_for_tests(cls) -> JacobianConfig:
        """Small settings for the reliability tests."""
        return cls(max_tokens=48, layer_sweep=False, n_components=2)

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

    def summary(self) -> dict[str, Any]:
        """The reconstruction error first: it is the check that the linear system is exact."""
        top = int(np.argmax(self.contribution_logit)) if len(self.contribution_logit) else 0
        return {
            "reconstruction error": self.reconstruction_error,
            "predicted": self.predicted_token,
            "top input token": f"{top}:{self.tokens[top]}",
            "stable rank": self.stable_rank,
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
        x = unique_labels(self.tokens)
        fig = go.Figure(
            go.Bar(
                x=x,
                y=self.contribution_logit,
                customdata=np.stack([self.contribution_norm], axis=-1),
                marker_color=["#d62728" if v < 0 else "#1f77b4" for v in self.contribution_logit],
                hovertemplate="%{x}<br>logit contribution %{y:.4g}<br>‖J_i x_i‖ %{customdata[0]:.4g}"
                "<extra></extra>",
            )
        )
        bias = f" + bias {self.bias_logit:.3g}" if self.bias_norm > 0 else ""
        fig.update_layout(
            title=f"Exact contribution of each input token to the logit of {label(self.predicted_token)!r} "
            f"(sum{bias} = {self.target_logit:.4g}; reconstruction error {self.reconstruction_error:.2e})",
            xaxis={"title": "input token", "tickangle": -45},
            yaxis_title="W_U[pred] · J_i x_i",
            template="plotly_white",
        )
        return fig

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
            title=f"Singular values of the Jacobian of {self.target} @ position {self.position} "
            f"(stable rank {self.stable_rank:.2f}, {self.method})",
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
        fig = go.Figure(
            go.Scatter(
                x=[int(layer) for layer in self.sweep_layers],
                y=self.sweep_stable_rank,
                mode="lines+markers+text",
                text=[label(toks[0]) if toks else "" for toks in self.sweep_tokens],
                textposition="top center",
                customdata=np.stack([self.sweep_sigma_max], axis=-1),
                hovertext=hover,
                hovertemplate="layer %{x}<br>stable rank ≈ %{y:.3g}<br>σ_max %{customdata[0]:.4g}"
                "<br>%{hovertext}<extra></extra>",
            )
        )
        fig.update_layout(
            title="Layer sweep: stable rank of ∂(residual after layer ℓ)/∂x (Hutchinson estimate) "
            "and the top left singular direction's token",
            xaxis_title="layer",
            yaxis_title="stable rank ‖J‖_F²/σ_max²",
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
            title=f"Contribution of each input token to the residual stream at position {self.position}, "
            "by layer",
            xaxis={"title": "input token", "tickangle": -45},
            yaxis_title="layer",
            template="plotly_white",
            height=max(320, 22 * len(self.sweep_layers) + 160),
        )
        return fig


@register
class JacobianProbe(Probe[JacobianConfig, JacobianResult]):
    """Exact local linearization of the model: contributions, SVD and layer sweep."""

    name = "jacobian"
    title = "Jacobian"
    description = (
        "The exact linear system the model computes for this input (nonlinear coefficients frozen): "
        "which input tokens drive the prediction, and what its Jacobian's singular directions decode to."
    )
    config_cls = JacobianConfig
    result_cls = JacobianResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: JacobianConfig,
        progress: Progress = NO_PROGRESS,
    ) -> JacobianResult:
        """Record coefficients, build the linear operator, then contributions, SVD and sweep."""
        config.validate(session)
        tokens = session.tokenize(prompt)
        seq = int(tokens.shape[-1])
        if seq > config.max_tokens:
            raise ValueError(
                f"the prompt is {seq} tokens long; the Jacobian probe is capped at {config.max_tokens} "
                "tokens (shorten the prompt or raise max_tokens: time grows with tokens²)"
            )
        position = session.check_position(config.position, seq)
        if config.dtype == "float64":
            progress(0.0, "making a float64 copy of the model (once per session)")
            session = as_float64(session)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with session.lock:
            progress(0.02, "recording the nonlinear coefficients")
            coefficients = record_coefficients(session, tokens.to(session.device))
            model = LinearizedModel(session, coefficients)
            layer = None if config.layer == -1 else session.check_layer(config.layer)
            target = target_hook(session, layer, config.component)
            method = config.method
            if method == "auto":
                method = "full" if seq <= config.full_max_tokens else "randomized"
            timings["record"] = time.perf_counter() - started
            return _analyse(
                session, prompt, config, coefficients, model, target, position, method, timings, progress
            )


def _analyse(
    session: ModelSession,
    prompt: str,
    config: JacobianConfig,
    coefficients: Any,
    model: LinearizedModel,
    target: str,
    position: int,
    method: str,
    timings: dict[str, float],
    progress: Progress,
) -> JacobianResult:
    inputs = coefficients.inputs
    seq = coefficients.seq_len
    unembed = _unwrap(session.bridge.original_model.get_output_embeddings())
    w_u = unembed.weight
    predicted = int(coefficients.logits[0, position].argmax())
    direction = w_u[predicted].detach()

    # Exact contributions of every token to every layer's residual stream and to the target.
    clock = time.perf_counter()
    sweep_names = (
        [f"blocks.{layer}.hook_out" for layer in range(session.n_layers)] if config.layer_sweep else []
    )
    names = list(dict.fromkeys([target, *sweep_names]))
    contrib, bias = contributions(model, inputs, names, progress=_scaled(progress, 0.05, 0.15))
    timings["contributions"] = time.perf_counter() - clock
    y = coefficients.outputs[target][0, position]  # the real forward's value
    token_contrib = contrib[target][:, position]  # [seq, d]
    b = bias[target][position]
    reconstruction = float((token_contrib.sum(0) + b - y).norm() / y.norm())
    detach_error = _detach_error(session, coefficients, model)
    contribution_logit = token_contrib @ direction

    # SVD of the stacked Jacobian (and of each J_i when J is built).
    clock = time.perf_counter()
    n_comp = config.n_components
    if method == "full":
        full = jacobian(model, inputs, target, position, progress=_scaled(progress, 0.15, 0.6))
        d_out = full.shape[0]
        u, s, vh = torch.linalg.svd(full.reshape(d_out, -1), full_matrices=False)
        svd_products, svd_error = d_out, 0.0
        per_token = torch.linalg.svdvals(full.permute(1, 0, 2))  # [seq, min(d_out, d_in)]
        token_sv = to_numpy(per_token.double())
        top_sq = per_token[:, 0].double().square()
        safe = torch.where(top_sq > 0, top_sq, torch.ones_like(top_sq))
        token_sr = to_numpy(torch.where(top_sq > 0, per_token.double().square().sum(-1) / safe, 0.0))
        stable = float(s.square().sum() / s[0].square())
        with torch.no_grad():  # the check, from J itself: ‖Σ_i J_i x_i + b − y‖/‖y‖
            linear = torch.einsum("osi,si->o", full, inputs[0])
        reconstruction = max(reconstruction, float((linear + b - y).norm() / y.norm()))
    else:
        top = krylov_svd(
            model,
            inputs,
            target,
            position,
            rank=n_comp,
            tol=SVD_TOLERANCE,
            progress=_scaled(progress, 0.15, 0.6),
        )
        u, s, vh = top.u, top.s, top.vh
        svd_products, svd_error = top.products, top.error_estimate
        token_sv = np.zeros((0, 0))
        token_sr = np.zeros(0)
        frob = _hutchinson(model, inputs, [target], position)[target]
        stable = float(frob / s[0].square())
    timings["svd"] = time.perf_counter() - clock
    left_tokens, left_scores = _decode_left(session, u[:, :n_comp], y, target, config.top_tokens)
    right_tokens, right_positions = _nearest_inputs(
        session, vh[:n_comp].reshape(-1, seq, inputs.shape[-1]), config
    )

    # Layer sweep.
    clock = time.perf_counter()
    layers = np.arange(session.n_layers) if config.layer_sweep else np.zeros(0, dtype=np.int64)
    sigma_max, sweep_rank, sweep_tokens, heat = [], [], [], []
    if config.layer_sweep:
        frobs, sigmas, lefts = layer_sweep(model, inputs, position, progress=_scaled(progress, 0.6, 0.98))
        for layer, name in enumerate(sweep_names):
            y_layer = coefficients.outputs[name][0, position]
            sigma_max.append(float(sigmas[layer]))
            sweep_rank.append(float(frobs[layer] / sigmas[layer].square()))
            sweep_tokens.append(
                _decode_left(session, lefts[layer][:, None], y_layer, name, config.top_tokens)[0][0]
            )
            heat.append(to_numpy((contrib[name][:, position].norm(dim=-1) / y_layer.norm()).double()))
    timings["layer_sweep"] = time.perf_counter() - clock
    progress(1.0, "done")
    return JacobianResult(
        model_id=session.model_id,
        prompt=prompt,
        config=config,
        tokens=session.decode_each(coefficients.tokens[0].tolist()),
        target=target,
        position=position,
        dtype=str(inputs.dtype).removeprefix("torch."),
        method=method,
        predicted_token=session.decode_each([predicted])[0],
        predicted_id=predicted,
        reconstruction_error=reconstruction,
        detach_error=detach_error,
        bias_norm=float(b.norm()),
        target_logit=float(y @ direction),
        bias_logit=float(b @ direction),
        contribution_norm=to_numpy(token_contrib.norm(dim=-1).double()),
        contribution_logit=to_numpy(contribution_logit.double()),
        singular_values=to_numpy(s.double()),
        stable_rank=stable,
        token_singular_values=np.asarray(token_sv, dtype=np.float64),
        token_stable_rank=np.asarray(token_sr, dtype=np.float64),
        left_tokens=left_tokens,
        left_scores=left_scores,
        right_tokens=right_tokens,
        right_positions=right_positions,
        sweep_layers=layers.astype(np.int64),
        sweep_sigma_max=np.asarray(sigma_max, dtype=np.float64),
        sweep_stable_rank=np.asarray(sweep_rank, dtype=np.float64),
        sweep_tokens=sweep_tokens,
        sweep_contribution=np.asarray(heat, dtype=np.float64).reshape(len(sweep_rank), seq),
        timings=timings,
        svd_products=svd_products,
        svd_error_estimate=svd_error,
    )


def _scaled(progress: Progress, low: float, high: float) -> Progress:
    def inner(fraction: float, message: str = "") -> None:
        progress(low + (high - low) * fraction, message)

    return inner


def _detach_error(session: ModelSession, coefficients: Any, model: LinearizedModel) -> float:
    """Relative max difference between the detached operator's logits and the recorded logits."""
    unembed = session.bridge.original_model.get_output_embeddings()
    with torch.no_grad():
        hidden = model(coefficients.inputs)["ln_final.hook_out"]
        logits = unembed(hidden)
        softcap = getattr(session.bridge.original_model.config, "final_logit_softcapping", None)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        ref = coefficients.logits
        return float((logits - ref).abs().max() / ref.abs().max())


def _hutchinson(model: LinearizedModel, inputs: Tensor, names: list[str], position: int) -> dict[str, Tensor]:
    """‖J‖_F² ≈ mean ‖J ω‖² over Gaussian ω, for several targets from one batched forward."""
    generator = torch.Generator(device="cpu").manual_seed(1)
    probes = torch.randn(HUTCHINSON_PROBES, *inputs.shape[1:], generator=generator, dtype=torch.float64)
    probes = probes.to(inputs)
    with torch.no_grad():
        out = model(probes, names)
        zero = model(torch.zeros_like(inputs), names) if model.has_bias else None
    result = {}
    for name in names:
        values = out[name][:, position]
        if zero is not None:
            values = values - zero[name][:, position]
        result[name] = values.square().sum(-1).mean()
    return result


def _decode_left(
    session: ModelSession, vectors: Float[Tensor, "d k"], y: Tensor, target: str, top: int
) -> tuple[list[list[str]], np.ndarray]:
    """Top output tokens of each left singular vector, its sign aligned with the output y."""
    hf = session.bridge.original_model
    w_u = _unwrap(hf.get_output_embeddings()).weight
    vectors = vectors * torch.where((vectors.T @ y) < 0, -1.0, 1.0).to(vectors)
    if target != "ln_final.hook_out":
        # A residual-stream direction is read through the final norm's weight (its scale is a
        # positive per-position constant that does not change the ranking).
        final = _unwrap(hf.transformer.ln_f if model_family(session) == "gpt2" else hf.model.norm)
        weight = final.weight + 1.0 if model_family(session) == "gemma3" else final.weight
        vectors = vectors * weight[:, None]
    with torch.no_grad():
        scores = (w_u @ vectors.to(w_u.dtype)).T  # [k, vocab]
        values, ids = scores.topk(top, dim=-1)
    return [session.decode_each(row) for row in ids.tolist()], to_numpy(values.double())


_EMBED_NORMS: dict[tuple[Any, ...], Tensor] = {}  # row norms of each model's embedding matrix


def _nearest_inputs(
    session: ModelSession, vectors: Float[Tensor, "k seq d"], config: JacobianConfig
) -> tuple[list[list[str]], np.ndarray]:
    """For each right singular vector: its dominant input position and the nearest embeddings there."""
    w_e = _unwrap(session.bridge.original_model.get_input_embeddings()).weight
    key = (w_e.data_ptr(), tuple(w_e.shape), w_e.dtype)
    if key not in _EMBED_NORMS:
        with torch.no_grad():
            _EMBED_NORMS[key] = w_e.norm(dim=-1).clamp_min(1e-12)
    positions = vectors.norm(dim=-1).argmax(-1)  # [k]
    blocks = vectors[torch.arange(len(vectors)), positions]  # [k, d]
    with torch.no_grad():
        cosine = (w_e @ blocks.T.to(w_e.dtype)).T / _EMBED_NORMS[key]
        # A singular vector's sign is arbitrary: match either orientation.
        _, ids = cosine.abs().topk(config.top_tokens, dim=-1)
    return [session.decode_each(row) for row in ids.tolist()], to_numpy(positions).astype(np.int64)
