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
  copies, not from J (exact, see :func:`.algorithms.contributions`);
* by default (method ``randomized``) J is never formed: its top singular triplets come from a
  matrix-free block Lanczos SVD from a random start, run until the singular values are within
  ``SVD_TOLERANCE`` (per-token SVDs are then skipped); method ``full`` (or
  ``auto`` up to ``full_max_tokens`` tokens) builds J by batched adjoint products and gives every
  J_i's spectrum and the reconstruction from J itself;
* the stable rank ‖J‖_F²/σ_max² is exact (from J's Gram matrix) when J is built or cheap to build
  (config ``stable_rank``); otherwise ‖J‖_F² is a Hutchinson estimate whose 95% interval comes
  from its i.i.d. probe samples (:func:`_stable_rank_estimate` says how it reaches the ratio);
* the layer sweep estimates ‖J_ℓ‖_F² the same way (64 Gaussian probes, one batched forward for
  all layers) and σ_max / the top direction by two batched power-iteration rounds started from
  that sketch; that σ_max is a lower bound, and every figure says so.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import guards, hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Probe, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.jacobian.algorithms import (
    contributions,
    gram_stable_rank,
    hutchinson_samples,
    jacobian,
    krylov_svd,
    layer_sweep,
)
from lenslab.probes.jacobian.detached import record_coefficients, target_hook
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.probes.jacobian.result import (
    EXACT,
    HUTCHINSON_PROBES,
    SVD_TOLERANCE,
    SWEEP_POWER_STEPS,
    JacobianConfig,
    JacobianResult,
    contribution_figure,
    describe_target,
    hutchinson_method,
    power_method,
    sweep_rank_method,
)
from lenslab.probes.stats import Interval, mean_ci
from lenslab.progress import NO_PROGRESS, Progress, show_partial


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
            session = session.converted(torch.float64)
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
    w_u = session.output_embedding().weight
    predicted = int(coefficients.logits[0, position].argmax())
    direction = w_u[predicted].detach()

    # Exact contributions of every token to every layer's residual stream and to the target.
    clock = time.perf_counter()
    sweep_names = [hooknames.resid(layer) for layer in range(session.n_layers)] if config.layer_sweep else []
    names = list(dict.fromkeys([target, *sweep_names]))
    contrib, bias = contributions(model, inputs, names, progress=_scaled(progress, 0.05, 0.15))
    timings["contributions"] = time.perf_counter() - clock
    y = coefficients.outputs[target][0, position]  # the real forward's value
    token_contrib = contrib[target][:, position]  # [seq, d]
    b = bias[target][position]
    reconstruction = float((token_contrib.sum(0) + b - y).norm() / y.norm())
    detach_error = _detach_error(session, coefficients, model)
    contribution_logit = token_contrib @ direction
    show_partial(  # the page's first figure, shown while the SVD and the sweep still run
        progress,
        "contributions",
        contribution_figure(
            tokens=session.decode_each(coefficients.tokens[0].tolist()),
            contribution_logit=to_numpy(contribution_logit.double()),
            contribution_norm=to_numpy(token_contrib.norm(dim=-1).double()),
            bias_logit=float(b @ direction),
            bias_norm=float(b.norm()),
            predicted_token=session.decode_each([predicted])[0],
            target=target,
            target_description=describe_target(target),
            target_logit=float(y @ direction),
            reconstruction_error=reconstruction,
        ),
    )

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
        frob = float(s.double().square().sum())
        stable = float(s.square().sum() / s[0].square())
        rank_estimate = None
        estimate_wanted = config.stable_rank == "estimate"
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
        rank_estimate = None
        estimate_wanted = not _exact_stable_rank_wanted(session, config, seq)
        if not estimate_wanted:
            built = jacobian(model, inputs, target, position)
            frob, sigma_sq = gram_stable_rank(built)
            stable = frob / sigma_sq
            del built
    sigma_error = 0.0 if method == "full" else svd_error
    if estimate_wanted and not config.layer_sweep:  # with the sweep, its sketch's forward gives the samples
        rank_estimate = _stable_rank_estimate(model, inputs, target, position, float(s[0]), sigma_error)
    timings["svd"] = time.perf_counter() - clock
    left_tokens, left_scores = _decode_left(session, u[:, :n_comp], y, target, config.top_tokens)
    right_tokens, right_positions = _nearest_inputs(
        session, vh[:n_comp].reshape(-1, seq, inputs.shape[-1]), config
    )

    # Layer sweep.
    clock = time.perf_counter()
    layers = np.arange(session.n_layers) if config.layer_sweep else np.zeros(0, dtype=np.int64)
    sigma_max, sweep_rank, sweep_ci, sweep_tokens, heat = [], [], [], [], []
    if config.layer_sweep:
        sweep = layer_sweep(
            model,
            inputs,
            position,
            probes=HUTCHINSON_PROBES,
            rounds=SWEEP_POWER_STEPS,
            progress=_scaled(progress, 0.6, 0.98),
            extra=[target] if estimate_wanted else [],
        )
        if estimate_wanted:
            rank_estimate = _stable_rank_estimate(
                model, inputs, target, position, float(s[0]), sigma_error, samples=sweep.extra_samples[target]
            )
        samples = to_numpy(sweep.frobenius_samples.double())
        y_layers = torch.stack([coefficients.outputs[name][0, position] for name in sweep_names])
        sweep_tokens = _decode_layers(session, sweep.left, y_layers, config.top_tokens)
        for layer, name in enumerate(sweep_names):
            sigma = float(sweep.sigma_max[layer])
            sigma_max.append(sigma)
            interval = mean_ci(samples[layer])
            sweep_rank.append(interval.estimate / sigma**2)  # σ_max is a lower bound: not widened
            sweep_ci.append((interval.low / sigma**2, interval.high / sigma**2))
            heat.append(to_numpy((contrib[name][:, position].norm(dim=-1) / y_layers[layer].norm()).double()))
    if rank_estimate is not None:
        stable, frob = rank_estimate[0].estimate, rank_estimate[1].estimate
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
        stable_rank_method=EXACT if rank_estimate is None else hutchinson_method(HUTCHINSON_PROBES),
        stable_rank_low=math.nan if rank_estimate is None else rank_estimate[0].low,
        stable_rank_high=math.nan if rank_estimate is None else rank_estimate[0].high,
        frobenius_sq=frob,
        frobenius_sq_se=math.nan if rank_estimate is None else rank_estimate[2],
        frobenius_sq_low=math.nan if rank_estimate is None else rank_estimate[1].low,
        frobenius_sq_high=math.nan if rank_estimate is None else rank_estimate[1].high,
        hutchinson_probes=0 if rank_estimate is None else HUTCHINSON_PROBES,
        sweep_stable_rank_ci=np.asarray(sweep_ci, dtype=np.float64).reshape(len(sweep_rank), 2),
        sweep_stable_rank_method=sweep_rank_method(HUTCHINSON_PROBES) if config.layer_sweep else "",
        sweep_sigma_method=power_method(SWEEP_POWER_STEPS) if config.layer_sweep else "",
    )


