"""Batched activation patching: many patched copies of one prompt in a single forward pass.

Each *row* of a sweep is one patched run: a set of :class:`Patch` es that overwrite activations of
the base prompt with the source prompt's (clean into corrupted for "denoising"). Rows are stacked
into batches of copies of the base prompt; one hook per hook point patches a different (position,
head) in each batch row, and the forward stops at the final norm (the unembedding never runs: the
metric needs only the answer position's hidden state). Every forward goes through
``ModelSession.capture``, so hooks are removed on exit and the memory/time guards apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.progress import NO_PROGRESS, Progress

COMPONENTS = ("resid", "attn", "mlp", "heads")
COMPONENT_LABELS = {
    "resid": "residual stream after block ℓ (row 'embed': block 0's input, the embeddings)",
    "attn": "attention output of block ℓ (before any post-attention norm)",
    "mlp": "MLP output of block ℓ (before any post-MLP norm)",
    "heads": "one head's output z of block ℓ at every position",
}
EMBED_ROW = "embed"


@dataclass(frozen=True)
class Patch:
    """Overwrite the activation at ``hook`` with the source prompt's, at one position or all."""

    hook: str
    position: int | None = None  # None: every position
    head: int | None = None  # per-head hooks ([batch, seq, head, d_head]): this head only


Row = tuple[Patch, ...]  # one patched run (empty: no patch)


def component_hook(component: str, layer: int) -> str:
    """Hook point patched by ``component`` in block ``layer`` (layer -1: the embeddings, resid only)."""
    if component == "resid":
        return hooknames.resid_pre(0) if layer == -1 else hooknames.resid(layer)
    if component == "attn":
        return hooknames.attn_out(layer)
    if component == "mlp":
        return hooknames.mlp_out(layer)
    if component == "heads":
        return hooknames.attn_heads(layer)
    raise ValueError(f"sweep component must be one of {list(COMPONENTS)}, got {component!r}")


def sweep_rows(
    component: str, layers: Sequence[int], seq_len: int, n_heads: int
) -> tuple[list[int], list[Row]]:
    """The grid of one sweep: its row layers (-1: embeddings) and its rows of patches, row-major.

    Positions sweeps (resid, attn, mlp) patch one (layer, position) per run; the head sweep
    patches one head of one layer at every position.
    """
    grid_layers = ([-1] if component == "resid" else []) + list(layers)
    rows: list[Row] = []
    for layer in grid_layers:
        hook = component_hook(component, layer)
        if component == "heads":
            rows += [(Patch(hook, None, head),) for head in range(n_heads)]
        else:
            rows += [(Patch(hook, position),) for position in range(seq_len)]
    return grid_layers, rows


def source_activations(
    session: ModelSession, tokens: Int[Tensor, "1 seq"], rows: Sequence[Row]
) -> dict[str, Tensor]:
    """The source prompt's activations at every hook point that ``rows`` patch (one forward)."""
    names = list(dict.fromkeys(p.hook for row in rows for p in row))
    return session.capture(tokens, names) if names else {}


def patched_hidden(
    session: ModelSession,
    base: Int[Tensor, "1 seq"],
    source: dict[str, Tensor],
    rows: Sequence[Row],
    position: int,
    *,
    batch_size: int = 32,
    progress: Progress = NO_PROGRESS,
    message: str = "patched runs",
) -> Float[Tensor, "rows d_model"]:
    """Final-norm output at ``position`` of ``base`` with each row's patches applied, in batches.

    Row ``i`` of the result is what one run of ``base`` with ``rows[i]`` patched from ``source``
    would give; a row with no patches is the unpatched base run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    out: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        by_hook: dict[str, list[tuple[int, Patch]]] = {}
        for i, row in enumerate(chunk):
            for patch in row:
                by_hook.setdefault(patch.hook, []).append((i, patch))
        hooks = [(name, patch_hook(source[name], items)) for name, items in by_hook.items()]
        batch = base.expand(len(chunk), -1)
        captured = session.capture(batch, [hooknames.FINAL_NORM], hooks=hooks)
        out.append(captured[hooknames.FINAL_NORM][:, position])
        done = start + len(chunk)
        progress(done / len(rows), f"{message}: {done}/{len(rows)}")
    if not out:
        return torch.empty(0, session.d_model, device=session.device, dtype=session.dtype)
    return torch.cat(out)


def patch_hook(source: Tensor, items: list[tuple[int, Patch]]) -> Callable[..., Tensor]:
    """A hook that writes ``source`` into each listed batch row at its position (and head)."""

    def patch(activation: Tensor, *, hook: object) -> Tensor:
        patched = activation.clone()
        for row, p in items:
            where = slice(None) if p.position is None else p.position
            if p.head is None:
                patched[row, where] = source[0, where]
            else:
                patched[row, where, p.head] = source[0, where, p.head]
        return patched

    return patch
