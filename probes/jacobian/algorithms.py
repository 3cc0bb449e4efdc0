"""The fast Jacobian algorithms on the compiled detached network (:mod:`.operator`).

* :func:`contributions` — with all inputs but x_i zeroed, the operator's output is J_i x_i at
  every layer and position; one batched forward of ``seq`` copies gives all of them.
* :func:`jacobian` — J = ∂y/∂x by the operator's explicit transpose on chunks of output
  directions (batched VJPs without autograd, no parameter gradients).
* :func:`krylov_svd` — top singular triplets of J (or of one J_i) by block Golub–Kahan–Lanczos
  from a random start, driven by J·V (for a linear map the JVP *is* the map: a batched forward)
  and Jᵀ·U (the transpose), never materialising J; it stops when the residuals say the top
  singular values are within the tolerance.
* :func:`hutchinson_samples` — the i.i.d. samples ‖J ω‖² (Gaussian ω) whose mean estimates ‖J‖_F².
* :func:`gram_stable_rank` — the exact ‖J‖_F² and σ_max² of a built J from its small Gram matrix.
* :func:`layer_sweep` — Hutchinson samples of ‖J_ℓ‖_F², a σ_max lower bound and the top left
  direction of every layer's J at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.progress import NO_PROGRESS, Progress

JACOBIAN_MEMORY = 1 << 30
"""Byte budget of one batched adjoint chunk in :func:`jacobian` (its widest tensor is k·seq·d_mlp)."""


# ------------------------------------------------------------------------------------ algorithms
def one_hot_inputs(
    inputs: Float[Tensor, "1 seq d_model"], with_zero: bool
) -> Float[Tensor, "copies seq d_model"]:
    """``seq`` copies of the input where copy i keeps only x_i (plus an all-zero copy if asked)."""
    seq = inputs.shape[1]
    eye = torch.eye(seq, dtype=inputs.dtype, device=inputs.device)
    copies = eye[:, :, None] * inputs
    return torch.cat([copies, torch.zeros_like(inputs)]) if with_zero else copies


def contributions(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    targets: Sequence[str],
    chunk: int = 64,
    progress: Progress = NO_PROGRESS,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Exact J_i x_i of every input token i to every target at every position.

    Returns ``(contrib, bias)``: ``contrib[name]`` is [token i, position, d] and ``bias[name]``
    [position, d] (zeros for bias-free models), with ``Σ_i contrib[name][i] + bias[name]`` equal
    to the detached output. One batched forward of ``seq`` copies (chunked to bound memory).
    """
    copies = one_hot_inputs(inputs, with_zero=model.has_bias)
    parts: dict[str, list[Tensor]] = {name: [] for name in targets}
    with torch.no_grad():
        for start in range(0, copies.shape[0], chunk):
            out = model(copies[start : start + chunk], targets)
            for name in targets:
                parts[name].append(out[name])
            progress(min(1.0, (start + chunk) / copies.shape[0]), "token contributions")
    seq = inputs.shape[1]
    contrib, bias = {}, {}
    for name in targets:
        full = torch.cat(parts[name])
        if model.has_bias:
            bias[name] = full[seq]
            contrib[name] = full[:seq] - full[seq]
        else:
            bias[name] = torch.zeros_like(full[0])
            contrib[name] = full
    return contrib, bias