def _scaled(progress: Progress, low: float, high: float) -> Progress:
    def inner(fraction: float, message: str = "") -> None:
        progress(low + (high - low) * fraction, message)

    return inner


def _detach_error(session: ModelSession, coefficients: Any, model: LinearizedModel) -> float:
    """Relative max difference between the detached operator's logits and the recorded logits."""
    with torch.no_grad():
        logits = session.final_logits(model(coefficients.inputs)[hooknames.FINAL_NORM])
        ref = coefficients.logits
        return float((logits - ref).abs().max() / ref.abs().max())


def _exact_stable_rank_wanted(session: ModelSession, config: JacobianConfig, seq: int) -> bool:
    """Whether the matrix-free path should build J for the exact stable rank (refused over budget).

    Only ``exact`` builds it here (with the guard's message when J does not fit): building J costs
    one product per output row, many times the top-k SVD, so ``auto`` keeps the page at the cost
    of the SVD and reports the Hutchinson estimate with its interval. ``method="full"`` has J
    anyway and reports the exact value under ``auto``.
    """
    if config.stable_rank != "exact":
        return False
    need = 2 * guards.jacobian_bytes(seq, session.d_model, dtype=session.dtype)  # J and its Gram input
    guards.check_memory(
        need,
        "the exact stable rank (the full Jacobian)",
        device=session.device,
        hint="use stable_rank=estimate or a shorter prompt",
    )
    return True


