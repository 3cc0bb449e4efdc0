"""The detached network compiled into an explicit linear operator, with its explicit transpose.

Once the coefficients are frozen (:mod:`lenslab.probes.jacobian.detached`), every layer is a fixed linear
map of the residual stream: norm = per-position diagonal scaling (after centring for LayerNorm),
attention = O · (frozen pattern ⊗ V), gated MLP = down · diag(frozen gate) · up, GPT-2 MLP =
proj · diag(act(z)/z) · fc. :class:`LinearizedModel` applies exactly these maps from the model's
weights, skipping everything that only fed a frozen coefficient (Q, K, RoPE, softmax, the gate
projection, the norms' statistics, the 262k-wide unembedding) and the bridge's per-op overhead.
It agrees with the hook-based detached forward to rounding (tests check 1e-12 in float64).

:meth:`LinearizedModel.adjoint` is the transposed network run backwards — a batch of VJPs with no
autograd graph. It works position-major (``[seq, rows, d]``) for three reasons measured on the
embedded model: the attention transpose then mixes positions with one GEMM per head; causality
lets it drop every position after the target (they receive no cotangent) and treat the top layer,
where the cotangent sits at one position, with a rank-``heads`` shortcut; and for many rows the
MLP transpose uses one fused d×d matrix per position instead of two d×d_mlp products per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.jacobian.detached import FrozenCoefficients, model_family

FUSE_MARGIN = 1.25
"""Fuse the MLP transpose when it saves this factor of multiply-adds (building the per-position
matrix costs d·d_mlp·d; it saves rows·(2·d·d_mlp − d²)). A margin because the build is one more
pass over the weights."""


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


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def _target_parts(layer: int) -> dict[str, str]:
    """Layer targets the operator computes → the part each one is (``resid``, ``attn``, ``mlp``).

    Both spellings of what attention / MLP add: Gemma's post-norm outputs and the plain outputs.
    """
    return {
        hooknames.resid(layer): "resid",
        hooknames.attn_out(layer): "attn",
        hooknames.mlp_out(layer): "mlp",
        hooknames.attn_post_norm(layer): "attn",
        hooknames.mlp_post_norm(layer): "mlp",
    }


@dataclass
class _Norm:
    """A frozen norm: ``(x − mean x if centred) · factor + bias``, factor = weight / scale."""

    factor: Tensor  # [seq, d]
    bias: Tensor | None
    centre: bool

    def __call__(self, x: Float[Tensor, "batch seq d"]) -> Tensor:
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x * self.factor
        return x if self.bias is None else x + self.bias

    def adjoint(self, g: Float[Tensor, "seq rows d"], at: int | None = None) -> Tensor:
        """Transpose of the linear part, position-major: C·(factor ⊙ g), C the centring.

        ``g`` covers positions 0…len(g)−1, or the single position ``at`` when given ([rows, d]).
        """
        factor = self.factor[at] if at is not None else self.factor[: len(g), None, :]
        g = g * factor
        return g - g.mean(-1, keepdim=True) if self.centre else g

    def window(self, start: int, stop: int) -> _Norm:
        return replace(self, factor=self.factor[start:stop])


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

    def window(self, start: int, stop: int) -> _Layer:
        def cut(norm: _Norm | None) -> _Norm | None:
            return None if norm is None else norm.window(start, stop)

        return replace(
            self,
            ln1=self.ln1.window(start, stop),
            ln1_post=cut(self.ln1_post),
            ln2=self.ln2.window(start, stop),
            ln2_post=cut(self.ln2_post),
            pattern=self.pattern[..., start:stop, start:stop],
            gate=self.gate[start:stop],
        )

    def after_attention_at(self, position: int) -> _Layer:
        """The coefficients used after attention (post-attention norm, MLP), at one position."""

        def cut(norm: _Norm | None) -> _Norm | None:
            return None if norm is None else norm.window(position, position + 1)

        return replace(
            self,
            ln1_post=cut(self.ln1_post),
            ln2=self.ln2.window(position, position + 1),
            ln2_post=cut(self.ln2_post),
            gate=self.gate[position : position + 1],
        )

    def heads(self) -> list[tuple[int, int]]:
        """(kv head, query head) pairs; query head h reads kv head h // groups."""
        n_kv, groups = self.pattern.shape[:2]
        return [(kv, kv * groups + g) for kv in range(n_kv) for g in range(groups)]


