"""The inspector's attention lens: which heads of the inspected layer write into this position, which read it.

The state after block ℓ at position p received block ℓ's attention output at query p (heads
moving information *into* p from the keys they attend to), and p's own value vectors are read by
later queries q > p (heads reading *from* p). Both come from the layer's patterns alone: one
forward that stops after layer ℓ's attention.
"""

from __future__ import annotations

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.attention.probe import AttentionHeads
from lenslab.probes.attention.result import AttentionConfig, AttentionResult
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.progress import Progress


def heads_at(result: AttentionResult, position: int, top: int = 4) -> tuple[list[str], list[str]]:
    """Heads of the result's first layer, strongest first, writing into and reading ``position``.

    Writes: each head's top key for query ``position``; reads: its top later query on key ``position``.
    """
    pattern = result.patterns[0]  # [head, query, key]
    tokens = result.tokens
    into = pattern[:, position, : position + 1]  # [head, key ≤ p]
    keys = into.argmax(-1)
    weights = into.max(-1)
    writes = [
        f"H{h} ← {tokens[keys[h]]!r}@{keys[h]} {weights[h]:.2f}" for h in np.argsort(-weights)[:top].tolist()
    ]
    later = pattern[:, position + 1 :, position]  # [head, query > p]
    reads: list[str] = []
    if later.shape[1]:
        queries = later.argmax(-1) + position + 1
        strength = later.max(-1)
        order = np.argsort(-strength)[:top]
        reads = [f"H{h} → {tokens[queries[h]]!r}@{queries[h]} {strength[h]:.2f}" for h in order.tolist()]
    return writes, reads


def _state_view(session: ModelSession, ref: StateRef, progress: Progress) -> AttentionResult:
    config = AttentionConfig(layers=(ref.layer,), induction=False, head_logits=False)
    return AttentionHeads().run(session, ref.prompt, config, progress)


def _describe(result: AttentionResult, ref: StateRef) -> list[str]:
    writes, reads = heads_at(result, ref.position)
    here = f"{result.tokens[ref.position]!r}@{ref.position}"
    lines = [
        f"{result.layer_label(0)} heads writing into {here} (query → strongest key, weight): "
        + ", ".join(writes)
    ]
    lines.append(
        f"heads reading {here} (strongest later query, weight): " + ", ".join(reads)
        if reads
        else f"no later position reads {here} (it is the last token)"
    )
    return lines


register_state_view(StateView("attention", "Attention heads", _state_view, order=35, describe=_describe))
