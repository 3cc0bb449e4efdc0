"""The residual stream at one position split into what each component added, read through the final norm.

The residual stream entering the final norm is a sum: the embeddings (token, plus position for
GPT-2), and for every block what its attention and its MLP add. For Gemma those additions are the
outputs of the post-attention / post-MLP norms, not of the attention / MLP themselves, so the
components are read at :func:`hooknames.attn_post_norm` / :func:`hooknames.mlp_post_norm` when the
model has them. An attention layer's addition splits further over its heads: head h's output
``z_h`` through its slice of W_O (computed by the output projection itself on ``z`` with the other
heads zeroed, so Conv1D and Linear layouts need no special case), plus the projection's bias; for
Gemma through the post-attention norm with that norm's scale from the run, frozen.

Through the final norm with *its* scale from the run (the standard DLA linearisation, as
TransformerLens' ``apply_ln_to_stack``), the norm is affine, so each part's logit is
``((c − mean(c)·centers) / scale · weight) · W_U[:, t]`` and the parts plus one constant (the
norm's bias and the unembedding's bias, read through the same direction) sum to the logit.
Arithmetic is float64 on the activations the forward recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession, NormParts


@dataclass(frozen=True)
class Decomposition:
    """What each component added to the residual stream at one position (float64, model device)."""

    position: int
    labels: list[str]  # "embed", "L0 attn", "L0 mlp", ...
    components: Float[Tensor, "component d_model"]
    heads: Float[Tensor, "layer head d_model"]  # each head's share of its layer's attention addition
    attn_bias: Float[Tensor, "layer d_model"]  # the output projection's (and post-norm's) bias share
    resid: Float[Tensor, " d_model"]  # the final norm's input, as the forward computed it
    final_hidden: Float[Tensor, " d_model"]  # the final norm's output, as the forward computed it
    scale: Float[Tensor, ""]  # the final norm's scale in the run (RMS, or std for LayerNorm)


def _attn_add(session: ModelSession, layer: int) -> str:
    post = hooknames.attn_post_norm(layer)
    return post if post in session.hook_names else hooknames.attn_out(layer)


def _mlp_add(session: ModelSession, layer: int) -> str:
    post = hooknames.mlp_post_norm(layer)
    return post if post in session.hook_names else hooknames.mlp_out(layer)


def has_post_norms(session: ModelSession) -> bool:
    """Whether the blocks norm their attention output before adding it (Gemma 2/3)."""
    return hooknames.attn_post_norm(0) in session.hook_names


def hook_names(session: ModelSession) -> list[str]:
    """Every activation :func:`decompose` reads; one forward records them all."""
    names = [
        hooknames.resid_pre(0),
        hooknames.FINAL_NORM_IN,
        hooknames.FINAL_NORM_SCALE,
        hooknames.FINAL_NORM,
    ]
    post = has_post_norms(session)
    for layer in range(session.n_layers):
        names += [_attn_add(session, layer), _mlp_add(session, layer), hooknames.attn_heads(layer)]
        if post:
            names.append(hooknames.attn_post_norm_scale(layer))
    return names


def frozen_norm(
    vectors: Float[Tensor, "... d_model"], parts: NormParts, scale: Float[Tensor, ""]
) -> Float[Tensor, "... d_model"]:
    """A norm's linear part with its scale frozen: centre (LayerNorm), divide by ``scale``, weight."""
    out = vectors - vectors.mean(-1, keepdim=True) if parts.centers else vectors
    out = out / scale
    return out * parts.weight.to(out) if parts.weight is not None else out


