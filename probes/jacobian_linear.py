"""The detached network compiled into an explicit linear operator, and the fast Jacobian algorithms.

Once the coefficients are frozen (:mod:`lenslab.probes.detached`), every layer is a fixed linear
map of the residual stream: norm = per-position diagonal scaling (after centring for LayerNorm),
attention = O · (frozen pattern ⊗ V), gated MLP = down · diag(frozen gate) · up, GPT-2 MLP =
proj · diag(act(z)/z) · fc. :class:`LinearizedModel` applies exactly these maps from the model's
weights, skipping everything that only fed a frozen coefficient (Q, K, RoPE, softmax, the gate
projection, the norms' statistics, the 262k-wide unembedding) and the bridge's per-op overhead.
It agrees with the hook-based detached forward to rounding (tests check 1e-12 in float64), and
is what the three fast algorithms run:

* :func:`contributions` — with all inputs but x_i zeroed, the operator's output is J_i x_i at
  every layer and position; one batched forward of ``seq`` copies gives all of them.
* :func:`jacobian` — J = ∂y/∂x by batched vector-Jacobian products (``torch.func.vjp`` +
  ``vmap`` over chunks of output directions), never touching parameter gradients.
* :func:`randomized_svd` — top singular triplets from a range finder with power iterations,
  driven by J·V (for a linear map the JVP *is* the map: a batched forward) and Jᵀ·U (batched
  VJPs), never materialising J.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Progress
from lenslab.probes.detached import FrozenCoefficients, model_family

FUSE_MLP_ROWS = 400
"""Adjoint batches at least this large use the per-position fused MLP matrix (see ``_mlp_adjoint``)."""
JACOBIAN_MEMORY = 1 << 30
"""Byte budget of one batched adjoint chunk in :func:`jacobian` (its widest tensor is k·seq·d_mlp)."""


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The HF/torch module inside any number of bridge wrappers."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component  # type: ignore[assignment]
    return module


def _linear(module: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight [out, in], bias) of an nn.Linear or HF Conv1D (whose weight is [in, out])."""
    module = _unwrap(module)
    weight = module.weight
    if type(module).__name__ == "Conv1D":
        weight = weight.t()
    return weight, getattr(module, "bias", None)


@dataclass
class _Norm:
    """A frozen norm: ``(x − mean x if centred) · factor + bias``, factor = weight / scale."""

    factor: Tensor  # [seq, d]
    bias: Tensor | None
    centre: bool

    def __call__(self, x: Tensor) -> Tensor:
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x * self.factor
        return x if self.bias is None else x + self.bias

    def adjoint(self, g: Tensor) -> Tensor:
        """Transpose of the linear part: (diag(factor)·C)ᵀ g = C·(factor ⊙ g), C the centring."""
        g = g * self.factor
        return g - g.mean(-1, keepdim=True) if self.centre else g


@dataclass
class _Layer:
    ln1: _Norm
    ln1_post: _Norm | None
    ln2: _Norm
    ln2_post: _Norm | None
    w_v: Tensor
    b_v: Tensor | None
    w_o: Tensor
    b_o: Tensor | None
    pattern: Tensor  # [kv, groups, seq, seq]
    d_head: int
    w_up: Tensor
    b_up: Tensor | None
    gate: Tensor  # [seq, d_mlp]
    w_down: Tensor
    b_down: Tensor | None


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.nn.functional.linear(x, weight, bias)