class LinearizedModel:
    """The detached network as an explicit linear (affine for GPT-2) operator on input embeddings.

    Call it on ``x`` [batch, seq, d_model]: returns ``{hook name: [batch, seq, d]}`` for the
    requested targets (names from :func:`lenslab.probes.jacobian.detached.target_hook`).
    """

    def __init__(self, session: ModelSession, coefficients: FrozenCoefficients) -> None:
        """Collect the weights and frozen coefficients of every layer."""
        family = model_family(session)
        self.family = family
        self.has_bias = family == "gpt2"
        self.n_layers = session.n_layers
        self.seq = coefficients.seq_len
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
        for layer, block in enumerate(session.hf_layers()):
            if hooknames.attn_pattern(layer) not in coefficients.patterns:
                break  # recorded up to an earlier last layer (record_coefficients(last_layer=...))
            dec = _unwrap(block)
            pattern = coefficients.patterns[hooknames.attn_pattern(layer)][0].detach()
            if family == "gpt2":
                w_v, b_v = _linear(dec.attn.v)
                w_o, b_o = _linear(dec.attn.o)
                w_up, b_up = _linear(dec.mlp.c_fc)
                w_down, b_down = _linear(dec.mlp.c_proj)
                ln1 = norm(dec.ln_1, hooknames.attn_norm_scale(layer))
                ln2 = norm(dec.ln_2, hooknames.mlp_norm_scale(layer))
                ln1_post = ln2_post = None
            else:
                attn = _unwrap(dec.self_attn)
                w_v, b_v = _linear(attn.v_proj)
                w_o, b_o = _linear(attn.o_proj)
                mlp = _unwrap(dec.mlp)
                w_up, b_up = _linear(mlp.up_proj)
                w_down, b_down = _linear(mlp.down_proj)
                ln1 = norm(dec.input_layernorm, hooknames.attn_norm_scale(layer))
                if family == "gemma3":
                    ln1_post = norm(dec.post_attention_layernorm, hooknames.attn_post_norm_scale(layer))
                    ln2 = norm(dec.pre_feedforward_layernorm, hooknames.mlp_norm_scale(layer))
                    ln2_post = norm(dec.post_feedforward_layernorm, hooknames.mlp_post_norm_scale(layer))
                else:
                    ln1_post = ln2_post = None
                    ln2 = norm(dec.post_attention_layernorm, hooknames.mlp_norm_scale(layer))
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
        self.n_layers = len(self.layers)
        self.final_norm = (
            norm(session.hf_final_norm(), hooknames.FINAL_NORM_SCALE)
            if hooknames.FINAL_NORM_SCALE in scales
            else None
        )

    def window(self, start: int, stop: int) -> LinearizedModel:
        """The operator on positions ``start…stop−1`` only (shares the weights).

        Exact for the causal network in two uses: outputs at positions < ``stop`` never depend on
        later positions; and for inputs that are zero before ``start`` (one token's J_i·v), or for
        cotangents at positions ≥ ``start`` read back at positions ≥ ``start`` (the transpose
        only moves cotangent to earlier positions), the dropped positions contribute nothing to
        the linear part. GPT-2's bias differs inside a window; callers subtract the window's own.
        """
        if not 0 <= start < stop <= self.seq:
            raise ValueError(f"window {start}:{stop} is outside 0:{self.seq}")
        clone = object.__new__(LinearizedModel)
        clone.__dict__.update(self.__dict__)
        clone.seq = stop - start
        clone.layers = [layer.window(start, stop) for layer in self.layers]
        clone.final_norm = None if self.final_norm is None else self.final_norm.window(start, stop)
        return clone

    # ------------------------------------------------------------------------------- forward
    def _attention(self, layer: _Layer, x: Tensor, query: int | None = None) -> Tensor:
        """Frozen attention; with ``query``, only that position's output ([batch, 1, d])."""
        batch, seq, _ = x.shape
        n_kv, groups = layer.pattern.shape[:2]
        v = _affine(x, layer.w_v, layer.b_v).view(batch, seq, n_kv, 1, layer.d_head).permute(0, 2, 3, 1, 4)
        pattern = layer.pattern if query is None else layer.pattern[..., query : query + 1, :]
        z = pattern @ v  # [batch, kv, groups, queries, d_head]
        z = z.permute(0, 3, 1, 2, 4).reshape(batch, pattern.shape[-2], n_kv * groups * layer.d_head)
        return _affine(z, layer.w_o, layer.b_o)

    def __call__(
        self,
        x: Float[Tensor, "batch seq d_model"],
        targets: Sequence[str] = (hooknames.FINAL_NORM,),
        at: int | None = None,
    ) -> dict[str, Float[Tensor, "batch seq d"]]:
        """Apply the operator to ``x``; return the requested targets by hook name.

        With ``at``, the last layer needed runs for position ``at`` only and targets of that layer
        (and the final norm) come back as [batch, 1, d]: a Jacobian product reads one position,
        and the rest of that layer would be wasted work.
        """
        wanted = set(targets)
        out: dict[str, Tensor] = {}
        resid = x
        layers = [hooknames.layer_of(name) for name in wanted]
        last_needed = max(
            [self.n_layers - 1 if hooknames.FINAL_NORM in wanted else -1]
            + [layer for layer in layers if layer is not None]
        )
        if last_needed >= self.n_layers or (hooknames.FINAL_NORM in wanted and self.final_norm is None):
            raise ValueError(f"targets {sorted(wanted)} lie past the {self.n_layers} recorded layers")
        final_norm = self.final_norm
        for index, layer in enumerate(self.layers[: last_needed + 1]):
            query = at % self.seq if at is not None and index == last_needed else None
            attn = self._attention(layer, layer.ln1(resid), query)
            if query is not None:  # from here on, position `query` only
                layer = layer.after_attention_at(query)
                resid = resid[:, query : query + 1]
                final_norm = None if final_norm is None else final_norm.window(query, query + 1)
            if layer.ln1_post is not None:
                attn = layer.ln1_post(attn)
            resid = resid + attn
            hidden = _affine(layer.ln2(resid), layer.w_up, layer.b_up) * layer.gate
            mlp = _affine(hidden, layer.w_down, layer.b_down)
            if layer.ln2_post is not None:
                mlp = layer.ln2_post(mlp)
            resid = resid + mlp
            values = {"resid": resid, "attn": attn, "mlp": mlp}
            for name, part in _target_parts(index).items():
                if name in wanted:
                    out[name] = values[part]
        if hooknames.FINAL_NORM in wanted:
            out[hooknames.FINAL_NORM] = final_norm(resid)
        missing = wanted - set(out)
        if missing:
            raise ValueError(f"unknown Jacobian target(s) {sorted(missing)}")
        return out

    def target_fn(self, target: str, position: int) -> TargetFn:
        """y(x) for one target hook at one position, on a batch of inputs: [batch, seq, d] → [batch, d]."""
        return TargetFn(self, target, position)

    # ------------------------------------------------------------------------------- adjoint
    def adjoint(
        self, cotangents: Float[Tensor, "k d_out"], target: str, position: int
    ) -> Float[Tensor, "k seq d_model"]:
        """Jᵀu for each row u: the transposed network run backwards (a VJP without autograd).

        Exact for the linear part; biases do not enter a transpose. Equals ``torch.func.vjp`` of
        :meth:`__call__` (tests check it) at a fraction of its cost: no forward pass, no graph.
        """
        if target == hooknames.FINAL_NORM:
            start, part = self.n_layers - 1, "final"
        else:
            layer = hooknames.layer_of(target)
            part = None if layer is None else _target_parts(layer).get(target)
            if layer is None or part is None:
                raise ValueError(f"unknown Jacobian target {target!r}")
            start = layer
        return self._adjoint(cotangents, [start] * len(cotangents), part, position)

    def adjoint_layers(
        self, cotangents: Float[Tensor, "k d_model"], layers: Sequence[int], position: int
    ) -> Float[Tensor, "k seq d_model"]:
        """Jᵀu where row r's target is the residual stream after block ``layers[r]``, in one pass."""
        return self._adjoint(cotangents, list(layers), "resid", position)

    def _adjoint(self, cotangents: Tensor, starts: list[int], part: str, position: int) -> Tensor:
        k, d_model = cotangents.shape
        position = position % self.seq
        span = position + 1  # later positions never receive cotangent (causal attention)
        top = max(starts)
        starts_t = torch.as_tensor(starts, device=cotangents.device)
        grad = cotangents.new_zeros(span, k, d_model)
        with torch.no_grad():
            if part == "final":
                grad[position] = self.final_norm.adjoint(cotangents, at=position)
            for index in range(top, -1, -1):
                layer = self.layers[index]
                if part == "resid":
                    rows = starts_t == index
                    if bool(rows.all()):
                        grad[position] += cotangents
                    elif bool(rows.any()):
                        grad[position, rows] += cotangents[rows]
                if index == top:  # the cotangent still sits at `position` only
                    if part == "attn":
                        here = cotangents
                    else:
                        here = cotangents if part == "mlp" else grad[position]
                        grad[position] += self._mlp_adjoint(layer, here, position)
                        here = grad[position]
                    grad += self._attention_adjoint(layer, here, position)
                else:
                    grad += self._mlp_adjoint(layer, grad, None)
                    grad += self._attention_adjoint(layer, grad, None)
        out = cotangents.new_zeros(k, self.seq, d_model)
        out[:, :span] = grad.transpose(0, 1)
        return out

    def _mlp_adjoint(self, layer: _Layer, g: Tensor, at: int | None) -> Tensor:
        """(ln2 ∘ down · diag(gate) · up ∘ ln2_post)ᵀ g, position-major ([span, k, d] or [k, d] at ``at``).

        For many rows, one fused d×d matrix per position — post-norm · down · diag(gate) · up ·
        pre-norm — costs d·d_mlp·d to build and k·d² to apply, against k·2·d·d_mlp unfused.
        """
        rows = g.shape[-2]
        d, d_mlp = layer.w_down.shape
        if at is None and rows * (2 * d * d_mlp - d * d) > FUSE_MARGIN * d * d_mlp * d:
            fused = torch.empty(len(g), d, d, dtype=g.dtype, device=g.device)
            for t in range(len(g)):
                down = layer.w_down * layer.gate[t]
                if layer.ln2_post is not None:
                    down = down * layer.ln2_post.factor[t, :, None]
                torch.matmul(down, layer.w_up, out=fused[t])
            g = torch.bmm(g, fused)
            return layer.ln2.adjoint(g)
        gate = layer.gate[at] if at is not None else layer.gate[: len(g), None, :]
        if layer.ln2_post is not None:
            g = layer.ln2_post.adjoint(g, at=at)
        return layer.ln2.adjoint(((g @ layer.w_down) * gate) @ layer.w_up, at=at)

    def _attention_adjoint(self, layer: _Layer, g: Tensor, at: int | None) -> Tensor:
        """(ln1 ∘ O · pattern ⊗ V ∘ ln1_post)ᵀ g, position-major ([span, k, d], or [k, d] at ``at``).

        With the cotangent at one position ``at`` (the top layer), every head's contribution to
        position t is the same [k, d] matrix scaled by pattern[h, at, t]: one small GEMM mixes them.
        """
        d_head = layer.d_head
        span = len(g) if at is None else at + 1
        if layer.ln1_post is not None:
            g = layer.ln1_post.adjoint(g, at=at)
        n_kv, groups = layer.pattern.shape[:2]
        if at is not None:
            rows = g.shape[0]
            z = (g @ layer.w_o).view(rows, n_kv, groups, d_head).permute(1, 0, 2, 3)
            per_head = torch.bmm(z.reshape(n_kv, rows * groups, d_head), layer.w_v.view(n_kv, d_head, -1))
            per_head = per_head.view(n_kv, rows, groups, -1).transpose(1, 2).reshape(n_kv * groups, -1)
            weights = layer.pattern[:, :, at, :span].reshape(-1, span)  # [heads, span]
            mixed = (weights.T @ per_head).view(span, *g.shape)
            return layer.ln1.adjoint(mixed)
        rows = g.shape[1]
        # All heads at once (a handful of large ops instead of several small ones per head, which
        # dominated on a shared CPU): z[t, r, kv, g, :] = g[t, r] · O_headᵀ, then every head's
        # pattern transpose mixes positions in one batched GEMM per kv head, summed over its group.
        z = (g @ layer.w_o).view(span, rows, n_kv, groups, d_head)
        z = z.permute(2, 3, 0, 1, 4).reshape(n_kv, groups * span, rows * d_head)  # [kv, (g, t), (r, e)]
        mix = layer.pattern[..., :span, :span].permute(0, 3, 1, 2).reshape(n_kv, span, groups * span)
        acc = torch.bmm(mix, z).view(n_kv, span, rows, d_head)  # [kv, s, r, e]
        out = acc.permute(1, 2, 0, 3).reshape(span, rows, n_kv * d_head) @ layer.w_v
        return layer.ln1.adjoint(out)


@dataclass
class TargetFn:
    """One target hook at one position as a function of the input: [batch, seq, d] → [batch, d]."""

    model: LinearizedModel
    target: str
    position: int

    def __call__(self, x: Tensor) -> Tensor:
        """The target at ``position`` for each input in the batch."""
        return self.model(x, (self.target,), at=self.position)[self.target][:, 0]
