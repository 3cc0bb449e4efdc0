"""The only place that spells TransformerLens / TransformerBridge hook names.

Every activation lenslab reads or edits is named by one of these functions (as TransformerLens
names them with ``utils.get_act_name``), so a renamed hook point is one edit here and a probe
never carries a hand-written ``"blocks.3.hook_out"``.
"""

from __future__ import annotations

import re

EMBED = "embed.hook_out"  # token embeddings (after the model's embedding scale)
POS_EMBED = "pos_embed.hook_out"  # learned absolute position embeddings (GPT-2)
FINAL_NORM_IN = "ln_final.hook_in"  # the last residual stream, before the final norm
FINAL_NORM = "ln_final.hook_out"  # the final norm's output (HF's last hidden state)

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_RESID = re.compile(r"blocks\.(\d+)\.hook_out")


def resid(layer: int) -> str:
    """Residual stream after block ``layer`` (HF ``hidden_states[layer + 1]``)."""
    return f"blocks.{layer}.hook_out"


def resid_pre(layer: int) -> str:
    """Residual stream entering block ``layer`` (HF ``hidden_states[layer]``; TL's ``hook_resid_pre``)."""
    return f"blocks.{layer}.hook_in"


def attn_out(layer: int) -> str:
    """Output of block ``layer``'s attention (before any post-attention norm)."""
    return f"blocks.{layer}.attn.hook_out"


def mlp_out(layer: int) -> str:
    """Output of block ``layer``'s MLP (before any post-MLP norm)."""
    return f"blocks.{layer}.mlp.hook_out"


def attn_post_norm(layer: int) -> str:
    """Gemma's post-attention norm output: what the attention adds to the residual stream."""
    return f"blocks.{layer}.ln1_post.hook_out"


def mlp_post_norm(layer: int) -> str:
    """Gemma's post-MLP norm output: what the MLP adds to the residual stream."""
    return f"blocks.{layer}.ln2_post.hook_out"


def mlp_hidden(layer: int) -> str:
    """MLP units of block ``layer``: the down projection's input (after activation and gate)."""
    return f"blocks.{layer}.mlp.out.hook_in"


def mlp_pre(layer: int) -> str:
    """The MLP's up projection output (before the activation function)."""
    return f"blocks.{layer}.mlp.in.hook_out"


def mlp_gate(layer: int) -> str:
    """The MLP's gate projection output (gated MLPs: Gemma, Llama)."""
    return f"blocks.{layer}.mlp.gate.hook_out"


def attn_heads(layer: int) -> str:
    """Per-head attention outputs ``z`` of block ``layer`` (the output projection's input)."""
    return f"blocks.{layer}.attn.o.hook_in"


def attn_pattern(layer: int) -> str:
    """Attention probabilities of block ``layer``."""
    return f"blocks.{layer}.attn.hook_pattern"


def layer_of(name: str) -> int | None:
    """Block index of a ``blocks.<n>.…`` hook name; None for hooks outside the blocks."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def is_resid(name: str) -> bool:
    """Whether ``name`` is a residual-stream hook (:func:`resid`)."""
    return _RESID.fullmatch(name) is not None


def is_scale(name: str) -> bool:
    """Whether ``name`` is a norm's scale hook (frozen by the detached forward)."""
    return name.endswith(".hook_scale")


_ATTENTION_MAP = re.compile(r"(hook_pattern|hook_attn_scores|hook_attention_scores)$")
_MLP_WIDE = re.compile(r"(mlp\.out\.hook_in|mlp\.hook_post|mlp\.hook_pre|hook_mlp_in_hidden)$")


def is_attention_map(name: str) -> bool:
    """Whether ``name`` carries one value per (head, key position): patterns and scores."""
    return _ATTENTION_MAP.search(name) is not None


def is_mlp_wide(name: str) -> bool:
    """Whether ``name`` is ``d_mlp`` wide: the MLP's hidden units (bridge or TransformerLens names)."""
    return _MLP_WIDE.search(name) is not None


def is_pattern(name: str) -> bool:
    """Whether ``name`` is an attention-pattern hook (frozen by the detached forward)."""
    return name.endswith(".hook_pattern")


# The norms' scales (frozen by the detached forward).
FINAL_NORM_SCALE = "ln_final.hook_scale"  # the final norm's scale (1/RMS, or 1/std for LayerNorm)


def attn_norm_scale(layer: int) -> str:
    """Scale of block ``layer``'s pre-attention norm."""
    return f"blocks.{layer}.ln1.hook_scale"


def mlp_norm_scale(layer: int) -> str:
    """Scale of block ``layer``'s pre-MLP norm."""
    return f"blocks.{layer}.ln2.hook_scale"


def attn_post_norm_scale(layer: int) -> str:
    """Scale of Gemma's post-attention norm in block ``layer``."""
    return f"blocks.{layer}.ln1_post.hook_scale"


def mlp_post_norm_scale(layer: int) -> str:
    """Scale of Gemma's post-MLP norm in block ``layer``."""
    return f"blocks.{layer}.ln2_post.hook_scale"