class LinearizedModel:
    """The detached network as an explicit linear (affine for GPT-2) operator on input embeddings.

    Call it on ``x`` [batch, seq, d_model]: returns ``{hook name: [batch, seq, d]}`` for the
    requested targets (names from :func:`lenslab.probes.detached.target_hook`).
    """

    def __init__(self, session: ModelSession, coefficients: FrozenCoefficients) -> None:
        """Collect the weights and frozen coefficients of every layer."""
        family = model_family(session)
        self.family = family
        self.has_bias = family == "gpt2"
        self.n_layers = session.n_layers
        hf = session.bridge.original_model
        inner = hf.transformer if family == "gpt2" else hf.model
        blocks = inner.h if family == "gpt2" else inner.layers
        scales = coefficients.scales

        def norm(module: torch.nn.Module, hook: str) -> _Norm:
            base = _unwrap(module)
            weight = base.weight
            if family == "gemma3":
                weight = 1.0 + weight
            factor = (weight / scales[hook][0]).detach()
            bias = getattr(base, "bias", None)
            return _Norm(factor, None if bias is None else bias.detach(), centre=family == "gpt2")

        self.layers: list[_Layer] = []
        for layer, block in enumerate(blocks):
            dec = _unwrap(block)
            prefix = f"blocks.{layer}"
            pattern = coefficients.patterns[f"{prefix}.attn.hook_pattern"][0].detach()
            if family == "gpt2":
                attn_bridge = dec.attn
                w_v, b_v = _linear(attn_bridge.v)
                w_o, b_o = _linear(attn_bridge.o)
                w_up, b_up = _linear(dec.mlp.c_fc)
                w_down, b_down = _linear(dec.mlp.c_proj)
                ln1 = norm(dec.ln_1, f"{prefix}.ln1.hook_scale")
                ln2 = norm(dec.ln_2, f"{prefix}.ln2.hook_scale")
                ln1_post = ln2_post = None
            else:
                attn = _unwrap(dec.self_attn)
                w_v, b_v = _linear(attn.v_proj)
                w_o, b_o = _linear(attn.o_proj)
                mlp = _unwrap(dec.mlp)
                w_up, b_up = _linear(mlp.up_proj)
                w_down, b_down = _linear(mlp.down_proj)
                ln1 = norm(dec.input_layernorm, f"{prefix}.ln1.hook_scale")
                if family == "gemma3":
                    ln1_post = norm(dec.post_attention_layernorm, f"{prefix}.ln1_post.hook_scale")
                    ln2 = norm(dec.pre_feedforward_layernorm, f"{prefix}.ln2.hook_scale")
                    ln2_post = norm(dec.post_feedforward_layernorm, f"{prefix}.ln2_post.hook_scale")
                else:
                    ln1_post = ln2_post = None
                    ln2 = norm(dec.post_attention_layernorm, f"{prefix}.ln2.hook_scale")
            n_heads = pattern.shape[0]
            d_head = w_o.shape[1] // n_heads
            n_kv = w_v.shape[0] // d_head
            self.layers.append(
                _Layer(
                    ln1=ln1,
                    ln1_post=ln1_post,
                    ln2=ln2,
                    ln2_post=ln2_post,
                    w_v=w_v.detach(),
                    b_v=None if b_v is None else b_v.detach(),
                    w_o=w_o.detach(),
                    b_o=None if b_o is None else b_o.detach(),
                    pattern=pattern.reshape(n_kv, n_heads // n_kv, *pattern.shape[-2:]),
                    d_head=d_head,
                    w_up=w_up.detach(),
                    b_up=None if b_up is None else b_up.detach(),
                    gate=coefficients.gates[layer][0].detach(),
                    w_down=w_down.detach(),
                    b_down=None if b_down is None else b_down.detach(),
                )
            )
        final = inner.ln_f if family == "gpt2" else inner.norm
        self.final_norm = norm(final, "ln_final.hook_scale")

    def _attention(self, layer: _Layer, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        n_kv, groups = layer.pattern.shape[:2]
        v = _affine(x, layer.w_v, layer.b_v).view(batch, seq, n_kv, 1, layer.d_head).permute(0, 2, 3, 1, 4)
        z = layer.pattern @ v  # [batch, kv, groups, seq, d_head]
        z = z.permute(0, 3, 1, 2, 4).reshape(batch, seq, n_kv * groups * layer.d_head)
        return _affine(z, layer.w_o, layer.b_o)

    def _attention_adjoint(self, layer: _Layer, g: Tensor) -> Tensor:
        batch, seq, _ = g.shape
        n_kv, groups = layer.pattern.shape[:2]
        z = (g @ layer.w_o).view(batch, seq, n_kv, groups, layer.d_head).permute(0, 2, 3, 1, 4)
        v = (layer.pattern.transpose(-1, -2) @ z).sum(2)  # [batch, kv, seq, d_head]
        return v.permute(0, 2, 1, 3).reshape(batch, seq, n_kv * layer.d_head) @ layer.w_v

    def _mlp_adjoint(self, layer: _Layer, g: Tensor) -> Tensor:
        """(down · diag(gate) · up)ᵀ g, per position.

        Fused into one d×d matrix per position when the batch is large (k ≥ ``FUSE_MLP_ROWS``):
        seq·d·d_mlp·d once, then k·seq·d² instead of k·seq·2·d·d_mlp — 1.5× fewer multiply-adds
        for a full Jacobian (k = d_model).
        """
        if g.shape[0] < FUSE_MLP_ROWS:
            return ((g @ layer.w_down) * layer.gate) @ layer.w_up
        fused = torch.matmul(layer.w_down[None] * layer.gate[:, None, :], layer.w_up)  # [seq, d, d]
        return torch.matmul(g.transpose(0, 1), fused).transpose(0, 1)

    def adjoint(
        self, cotangents: Float[Tensor, "k d_out"], target: str, position: int, seq: int
    ) -> Float[Tensor, "k seq d_model"]:
        """Jᵀu for each row u: the transposed network run backwards (a VJP without autograd).

        Exact for the linear part; biases do not enter a transpose. Equals ``torch.func.vjp`` of
        :meth:`__call__` (tests check it) at a fraction of its cost: no forward pass, no graph.
        """
        if target == "ln_final.hook_out":
            start, part = self.n_layers - 1, "final"
        else:
            parts = target.split(".")
            start = int(parts[1])
            part = {"hook_out": "resid", "attn": "attn", "ln1_post": "attn", "mlp": "mlp", "ln2_post": "mlp"}[
                parts[2]
            ]
        return self._adjoint(cotangents, [start] * len(cotangents), part, position, seq)

    def adjoint_layers(
        self, cotangents: Float[Tensor, "k d_model"], layers: Sequence[int], position: int, seq: int
    ) -> Float[Tensor, "k seq d_model"]:
        """Jᵀu where row r's target is the residual stream after block ``layers[r]``, in one pass."""
        return self._adjoint(cotangents, list(layers), "resid", position, seq)

    def _adjoint(self, cotangents: Tensor, starts: list[int], part: str, position: int, seq: int) -> Tensor:
        k, d_out = cotangents.shape
        grad = torch.zeros(k, seq, d_out, dtype=cotangents.dtype, device=cotangents.device)
        starts_t = torch.as_tensor(starts, device=cotangents.device)
        top = max(starts)
        if part == "final":
            grad[:, position] = cotangents
            grad = self.final_norm.adjoint(grad)
        with torch.no_grad():
            for index in range(top, -1, -1):
                layer = self.layers[index]
                if part == "resid":
                    rows = starts_t == index
                    if bool(rows.any()):
                        grad[rows, position] += cotangents[rows]
                if index == top and part == "attn":
                    grad[:, position] = cotangents
                    g_attn, grad = grad, torch.zeros_like(grad)
                else:
                    if index == top and part == "mlp":
                        grad[:, position] = cotangents
                        g_mlp, grad = grad, torch.zeros_like(grad)
                    else:
                        g_mlp = grad
                    if layer.ln2_post is not None:
                        g_mlp = layer.ln2_post.adjoint(g_mlp)
                    grad = grad + layer.ln2.adjoint(self._mlp_adjoint(layer, g_mlp))
                    g_attn = grad
                if layer.ln1_post is not None:
                    g_attn = layer.ln1_post.adjoint(g_attn)
                grad = grad + layer.ln1.adjoint(self._attention_adjoint(layer, g_attn))
        return grad

    def __call__(
        self, x: Float[Tensor, "batch seq d_model"], targets: Sequence[str] = ("ln_final.hook_out",)
    ) -> dict[str, Float[Tensor, "batch seq d"]]:
        """Apply the operator to ``x``; return the requested targets by hook name."""
        wanted = set(targets)
        out: dict[str, Tensor] = {}
        resid = x
        last_needed = max(
            [self.n_layers - 1 if "ln_final.hook_out" in wanted else -1]
            + [int(name.split(".")[1]) for name in wanted if name.startswith("blocks.")]
        )
        for index, layer in enumerate(self.layers[: last_needed + 1]):
            attn = self._attention(layer, layer.ln1(resid))
            if layer.ln1_post is not None:
                attn = layer.ln1_post(attn)
            resid = resid + attn
            hidden = _affine(layer.ln2(resid), layer.w_up, layer.b_up) * layer.gate
            mlp = _affine(hidden, layer.w_down, layer.b_down)
            if layer.ln2_post is not None:
                mlp = layer.ln2_post(mlp)
            resid = resid + mlp
            prefix = f"blocks.{index}"
            for name, value in (
                (f"{prefix}.hook_out", resid),
                (f"{prefix}.attn.hook_out", attn),
                (f"{prefix}.mlp.hook_out", mlp),
                (f"{prefix}.ln1_post.hook_out", attn),
                (f"{prefix}.ln2_post.hook_out", mlp),
            ):
                if name in wanted:
                    out[name] = value
        if "ln_final.hook_out" in wanted:
            out["ln_final.hook_out"] = self.final_norm(resid)
        missing = wanted - set(out)
        if missing:
            raise ValueError(f"unknown Jacobian target(s) {sorted(missing)}")
        return out

    def target_fn(self, target: str, position: int) -> _TargetFn:
        """y(x) for one target hook at one position, on a batch of inputs: [batch, seq, d] → [batch, d]."""
        return _TargetFn(self, target, position)


@dataclass
class _TargetFn:
    model: LinearizedModel
    target: str
    position: int

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x, (self.target,))[self.target][:, self.position]


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


def _vjp_rows(fn: _TargetFn, inputs: Tensor, cotangents: Tensor, chunk: int) -> Tensor:
    """Jᵀu for each row u of ``cotangents`` [k, d_out] → [k, seq, d_in] (batched VJPs)."""
    seq = inputs.shape[1]
    rows = [
        fn.model.adjoint(cotangents[s : s + chunk], fn.target, fn.position, seq)
        for s in range(0, len(cotangents), chunk)
    ]
    return torch.cat(rows)


def func_vjp_rows(fn: _TargetFn, inputs: Tensor, cotangents: Tensor, chunk: int = 128) -> Tensor:
    """Jᵀu by ``torch.func.vjp`` + ``vmap`` (the autograd route; kept as a cross-check and bench)."""
    _, vjp_fn = torch.func.vjp(lambda x: fn(x[None])[0], inputs[0])
    rows = [torch.func.vmap(vjp_fn)(cotangents[s : s + chunk])[0] for s in range(0, len(cotangents), chunk)]
    return torch.cat(rows)


def _jvp_cols(fn: _TargetFn, directions: Tensor, bias: Tensor | None, chunk: int) -> Tensor:
    """J·v for each v in ``directions`` [k, seq, d_in] → [k, d_out]; a linear map is its own JVP."""
    with torch.no_grad():
        cols = torch.cat([fn(directions[s : s + chunk]) for s in range(0, len(directions), chunk)])
    return cols if bias is None else cols - bias


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
    rows for Gemma 3 270M up to ~60 tokens): fewer, larger passes are faster on CPU and GPU.
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
        rows.append(model.adjoint(eye[start : start + chunk], target, position, inputs.shape[1]))
        progress(min(1.0, (start + chunk) / d_out), "Jacobian rows")
    return torch.cat(rows)


