"""A tight floor of the Jacobian page (``jacobian[tight]``): the detached Jacobian's linear map, bare.

With the attention patterns, the norms' scales and the MLP gate coefficients frozen at their
values on the prompt, each Gemma 3 block is a fixed linear operator of the residual stream:
``h + f₁ᵖ ⊙ O(P ⊗ V)(f₁ ⊙ h)`` then ``h + f₂ᵖ ⊙ D(g ⊙ U(f₂ ⊙ h))`` (``f``: per-position norm
scales, ``P``: the frozen patterns, ``g``: act(gate)), and the final norm is one more scale.
This floor builds that operator from the plain HF model's weights and the coefficients of one
recording forward, then does the page's products with it, as bare tensor work:

- the recording: one eager HF forward with full logits, every layer's patterns, the norms'
  scales (from their inputs) and the gate coefficients;
- the contribution replay: the operator on ``seq`` one-token copies, every layer kept;
- the detach check: the operator on the prompt's embeddings and its logits;
- the SVD's products in the block structure the probe used (``krylov_schedule`` of its
  ``svd_products``): each J·V block one batched operator forward over the window (its last layer
  at the target position only), each Jᵀ·U block one batched transpose pass from the target
  position (its top layer at that position only, rows dropping no further);
- the layer sweep: one forward of the Hutchinson probes keeping every layer, then per power round
  one transpose pass whose row ℓ starts at layer ℓ (rows enter as the pass reaches their layer)
  and one forward of the ``layers`` directions;
- the decodes: ``n_components`` left vectors and ``layers`` sweep directions through ``W_U`` and
  ``n_components`` right vectors against the input embeddings, one product, top-k.

The operator is checked before timing: it reproduces the HF forward's final-norm state (the
detached network is exact at the input) and its transpose is the adjoint of its forward
(``⟨J v, u⟩ = ⟨v, Jᵀ u⟩``), both to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lenslab.models import ModelSession


@dataclass
class _Block:
    f1: Tensor  # [seq, d] input-norm scale (1 + w) / rms
    f1p: Tensor  # post-attention norm
    f2: Tensor  # pre-feedforward norm
    f2p: Tensor  # post-feedforward norm
    pattern: Tensor  # [kv, groups, seq, seq]
    gate: Tensor  # [seq, d_mlp] act(gate_proj(x))
    w_v: Tensor
    w_o: Tensor
    w_up: Tensor
    w_down: Tensor
    d_head: int


class FrozenOperator:
    """The detached Gemma 3 network as a linear operator on input embeddings (weights from ``hf``)."""

    def __init__(self, hf: torch.nn.Module, tokens: Tensor) -> None:
        """Record the coefficients with one eager forward (full logits) and collect the weights."""
        body = hf.model
        inputs: dict[str, Tensor] = {}
        handles = []

        def keep_input(name: str) -> Callable[..., None]:
            def keep(_module: object, args: tuple[Tensor, ...]) -> None:
                inputs[name] = args[0]

            return keep

        def keep_output(name: str) -> Callable[..., None]:
            def keep(_module: object, _args: object, output: Tensor) -> None:
                inputs[name] = output

            return keep

        norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm")
        norms += ("post_feedforward_layernorm",)
        for i, layer in enumerate(body.layers):
            for norm in norms:
                handles.append(getattr(layer, norm).register_forward_pre_hook(keep_input(f"{i}.{norm}")))
            handles.append(layer.mlp.gate_proj.register_forward_hook(keep_output(f"{i}.gate")))
        handles.append(body.norm.register_forward_pre_hook(keep_input("final")))
        handles.append(body.embed_tokens.register_forward_hook(keep_output("embed")))
        try:
            with torch.inference_mode():
                out = hf(tokens, output_attentions=True)
        finally:
            for handle in handles:
                handle.remove()
        self.logits = out.logits[0]
        self.inputs = inputs["embed"]  # [1, seq, d]

        def scale(module: torch.nn.Module, x: Tensor) -> Tensor:
            rms = torch.rsqrt(x[0].float().pow(2).mean(-1, keepdim=True) + module.eps)
            return ((1.0 + module.weight.float()) * rms).to(x.dtype)

        self.blocks = []
        with torch.inference_mode():
            for i, layer in enumerate(body.layers):
                attn, mlp = layer.self_attn, layer.mlp
                f = [scale(getattr(layer, n), inputs[f"{i}.{n}"]) for n in norms]
                pattern = out.attentions[i][0]  # [heads, seq, seq]
                d_head = attn.head_dim
                n_kv = attn.v_proj.weight.shape[0] // d_head
                self.blocks.append(
                    _Block(
                        *f,
                        pattern=pattern.reshape(n_kv, pattern.shape[0] // n_kv, *pattern.shape[1:]),
                        gate=mlp.act_fn(inputs[f"{i}.gate"][0]),
                        w_v=attn.v_proj.weight.detach(),
                        w_o=attn.o_proj.weight.detach(),
                        w_up=mlp.up_proj.weight.detach(),
                        w_down=mlp.down_proj.weight.detach(),
                        d_head=d_head,
                    )
                )
            self.final = scale(body.norm, inputs["final"])
        self.n_layers, self.seq = len(self.blocks), int(tokens.shape[-1])

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor, at: int | None = None, keep: bool = False) -> tuple[Tensor, list[Tensor]]:
        """``x`` [rows, width, d] (positions 0..width−1) → (final-norm state, every layer's output).

        With ``at``, the last layer runs for that query position only and the final state is
        ``[rows, d]`` there; ``keep`` returns every layer's residual output.
        """
        width = x.shape[1]
        kept = []
        for index, b in enumerate(self.blocks):
            top = at is not None and index == self.n_layers - 1
            rows = x.shape[0]
            v = ((x * b.f1[:width]) @ b.w_v.T).view(rows, width, -1, 1, b.d_head).permute(0, 2, 3, 1, 4)
            pattern = b.pattern[..., :width, :width]
            if top:
                pattern = pattern[..., at : at + 1, :]
                x = x[:, at : at + 1]
            q = pattern.shape[-2]
            z = (pattern @ v).permute(0, 3, 1, 2, 4).reshape(rows, q, -1)
            pos = slice(at, at + 1) if top else slice(0, width)
            x = x + (z @ b.w_o.T) * b.f1p[pos]
            hidden = ((x * b.f2[pos]) @ b.w_up.T) * b.gate[pos]
            x = x + (hidden @ b.w_down.T) * b.f2p[pos]
            if keep:
                kept.append(x)
        final = x * (self.final[at : at + 1] if at is not None else self.final[:width])
        return (final[:, 0] if at is not None else final), kept

    # ------------------------------------------------------------------------------ transpose
    def _block_transpose(self, b: _Block, g: Tensor, width: int) -> Tensor:
        """The transpose of one block on cotangents ``g`` [rows, width, d] (positions 0..width−1)."""
        rows = g.shape[0]
        gm = (((g * b.f2p[:width]) @ b.w_down) * b.gate[:width]) @ b.w_up
        g = g + gm * b.f2[:width]
        gz = ((g * b.f1p[:width]) @ b.w_o).view(rows, width, *b.pattern.shape[:2], b.d_head)
        gz = gz.permute(0, 2, 3, 1, 4)  # [rows, kv, groups, q, d_head]
        pattern_t = b.pattern[..., :width, :width].transpose(-1, -2)
        gv = (pattern_t @ gz).sum(2)  # [rows, kv, k, d_head]
        gv = gv.permute(0, 2, 1, 3).reshape(rows, width, -1)
        return g + (gv @ b.w_v) * b.f1[:width]

    def _top_transpose(self, b: _Block, u: Tensor, at: int, width: int) -> Tensor:
        """The top block's transpose for cotangents ``u`` [rows, d] at position ``at`` only."""
        rows = u.shape[0]
        u = u + ((((u * b.f2p[at]) @ b.w_down) * b.gate[at]) @ b.w_up) * b.f2[at]
        gz = ((u * b.f1p[at]) @ b.w_o).view(rows, *b.pattern.shape[:2], b.d_head)  # [rows, kv, g, dh]
        weights = b.pattern[:, :, at, :width]  # [kv, groups, k]
        gv = torch.einsum("kgs,rkgd->rskd", weights, gz).reshape(rows, width, -1)
        g = (gv @ b.w_v) * b.f1[:width]
        g[:, at] += u
        return g

    def transpose(self, u: Tensor, at: int, width: int) -> Tensor:
        """Jᵀu for final-norm cotangents ``u`` [rows, d] at position ``at``: [rows, width, d]."""
        g = self._top_transpose(self.blocks[-1], u * self.final[at], at, width)
        for b in reversed(self.blocks[:-1]):
            g = self._block_transpose(b, g, width)
        return g

    def transpose_layers(self, u: Tensor, at: int) -> Tensor:
        """Row ℓ: J_ℓᵀ u_ℓ for the residual after block ℓ at ``at``; rows join as the pass reaches them."""
        n, width = self.n_layers, at + 1
        g = self._top_transpose(self.blocks[-1], u[-1:], at, width)
        for index in range(n - 2, -1, -1):
            fresh = torch.zeros(1, width, u.shape[-1], dtype=u.dtype, device=u.device)
            fresh[0, at] = u[index]
            g = self._block_transpose(self.blocks[index], torch.cat([fresh, g]), width)
        return g  # [layer, width, d], row ℓ = layer ℓ


def tight_jacobian_floor(
    session: ModelSession, hf: torch.nn.Module, tokens: Tensor, result: Any, config: Any
) -> tuple[str, Callable[[], None], Callable[[Any], None]]:
    """(kind, run, check) of the tight floor, sized from the probe's own ``result``."""
    from lenslab.probes.jacobian.algorithms import krylov_block, krylov_schedule
    from lenslab.probes.jacobian.result import HUTCHINSON_PROBES, SWEEP_POWER_STEPS

    if config.layer != -1 or config.method == "full" or config.stable_rank == "exact":
        raise ValueError("the tight floor covers the final-norm target, randomized SVD, estimated rank")
    w_u, w_e = hf.lm_head.weight, hf.model.embed_tokens.weight
    seq, d, layers = int(tokens.shape[-1]), w_u.shape[-1], session.n_layers
    position = int(result.position)
    width = position + 1
    schedule = krylov_schedule(result.svd_products, krylov_block(width))
    n_comp = config.n_components

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=w_u.dtype, device=w_u.device)

    inputs = {rows: rand(rows, width, d) for kind, rows in schedule if kind == "forward"}
    cotangents = {rows: rand(rows, d) for kind, rows in schedule if kind == "adjoint"}
    sketch, directions = rand(HUTCHINSON_PROBES, seq, d), rand(layers, d)

    def run() -> None:
        with torch.inference_mode():
            op = FrozenOperator(hf, tokens)  # the recording forward
            x = op.inputs[0]
            copies = torch.diag_embed(x.T).permute(1, 2, 0)  # [seq, seq, d]: copy i holds x_i only
            op.forward(copies, keep=True)  # the contribution replay
            final, _ = op.forward(op.inputs)  # the detach check
            _ = final @ w_u.T
            for kind, rows in schedule:
                if kind == "adjoint":
                    op.transpose(cotangents[rows], position, width)
                else:
                    op.forward(inputs[rows], at=position)
            if not config.layer_sweep:  # the stable rank's Hutchinson sketch (the sweep's serves otherwise)
                op.forward(sketch[:, :width], at=position)
            else:
                op.forward(sketch, keep=True)
                for _ in range(SWEEP_POWER_STEPS):
                    right = op.transpose_layers(directions, position)
                    pad = torch.zeros(layers, seq - width, d, dtype=right.dtype, device=right.device)
                    op.forward(torch.cat([right, pad], 1), keep=True)
            vectors = rand(n_comp + layers, d)
            (vectors @ w_u.T).topk(config.top_tokens, -1)
            (rand(n_comp, d) @ w_e.T).abs().topk(config.top_tokens, -1)

    def check(_result: Any) -> None:
        """The operator reproduces HF's final-norm state; its transpose is its forward's adjoint."""
        with torch.inference_mode():
            op = FrozenOperator(hf, tokens)
            final, _ = op.forward(op.inputs)
            reference = hf.model(tokens).last_hidden_state[0]
            error = float((final[0] - reference).norm() / reference.norm())
            v, u = rand(3, width, d), rand(3, d)
            jv, _ = op.forward(v, at=position)
            jtu = op.transpose(u, position, width)
            left, right = (jv * u).sum(), (v * jtu).sum()
            adjoint = float((left - right).abs() / left.abs())
            u_layers = rand(layers, d)
            sweep_t = op.transpose_layers(u_layers, position)
            _, kept = op.forward(v[:1].expand(layers, -1, -1), keep=True)
            per_layer = torch.stack([kept[i][i, position] for i in range(layers)])
            lhs, rhs = (per_layer * u_layers).sum(-1), (v[:1] * sweep_t).sum((-1, -2))
            sweep_error = float(((lhs - rhs).abs() / lhs.abs().clamp_min(1e-6)).max())
        if not (error < 1e-4 and adjoint < 1e-3 and sweep_error < 1e-3):
            raise AssertionError(
                f"tight Jacobian floor: forward {error:.1e}, adjoint {adjoint:.1e}, sweep {sweep_error:.1e}"
            )
        print(
            f"tight Jacobian floor: final state within {error:.1e} of HF, ⟨Jv,u⟩ = ⟨v,Jᵀu⟩ within "
            f"{adjoint:.1e}, per-layer transposes within {sweep_error:.1e}"
        )

    passes = sum(kind == "adjoint" for kind, _ in schedule)
    sweep = f" + sweep ({HUTCHINSON_PROBES} probes, {SWEEP_POWER_STEPS} rounds)"
    sweep_text = sweep if config.layer_sweep else f" + sketch ({HUTCHINSON_PROBES} probes)"
    kind = (
        f"frozen linear map: record + replay + SVD ({result.svd_products} products: {passes} transpose, "
        f"{len(schedule) - passes} forward passes){sweep_text} + decode"
    )
    return kind, run, check
