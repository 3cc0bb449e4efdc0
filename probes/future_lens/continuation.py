"""Every (layer, position) cell of a causal Future Lens grid in ONE KV-cached continuation.

The fixed and learned methods read each state h_t^ℓ by transplanting it into the last position of
a context and letting the model continue free-running (``prompts.free_running_logits``). Doing
that one layer at a time re-runs the whole context per layer and decodes every greedy step with
its own product against the 262k-row unembedding. Here the work is shared, with the same numbers:

- the context's **prefix** (every position before the last) is run once into a KV cache: once
  per run for the fixed prompt, once per layer for the learned prompts (each layer has its own
  soft prompt, so the prefixes differ; they run as one batch), then repeated for every cell;
- ONE forward of the context's last position for all cells, each cell a row of the batch, with
  each row's state written into its own layer's output (a transplant hook per layer that writes
  only that layer's rows);
- the N − 1 greedy steps of all cells together, each step's rows decoded by ONE product with
  the unembedding (the HF head on the last position only), then logsumexp and top-k.

The prefix's keys and values do not depend on the transplant (it acts at the last position, and
attention is causal), so sharing them is exact up to floating-point summation order. Rows are
processed in chunks of whole layers (``max_rows``) to bound the memory of the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.data import bos_id
from lenslab.progress import NO_PROGRESS, Progress

MAX_ROWS = 512  # cells per batch: 512 rows of 262k float32 logits are 0.5 GB per step


@dataclass(frozen=True)
class SoftContext:
    """A learned prompt as the continuation needs it: raw vectors and the embedding scale."""

    vectors: Float[Tensor, "n_prompt d_model"]
    multiplier: float


def layer_chunks(layers: list[int], seq: int, max_rows: int) -> list[list[int]]:
    """Consecutive groups of whole layers with at most ``max_rows`` cells (at least one layer each)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be ≥ 1, got {max_rows}")
    per = max(1, max_rows // max(seq, 1))
    return [layers[i : i + per] for i in range(0, len(layers), per)]


def causal_grid_topk(
    session: ModelSession,
    layers: list[int],
    states: dict[int, Float[Tensor, "seq d_model"]],
    horizon: int,
    k: int,
    *,
    context_ids: Int[Tensor, " ctx"] | None = None,
    soft_prompts: dict[int, SoftContext] | None = None,
    progress: Progress = NO_PROGRESS,
    on_chunk: Callable[[Tensor, Tensor], None] | None = None,
    max_rows: int = MAX_ROWS,
) -> tuple[Int[Tensor, "layer seq horizon k"], Float[Tensor, "layer seq horizon k"]]:
    """Free-running top-k ids and probabilities of every cell, as ``method_topk`` gives them per layer.

    Give ``context_ids`` (fixed prompt, BOS first) or ``soft_prompts`` (learned prompt per layer:
    the context is BOS + its vectors · multiplier). ``on_chunk(ids, probs)`` receives the layers
    finished so far after each chunk (the page shows the grid growing); ``progress`` is called
    after every step and may cancel.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be ≥ 1, got {horizon}")
    if (context_ids is None) == (soft_prompts is None):
        raise ValueError("give exactly one of context_ids (fixed prompt) and soft_prompts (learned)")
    if soft_prompts is not None and any(layer not in soft_prompts for layer in layers):
        raise ValueError(f"soft_prompts must hold every layer of {layers}")
    if not layers:
        raise ValueError("layers must name at least one layer")
    device = session.device
    seq = states[layers[0]].shape[0]
    chunks = layer_chunks(layers, seq, max_rows)
    # What the hooks do in the current forward: the phase, and the chunk's rows per layer.
    now: dict[str, Any] = {"phase": "prefix", "rows": {}, "soft": None}

    def transplant(layer: int) -> Callable[..., Tensor | None]:
        def hook(resid: Tensor, *, hook: Any) -> Tensor | None:
            rows = now["rows"].get(layer) if now["phase"] == "last" else None
            if rows is None:
                return None
            resid = resid.clone()
            resid[rows, -1] = states[layer].to(resid.dtype)
            return resid

        return hook

    def insert_soft(embedded: Tensor, *, hook: Any) -> Tensor | None:
        """Learned prompts: prefix rows get BOS + vectors[:-1], the last step vectors[-1]."""
        if now["phase"] == "step":
            return None
        soft = now["soft"].to(embedded.dtype)  # [rows, n_prompt, d], already scaled
        if now["phase"] == "prefix":
            return torch.cat([embedded[:, :1], soft[:, :-1]], 1)
        return soft[:, -1:]

    hooks: list[tuple[str, Callable[..., Tensor | None]]] = [
        (session.resid_name(layer), transplant(layer)) for layer in layers
    ]
    if soft_prompts is not None:
        hooks.append((hooknames.EMBED, insert_soft))
    bos = bos_id(session)
    all_ids, all_probs = [], []
    total = len(chunks) * horizon
    done = 0
    with session.hooks(hooks) as model, torch.inference_mode():
        shared = None
        if context_ids is not None:
            context = context_ids.to(device)
            last_id = context[-1:]
            if context.shape[0] > 1:  # the fixed prefix: once for the whole grid
                now["phase"] = "prefix"
                shared = model.hf(input_ids=context[None, :-1], use_cache=True, logits_to_keep=1)
                shared = shared.past_key_values
        for chunk in chunks:
            rows = len(chunk) * seq
            now["rows"] = {layer: slice(i * seq, (i + 1) * seq) for i, layer in enumerate(chunk)}
            if soft_prompts is not None:  # each layer's own prefix, one batch for the chunk's layers
                soft = torch.stack([soft_prompts[i].vectors * soft_prompts[i].multiplier for i in chunk])
                now["phase"], now["soft"] = "prefix", soft.to(device)
                n_prompt = soft.shape[1]
                prefix = torch.full((len(chunk), n_prompt), bos, dtype=torch.long, device=device)
                cache = model.hf(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
                cache.batch_repeat_interleave(seq)
                now["soft"] = now["soft"].repeat_interleave(seq, 0)
                last_id = torch.tensor([bos], device=device)
            else:
                cache = copy.deepcopy(shared) if shared is not None else None
                if cache is not None:
                    cache.batch_repeat_interleave(rows)
            now["phase"] = "last"
            out = model.hf(
                input_ids=last_id.expand(rows, 1).contiguous(),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            now["phase"] = "step"
            ids, probs = [], []
            for n in range(horizon):
                logits = out.logits[:, -1].float()
                # top-k of the logits and exp(logit − logsumexp): no 262k-wide softmax is materialised
                values, top = logits.topk(k, dim=-1)
                ids.append(top)
                probs.append((values - logits.logsumexp(-1, keepdim=True)).exp())
                done += 1
                progress(done / total, f"continuation step {n + 1}/{horizon} of {rows} cells")
                if n + 1 < horizon:
                    chosen = logits.argmax(-1)
                    out = model.hf(
                        input_ids=chosen[:, None],
                        past_key_values=out.past_key_values,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            all_ids.append(torch.stack(ids, 1).reshape(len(chunk), seq, horizon, k).cpu())
            all_probs.append(torch.stack(probs, 1).reshape(len(chunk), seq, horizon, k).cpu())
            if on_chunk is not None:
                on_chunk(torch.cat(all_ids), torch.cat(all_probs))
    return torch.cat(all_ids), torch.cat(all_probs)