def _stable_rank_estimate(
    model: LinearizedModel,
    inputs: Tensor,
    target: str,
    position: int,
    sigma_max: float,
    sigma_error: float,
    probes: int = HUTCHINSON_PROBES,
    seed: int = 1,
    samples: Tensor | None = None,
) -> tuple[Interval, Interval, float]:
    """Hutchinson ‖J‖_F² with its 95% interval, carried to the stable rank; also its standard error.

    Each probe gives one i.i.d. sample ωᵀJᵀJω of ‖J‖_F², so ``mean_ci`` over them is a Student-t
    interval for ‖J‖_F². The stable rank divides by σ̂², where σ̂ is the Lanczos Ritz value: never
    above the true σ_max and within ``sigma_error`` (relative) of it. So the rank's interval is
    [F_low/(σ̂(1+e))², F_high/σ̂²]: the Hutchinson interval, widened on the low side by σ's error.
    ``samples`` are the ‖Jω‖² already drawn (the layer sweep's sketch, same probes and seed).
    Returns (stable rank, ‖J‖_F², standard error of ‖J‖_F²).
    """
    if samples is None:
        samples = hutchinson_samples(model, inputs, [target], position, probes, seed)[target]
    samples = to_numpy(samples.double())
    frob = mean_ci(samples)
    se = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    square = sigma_max**2
    rank = Interval(
        frob.estimate / square,
        frob.low / (square * (1 + sigma_error) ** 2),
        frob.high / square,
        frob.n,
        f"Hutchinson over {frob.n} probes (t), divided by σ_max²",
    )
    return rank, frob, se


def _decode_left(
    session: ModelSession, vectors: Float[Tensor, "d k"], y: Tensor, target: str, top: int
) -> tuple[list[list[str]], np.ndarray]:
    """Top output tokens of each left singular vector, its sign aligned with the output y."""
    vectors = vectors * torch.where((vectors.T @ y) < 0, -1.0, 1.0).to(vectors)
    with torch.no_grad():
        if target == hooknames.FINAL_NORM:  # already a final-norm output: the unembedding alone
            w_u = session.output_embedding().weight
            scores = vectors.T.to(w_u.dtype) @ w_u.T  # [k, vocab]
        else:  # a residual-stream direction, read through the final norm's weight
            scores = session.decode_direction(vectors.T)
        values, ids = scores.topk(top, dim=-1)
    return [session.decode_each(row) for row in ids.tolist()], to_numpy(values.double())


def _decode_layers(
    session: ModelSession, vectors: Float[Tensor, "layer d"], y: Float[Tensor, "layer d"], top: int
) -> list[list[str]]:
    """:func:`_decode_left` of each layer's residual-stream direction, all layers in one unembedding GEMM."""
    vectors = vectors * torch.where((vectors * y).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(vectors)
    with torch.no_grad():
        ids = session.decode_direction(vectors).topk(top, dim=-1).indices
    return [session.decode_each(row) for row in ids.tolist()]


_EMBED_NORMS: dict[tuple[Any, ...], Tensor] = {}  # row norms of each model's embedding matrix


def _nearest_inputs(
    session: ModelSession, vectors: Float[Tensor, "k seq d"], config: JacobianConfig
) -> tuple[list[list[str]], np.ndarray]:
    """For each right singular vector: its dominant input position and the nearest embeddings there."""
    w_e = session.input_embedding().weight
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


# ------------------------------------------------------------------------ inspector view
def _jacobian_view(session: ModelSession, ref: StateRef, progress: Progress) -> JacobianResult:
    config = JacobianConfig(position=ref.position, layer=ref.layer, layer_sweep=False, n_components=4)
    return JacobianProbe().run(session, ref.prompt, config, progress)


def _jacobian_describe(result: JacobianResult, ref: StateRef) -> list[str]:
    order = np.argsort(-result.contribution_norm)[:3]
    drivers = ", ".join(f"{result.tokens[i]!r} ({result.contribution_norm[i]:.3g})" for i in order)
    top = ", ".join(repr(t) for t in result.left_tokens[0][:5]) if result.left_tokens else "—"
    return [
        f"target: {result.target_description}; reconstruction error ‖Σ J_i x_i − y‖/‖y‖ = "
        f"{result.reconstruction_error:.2e}",
        f"largest token contributions ‖J_i x_i‖: {drivers}",
        f"top singular direction decodes to {top}; stable rank {result.stable_rank_text()}",
    ]


register_state_view(
    StateView("jacobian", "Detached Jacobian", _jacobian_view, order=30, describe=_jacobian_describe)
)