def jacobian(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    target: str,
    position: int,
    chunk: int | None = None,
    progress: Progress = NO_PROGRESS,
) -> Float[Tensor, "d_out seq d_in"]:
    """The full Jacobian ∂y/∂x of one target at one position, by chunked batched VJPs.

    ``chunk`` rows per adjoint pass; by default as many as fit in ``JACOBIAN_MEMORY`` (all 640
    rows for Gemma 3 270M up to ~60 tokens): one pass lets the transpose fuse each position's MLP
    into one matrix, which pays off only for many rows.
    """
    fn = model.target_fn(target, position)
    with torch.no_grad():
        d_out = fn(inputs).shape[-1]
    if chunk is None:
        widest = max(layer.w_up.shape[0] for layer in model.layers) if model.layers else d_out
        per_row = inputs.shape[1] * max(widest, inputs.shape[2] * 2) * inputs.element_size()
        chunk = max(1, min(d_out, JACOBIAN_MEMORY // per_row))
    eye = torch.eye(d_out, dtype=inputs.dtype, device=inputs.device)
    rows = []
    for start in range(0, d_out, chunk):
        rows.append(model.adjoint(eye[start : start + chunk], target, position))
        progress(min(1.0, (start + chunk) / d_out), "Jacobian rows")
    return torch.cat(rows)


@dataclass
class TopSVD:
    """Top singular triplets of J (or J_i) from :func:`krylov_svd`, with how they were obtained."""

    u: Float[Tensor, "d_out r"]
    s: Float[Tensor, " r"]
    vh: Float[Tensor, "r n_in"]  # n_in = seq·d_in for J (zeros after the target position), d_in for J_i
    products: int  # J·v plus Jᵀ·u products spent
    passes: list[tuple[str, int]]  # the sequential passes in order: ("adjoint" | "forward", rows)
    error_estimate: float  # bound-based estimate of max_i |σ_i − σ̂_i|/σ̂_i over the top r (see _ritz_error)
    converged: bool


def krylov_svd(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    target: str,
    position: int,
    rank: int = 24,
    block: int | None = None,
    tol: float = 1e-3,
    token: int | None = None,
    max_dim: int | None = None,
    seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> TopSVD:
    """Top-``rank`` SVD of J = ∂y/∂x, or of J_token, without forming it (block Golub–Kahan–Lanczos).

    Grows an orthonormal basis Q of the Krylov space span{Jᵀω, (JᵀJ)Jᵀω, …} one block of
    ``block`` vectors at a time (one J· and one Jᵀ· product per vector, fully reorthogonalised);
    the Ritz values are the singular values of J·Qᵀ, which it already has. Rayleigh–Ritz on JᵀJ
    puts the residual of Ritz pair i entirely in the newest block: ‖r_i‖ = ‖B·C·y_i‖/σ_i from
    the two small QR factors, so the check is free. It stops once :func:`_ritz_error` — the
    smaller of the linear and the gap-based quadratic residual bound — is below ``tol`` for the
    top ``rank``; on the embedded model's Jacobians (8–32 tokens, stacked and per token) that
    estimate was 10–100× above the true error when it stopped.

    Why Lanczos and not a randomized range finder with power iterations: J's spectrum is flat
    (σ₂₄/σ₂₅ ≈ 1.02 on Gemma 3 270M), so the finder needs a wide block and its final J·Q costs a
    second pass; small blocks grown deep reach 1e-3 with ≈200 products against 640 rows to
    materialise J. Causality: only positions ≤ ``position`` (and ≥ ``token``) matter, so the
    products run on that window.
    """
    seq, d_in = inputs.shape[1:]
    position = position % seq
    start = 0 if token is None else token
    if not 0 <= start <= position:
        raise ValueError(f"token {token} must be at or before the target position {position}")
    window = model.window(start, position + 1)
    fn = window.target_fn(target, position - start)
    width = position + 1 - start
    with torch.no_grad():
        zero = torch.zeros(1, width, d_in, dtype=inputs.dtype, device=inputs.device)
        d_out = fn(zero).shape[-1]
        bias = fn(zero) if model.has_bias else None
    n_in = d_in if token is not None else width * d_in
    cap = min(n_in, d_out) if max_dim is None else min(max_dim, n_in, d_out)
    block = max(1, min(krylov_block(width) if block is None else block, cap))
    rank = min(rank, cap)

    def transpose(u: Tensor) -> Tensor:  # Jᵀ U for rows u → [k, n_in]
        rows = window.adjoint(u, target, position - start)
        return rows[:, 0] if token is not None else rows.reshape(len(rows), -1)

    def forward(v: Tensor) -> Tensor:  # J V for rows v [k, n_in] → [k, d_out]
        if token is None:
            full = v.reshape(len(v), width, d_in)
        else:
            full = torch.zeros(len(v), width, d_in, dtype=v.dtype, device=v.device)
            full[:, 0] = v
        with torch.no_grad():
            out = fn(full)
        return out if bias is None else out - bias

    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(block, d_out, generator=generator, dtype=torch.float64).to(inputs)
    basis, images = [], []  # orthonormal row blocks of Q, and J·(block)ᵀ
    current = torch.linalg.qr(transpose(omega).T).Q.T
    passes = [("adjoint", block)]
    estimate, converged = float("inf"), False
    while True:
        image = forward(current)  # [b, d_out]
        basis.append(current)
        images.append(image)
        passes.append(("forward", len(current)))
        left, coupling = torch.linalg.qr(image.T)  # J·Vᵀ = left · coupling
        residual = transpose(left.T)
        passes.append(("adjoint", left.shape[1]))
        q = torch.cat(basis)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            residual = residual - (residual @ q.T) @ q
        nxt, beta = torch.linalg.qr(residual.T)
        u, s, yh = torch.linalg.svd(torch.cat(images).T, full_matrices=False)
        if len(s) >= rank:
            last = yh[:rank, -len(current) :]  # Ritz coordinates in the newest block
            norms = (beta @ coupling @ last.T).norm(dim=0) / s[:rank].clamp_min(torch.finfo(s.dtype).tiny)
            estimate = _ritz_error(s, norms, rank)
            converged = estimate <= tol
        progress(min(0.99, len(q) / cap), f"Krylov SVD: dimension {len(q)}, error ≈ {estimate:.1e}")
        if converged or len(q) >= cap:
            break
        current = nxt.T[: min(block, cap - len(q))]
    vh = yh[:rank] @ q
    if token is None and width < seq:
        padded = torch.zeros(rank, seq, d_in, dtype=vh.dtype, device=vh.device)
        padded[:, :width] = vh.reshape(rank, width, d_in)
        vh = padded.reshape(rank, -1)
    progress(1.0, "Krylov SVD: done")
    products = sum(rows for _, rows in passes)
    converged = converged or len(q) >= min(n_in, d_out)
    return TopSVD(u[:, :rank], s[:rank], vh, products, passes, estimate, converged)


def krylov_block(width: int) -> int:
    """The default Lanczos block of :func:`krylov_svd` on a window of ``width`` positions.

    Each block costs one forward and one adjoint pass of the operator, one after the other, so
    the block sets how many sequential passes the SVD needs; a wider block spends more products in
    all but needs fewer passes, and each pass has a fixed cost (hundreds of small operations over
    18 layers) that dominates on a shared CPU. About 384 GEMM rows (block × positions), 12 to 32
    vectors. Measured on the embedded model, 2 loaded cores, top-8 to 1e-3: at 7 tokens block 11
    took 22.5 CPU s (165 products), block 24 14.9 s (264); at 16 tokens block 5 took 45.3 s (115),
    block 12 33.2 s (180), block 24 20.5 s (264).
    """
    return min(32, max(12, 384 // max(1, width)))


def krylov_schedule(products: int, block: int) -> list[tuple[str, int]]:
    """The sequential passes :func:`krylov_svd` makes for a product count and a block.

    One adjoint pass of ``block`` rows (Jᵀω), then a forward and an adjoint pass per Lanczos step;
    the last step may be narrower (the basis is capped at min(n_in, d_out)). A benchmark floor that
    times the same work uses this; a count that no schedule explains raises ``ValueError``.
    """
    if block < 1 or products < block:
        raise ValueError(f"{products} products cannot start with a block of {block}")
    passes, left = [("adjoint", block)], products - block
    while left >= 2 * block:
        passes += [("forward", block), ("adjoint", block)]
        left -= 2 * block
    if left % 2:
        raise ValueError(f"{products} products do not fit blocks of {block}")
    if left:
        passes += [("forward", left // 2), ("adjoint", left // 2)]
    return passes


def _ritz_error(values: Tensor, residuals: Tensor, rank: int) -> float:
    """Estimated max relative error of the top ``rank`` Ritz singular values (scale-free).

    ``residuals[i]`` = ‖Jᵀũ_i − σ̂_i ṽ_i‖, in the units of J.
    For Ritz value σ̂_i with residual r_i (r_i ⟂ the basis), some singular value lies within
    ‖r_i‖ (linear bound), and within ‖r_i‖²/(4·gap) when the rest of the spectrum is ``gap``
    away (quadratic, Kato–Temple on JᵀJ). The gap is taken from the nearest other Ritz value, so
    on a flat spectrum — tiny random models, Gemma's σ₂₄ ≈ σ₂₅ — it falls back toward the linear
    bound instead of trusting the fast quadratic convergence.
    """
    tiny = torch.finfo(values.dtype).tiny
    top = values[:rank].clamp_min(tiny)
    linear = residuals / top
    gaps = (top[:, None] - values[None, :]).abs() / top[:, None]
    gaps[torch.arange(rank), torch.arange(rank)] = float("inf")
    quadratic = linear.square() / (4 * gaps.min(dim=1).values).clamp_min(tiny)
    return float(torch.minimum(linear, quadratic).max())


def hutchinson_samples(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    names: Sequence[str],
    position: int,
    probes: int,
    seed: int = 1,
) -> dict[str, Float[Tensor, " probes"]]:
    """‖J ω_k‖² for ``probes`` Gaussian ω_k, for several targets from one batched forward.

    Each sample is an unbiased, independent estimate of ‖J‖_F² (E ωᵀJᵀJω = tr JᵀJ), so their
    mean is Hutchinson's estimate and their spread gives its standard error.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(probes, *inputs.shape[1:], generator=generator, dtype=torch.float64).to(inputs)
    with torch.no_grad():
        out = model(omega, list(names))
        zero = model(torch.zeros_like(inputs), list(names)) if model.has_bias else None
    samples = {}
    for name in names:
        values = out[name][:, position]
        if zero is not None:
            values = values - zero[name][:, position]
        samples[name] = values.square().sum(-1)
    return samples


def gram_stable_rank(full: Float[Tensor, "d_out seq d_in"]) -> tuple[float, float]:
    """Exact ``(‖J‖_F², σ_max²)`` of a built J, from its d_out × d_out Gram matrix in float64.

    tr(JJᵀ) and λ_max(JJᵀ) need one small symmetric eigenproblem instead of an SVD of the wide J
    (which dominated on a loaded CPU); float64 keeps the ratio at float precision.
    """
    flat = full.reshape(full.shape[0], -1).double()
    gram = flat @ flat.T
    return float(torch.trace(gram)), float(torch.linalg.eigvalsh(gram)[-1])


def _top_right_vector(matrix: Float[Tensor, "m n"], steps: int = 12) -> Float[Tensor, " n"]:
    """Top right singular vector by power iteration on matmuls (a start for the sweep's power rounds).

    Avoids a LAPACK SVD per layer: on a loaded multi-core CPU those calls were the sweep's main cost.
    """
    vector = matrix[matrix.norm(dim=-1).argmax()]
    for _ in range(steps):
        vector = matrix.T @ (matrix @ vector)
        vector = vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)
    return vector


@dataclass
class LayerSweep:
    """Per-layer estimates from :func:`layer_sweep`, with how they were obtained."""

    frobenius_samples: Float[Tensor, "layer probes"]  # ‖J_ℓ ω_k‖²: i.i.d., mean = Hutchinson ‖J_ℓ‖_F²
    sigma_max: Float[Tensor, " layer"]  # a lower bound: ‖J_ℓ v‖ for a unit v after ``power_steps``
    left: Float[Tensor, "layer d"]  # the top left singular direction's estimate
    power_steps: int
    extra_samples: dict[str, Tensor]  # ‖J ω_k‖² of the ``extra`` targets, from the same probes

    @property
    def frobenius(self) -> Float[Tensor, " layer"]:
        """Hutchinson's estimate of ‖J_ℓ‖_F² (the samples' mean)."""
        return self.frobenius_samples.mean(-1)


def layer_sweep(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    position: int,
    probes: int = 64,
    rounds: int = 2,
    seed: int = 1,
    progress: Progress = NO_PROGRESS,
    extra: Sequence[str] = (),
) -> LayerSweep:
    """Hutchinson samples of ‖J_ℓ‖_F², σ_max(J_ℓ) from below and its left vector, for every layer.

    J_ℓ = ∂(residual after block ℓ at ``position``)/∂x. One batched forward of ``probes`` Gaussian
    inputs sketches every layer at once: Hutchinson gives ‖J_ℓ‖_F² = E‖J_ℓ ω‖² (relative error
    ~ √(2/probes)), and the sketch's top left singular vector starts ``rounds`` of power
    iteration run for all layers together (one adjoint pass with each layer's cotangent injected
    at its own block, one forward). σ_max is ‖J_ℓ v‖ for a unit vector v, so it never exceeds the
    true σ_max: a lower bound, not converged to any tolerance.

    ``extra`` targets (e.g. the final norm) ride along in the sketch: their samples are exactly
    :func:`hutchinson_samples` with the same ``probes`` and ``seed``, without a second forward.
    """
    n_layers, seq, d_model = model.n_layers, inputs.shape[1], inputs.shape[2]
    names = [hooknames.resid(layer) for layer in range(n_layers)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(probes, seq, d_model, generator=generator, dtype=torch.float64).to(inputs)
    every = list(dict.fromkeys([*names, *extra]))
    with torch.no_grad():
        sketch = model(omega, every)
        zero = model(torch.zeros_like(inputs), every) if model.has_bias else None
    extra_samples = {}
    for name in extra:
        values = sketch[name][:, position]
        if zero is not None:
            values = values - zero[name][:, position]
        extra_samples[name] = values.square().sum(-1)
    frob, left = [], []
    for name in names:
        y = sketch[name][:, position]
        if zero is not None:
            y = y - zero[name][:, position]
        frob.append(y.square().sum(-1))
        left.append(_top_right_vector(y))
    frob_t, left_t = torch.stack(frob), torch.stack(left)
    progress(1 / (rounds + 1), "layer sweep: sketch")
    sigma = torch.zeros(n_layers, dtype=inputs.dtype, device=inputs.device)
    for it in range(rounds):
        right = model.adjoint_layers(left_t, list(range(n_layers)), position)  # Jᵀu per layer
        sigma = right.flatten(1).norm(dim=-1)
        right = right / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)[:, None, None]
        with torch.no_grad():
            out = model(right, names)
        forward = torch.stack([out[name][layer, position] for layer, name in enumerate(names)])
        if zero is not None:
            forward = forward - torch.stack([zero[name][0, position] for name in names])
        sigma = forward.norm(dim=-1)
        left_t = forward / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)[:, None]
        progress((it + 2) / (rounds + 1), "layer sweep: power iteration")
    return LayerSweep(frob_t, sigma, left_t, rounds, extra_samples)