def randomized_svd(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    target: str,
    position: int,
    rank: int = 24,
    block: int | None = None,
    iterations: int = 3,
    token: int | None = None,
    seed: int = 0,
    chunk: int = 128,
    progress: Progress = NO_PROGRESS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` SVD (U [d_out, r], S [r], Vh [r, seq·d_in]) of J, or of J_token if given.

    Randomized *block Krylov* SVD (Musco & Musco 2015) on the row space, since J is wide:
    K₀ = Jᵀ Ω, K_{j+1} = Jᵀ orth(J K_j); Q = orth[K₀ … K_q]; SVD of J Q. Plain subspace iteration
    keeps only the last block and, on a Jacobian's slowly decaying tail, needs far more products
    for the same accuracy. Jᵀ· is the explicit adjoint (batched VJPs); J· is a batched forward
    (exact for a linear map; GPT-2's bias removed). J is never formed.
    """
    fn = model.target_fn(target, position)
    seq, d_in = inputs.shape[1:]
    with torch.no_grad():
        d_out = fn(inputs).shape[-1]
        bias = fn(torch.zeros_like(inputs)) if model.has_bias else None
    block = min(block or rank, d_out)
    n_in = d_in if token is not None else seq * d_in
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(block, d_out, generator=generator, dtype=torch.float64).to(inputs)

    def rows_of(cotangents: Tensor) -> Tensor:  # Jᵀ U → [k, n_in]
        rows = _vjp_rows(fn, inputs, cotangents, chunk)
        return rows[:, token] if token is not None else rows.reshape(len(rows), -1)

    def apply(directions: Tensor) -> Tensor:  # J V for V [k, n_in] → [k, d_out]
        if token is None:
            full = directions.reshape(len(directions), seq, d_in)
        else:
            full = torch.zeros(len(directions), seq, d_in, dtype=inputs.dtype, device=inputs.device)
            full[:, token] = directions
        return _jvp_cols(fn, full, bias, chunk)

    steps = 2 * iterations + 2
    blocks = [_orth(rows_of(omega).T)]
    progress(1 / steps, "randomized SVD: range")
    for it in range(iterations):
        left = _orth(apply(blocks[-1].T).T)  # [d_out, block]
        blocks.append(_orth(rows_of(left.T).T))
        progress((2 * it + 3) / steps, "randomized SVD: Krylov block")
    basis = _orth(torch.cat(blocks, dim=1))[:, : min(n_in, d_out, block * (iterations + 1))]
    small = apply(basis.T).T  # J Q: [d_out, width]
    u, s, vh_small = torch.linalg.svd(small, full_matrices=False)
    progress(1.0, "randomized SVD: done")
    rank = min(rank, len(s))
    return u[:, :rank], s[:rank], vh_small[:rank] @ basis.T


def _top_right_vector(matrix: Float[Tensor, "m n"], steps: int = 12) -> Float[Tensor, " n"]:
    """Top right singular vector by power iteration on matmuls (a start for the sweep's power rounds).

    Avoids a LAPACK SVD per layer: on a loaded multi-core CPU those calls were the sweep's main cost.
    """
    vector = matrix[matrix.norm(dim=-1).argmax()]
    for _ in range(steps):
        vector = matrix.T @ (matrix @ vector)
        vector = vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)
    return vector


def _orth(matrix: Tensor) -> Tensor:
    """Orthonormal basis of the columns (reduced QR)."""
    return torch.linalg.qr(matrix).Q


def layer_sweep(
    model: LinearizedModel,
    inputs: Float[Tensor, "1 seq d_model"],
    position: int,
    probes: int = 64,
    rounds: int = 2,
    seed: int = 1,
    progress: Progress = NO_PROGRESS,
) -> tuple[Tensor, Tensor, Tensor]:
    """‖J_ℓ‖_F², σ_max(J_ℓ) and its left singular vector for every layer's residual output.

    J_ℓ = ∂(residual after block ℓ at ``position``)/∂x. One batched forward of ``probes`` Gaussian
    inputs sketches every layer at once: Hutchinson gives ‖J_ℓ‖_F² = E‖J_ℓ ω‖² (relative error
    ~ √(2/probes)), and the sketch's top left singular vector starts ``rounds`` of power
    iteration run for all layers together (one adjoint pass with each layer's cotangent injected
    at its own block, one forward). Returns (frobenius² [L], sigma_max [L], left vectors [L, d]).
    """
    n_layers, seq, d_model = model.n_layers, inputs.shape[1], inputs.shape[2]
    names = [f"blocks.{layer}.hook_out" for layer in range(n_layers)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(probes, seq, d_model, generator=generator, dtype=torch.float64).to(inputs)
    with torch.no_grad():
        sketch = model(omega, names)
        zero = model(torch.zeros_like(inputs), names) if model.has_bias else None
    frob, left = [], []
    for name in names:
        y = sketch[name][:, position]
        if zero is not None:
            y = y - zero[name][:, position]
        frob.append(y.square().sum(-1).mean())
        left.append(_top_right_vector(y))
    frob_t, left_t = torch.stack(frob), torch.stack(left)
    progress(1 / (rounds + 1), "layer sweep: sketch")
    sigma = torch.zeros(n_layers, dtype=inputs.dtype, device=inputs.device)
    rows = torch.arange(n_layers, device=inputs.device)
    for it in range(rounds):
        right = model.adjoint_layers(left_t, list(range(n_layers)), position, seq)  # Jᵀu per layer
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
    del rows
    return frob_t, sigma, left_t