def decompose(session: ModelSession, activations: dict[str, Tensor], position: int) -> Decomposition:
    """Split the residual stream at ``position`` (batch row 0) into its components and heads."""

    def at(name: str) -> Tensor:
        return activations[name][0, position].to(torch.float64)

    labels, components, heads, biases = ["embed"], [at(hooknames.resid_pre(0))], [], []
    post = has_post_norms(session)
    for layer in range(session.n_layers):
        labels += [f"L{layer} attn", f"L{layer} mlp"]
        components += [at(_attn_add(session, layer)), at(_mlp_add(session, layer))]
        per_head, bias = _head_outputs(session, layer, at(hooknames.attn_heads(layer)))
        if post:
            parts = session.norm_parts(session.block_component(layer, "ln1_post"))
            scale = at(hooknames.attn_post_norm_scale(layer)).reshape(())
            per_head, bias = frozen_norm(per_head, parts, scale), frozen_norm(bias, parts, scale)
            if parts.bias is not None:
                bias = bias + parts.bias.to(bias)
        heads.append(per_head)
        biases.append(bias)
    return Decomposition(
        position=position,
        labels=labels,
        components=torch.stack(components),
        heads=torch.stack(heads),
        attn_bias=torch.stack(biases),
        resid=at(hooknames.FINAL_NORM_IN),
        final_hidden=at(hooknames.FINAL_NORM),
        scale=at(hooknames.FINAL_NORM_SCALE).reshape(()),
    )


def _head_outputs(
    session: ModelSession, layer: int, z: Float[Tensor, "head d_head"]
) -> tuple[Float[Tensor, "head d_model"], Float[Tensor, " d_model"]]:
    """Each head's output through the output projection (others zeroed), and the projection's bias."""
    proj = session.block_component(layer, "attn.o")
    n_heads, d_head = z.shape
    weight = proj.weight
    masked = torch.eye(n_heads, dtype=z.dtype, device=z.device)[:, :, None] * z[None]  # [head, head, d_head]
    with torch.inference_mode():
        inputs = torch.cat([masked.reshape(n_heads, n_heads * d_head), z.new_zeros(1, n_heads * d_head)])
        out = proj(inputs.to(weight.dtype)).to(torch.float64)
    bias = out[-1]
    return out[:-1] - bias, bias


@dataclass(frozen=True)
class LogitDirection:
    """The unembedding direction of a target logit (or of a logit difference) and its constant term."""

    direction: Float[Tensor, " d_model"]  # W_U[:, target] (− W_U[:, contrast])
    unembed_bias: float  # b_U[target] (− b_U[contrast]); 0 for models without an unembedding bias


def logit_direction(session: ModelSession, target: int, contrast: int | None = None) -> LogitDirection:
    """The direction whose dot product with the final hidden state is the pre-soft-cap logit (difference)."""
    head = session.output_embedding()
    weight = head.weight.detach()  # [vocab, d_model]; only the rows read go to float64, not all 262k
    bias = getattr(head, "bias", None)
    bias = None if bias is None else bias.detach()
    direction = weight[target].to(torch.float64)
    if contrast is not None:
        direction = direction - weight[contrast].to(torch.float64)
    constant = 0.0
    if bias is not None:
        constant = float(bias[target]) - (float(bias[contrast]) if contrast is not None else 0.0)
    return LogitDirection(direction=direction, unembed_bias=constant)


@dataclass(frozen=True)
class Attribution:
    """The logit split over components and heads; the parts plus ``constant`` sum to ``actual``."""

    components: Float[Tensor, " component"]
    heads: Float[Tensor, "layer head"]
    attn_bias: Float[Tensor, " layer"]
    constant: float  # final-norm bias and unembedding bias through the direction
    actual: float  # the final norm's actual output · direction + unembedding bias (pre-soft-cap)
    resid_error: float  # ‖Σ components − resid‖ / ‖resid‖: the components really sum to the stream


def attribute(session: ModelSession, parts: Decomposition, target: LogitDirection) -> Attribution:
    """Read every component and head through the final norm (frozen scale) onto ``target``."""
    norm = session.norm_parts(session.hf_final_norm())
    direction = target.direction.to(parts.components)
    norm_bias = 0.0 if norm.bias is None else float(norm.bias.to(direction) @ direction)
    total = parts.components.sum(0)
    resid_error = float((total - parts.resid).norm() / parts.resid.norm().clamp_min(1e-30))
    return Attribution(
        components=frozen_norm(parts.components, norm, parts.scale) @ direction,
        heads=frozen_norm(parts.heads, norm, parts.scale) @ direction,
        attn_bias=frozen_norm(parts.attn_bias, norm, parts.scale) @ direction,
        constant=norm_bias + target.unembed_bias,
        actual=float(parts.final_hidden @ direction) + target.unembed_bias,
        resid_error=resid_error,
    )
