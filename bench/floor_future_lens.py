"""Floors of the Future Lens page's trained and causal methods (``future_lens[linear|fixed|learned]``).

Each floor is the page's unavoidable work as bare tensor work on the plain Hugging Face model, and
returns the top-k ids it computed so that the bench can check them against the probe's own grid
before timing (``check``):

- the prompt's prefill keeping every block's output and the KV cache, its full logits (the
  model's greedy token after every prompt position: the page's "actual" row) and the N cached
  greedy steps past the prompt's end. Every method needs this;
- linear: the maps applied to the states at the positions they were fitted at (one batched
  product per horizon over every layer, ``bmm``), then ONE decode of all predicted rows (final
  norm, ``rows @ W_U`` in chunks of 256, logsumexp, top-k);
- fixed / learned: the context's prefix (the generic prompt's tokens before its last, or BOS +
  the soft prompt's vectors before its last: one prefix per layer, run as one batch) run ONCE
  into a KV cache, the cache repeated for every (layer, position) cell, then ONE batched forward
  of the context's last position with each cell's state written into its layer's output, and the
  N − 1 KV-cached greedy steps of all cells together, each step with the top-k and logsumexp of
  every cell's logits. The probe does the same work through the session
  (``continuation.causal_grid_topk``: hooks on the bridge, chunks of at most 512 cells). The
  learned row's prompts are trained by the bench (``bench_home``: one AdamW step on 16 pydoc
  examples per layer, in a throw-away ``LENSLAB_HOME``); their quality does not change the work.

Before the probe batched its cells, the fixed page ran 3.6-6.4× this floor: a cProfile (7 tokens,
26.4 s) put 16.0 s in 76 unembedding products (one per layer and greedy step on a few rows, each
reading the whole 262k × 640 matrix) and 10 s in re-running the context for each layer's batch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenslab.models import ModelSession
from lenslab.models.paths import lenslab_home
from lenslab.probes import get_probe
from lenslab.probes.future_lens.data import DataSettings, bos_id, build_dataset
from lenslab.probes.future_lens.methods import Artefacts
from lenslab.probes.future_lens.prompts import (
    PromptTraining,
    fixed_context_ids,
    soft_prompt_path,
    train_soft_prompt,
)


def _outputs(body: torch.nn.Module) -> tuple[list[Tensor], Callable[[], None]]:
    """Forward hooks keeping every block's output (pre final norm); returns (box, remove)."""
    box: list[Tensor] = []

    def keep(_module: object, _args: object, output: Any) -> None:
        box.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(keep) for layer in body.layers]
    return box, lambda: [h.remove() for h in handles]


def prefill_and_actual(hf: torch.nn.Module, tokens: Tensor, horizon: int) -> tuple[list[Tensor], Tensor]:
    """Every block's output over the prompt and the actual tokens t+1 .. t+horizon per position."""
    box, remove = _outputs(hf.model)
    try:
        out = hf(tokens, use_cache=True, logits_to_keep=0)
    finally:
        remove()
    states = list(box)
    chosen = [out.logits[0].float().argmax(-1)]
    cache, nxt = out.past_key_values, chosen[0][-1:][None]
    for _ in range(horizon - 1):
        step = hf(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, nxt = step.past_key_values, step.logits[:, -1:].float().argmax(-1)
        chosen.append(nxt[0])
    extended = torch.cat(chosen)
    seq = tokens.shape[1]
    return states, torch.stack([extended[t : t + horizon] for t in range(seq)])


def topk_rows(hf: torch.nn.Module, rows: Tensor, k: int, normed: bool = False) -> Tensor:
    """Top-k ids of each row's logits (final norm unless ``normed``, unembedding, logsumexp)."""
    norm, w_u = hf.model.norm, hf.lm_head.weight
    rows = rows if normed else norm(rows)
    ids = []
    for start in range(0, rows.shape[0], 256):
        logits = (rows[start : start + 256] @ w_u.T).float()
        logits.logsumexp(-1)
        ids.append(logits.topk(k, -1).indices)
    return torch.cat(ids)


def linear_floor(
    session: ModelSession, hf: torch.nn.Module, tokens: Tensor, config: Any
) -> tuple[str, Callable[[], Tensor], Callable[[Any], None]]:
    """The linear method's floor; its run returns top-k ids ``[layer, fitted position, N, k]``."""
    maps = Artefacts.saved(session).linear
    layers = session.check_layers(config.layers)
    if maps is None or any(layer not in maps.layers for layer in layers):
        raise ValueError("no linear maps are trained for every layer: run bench/bench_prepare.py")
    horizon, seq = config.horizon + 1, tokens.shape[1]
    first, last = maps.positions or (0, seq - 1)
    last = min(last, seq - 1)
    index = [maps.layers.index(layer) for layer in layers]
    weight = maps.weight[index][:, :horizon].contiguous()  # [layer, N, d, d]
    x_mean, y_mean = maps.x_mean[index][:, None], maps.y_mean[:horizon]

    def run() -> Tensor:
        with torch.inference_mode():
            states, _ = prefill_and_actual(hf, tokens, horizon)
            centred = torch.stack([states[layer][0, first : last + 1] for layer in layers]) - x_mean
            predicted = torch.stack([torch.bmm(centred, weight[:, n]) for n in range(horizon)], 2) + y_mean
            ids = topk_rows(hf, predicted.reshape(-1, predicted.shape[-1]), config.k)
            return ids.reshape(*predicted.shape[:3], -1)

    def check(result: Any) -> None:
        probe = torch.as_tensor(result.top_ids)[:, first : last + 1]
        ours = run().cpu()
        if not torch.equal(probe, ours):
            share = (probe[..., 0] == ours[..., 0]).float().mean().item()
            raise AssertionError(f"linear floor's top-k differ from the probe's (top-1 agree {share:.3f})")

    return f"prefill + greedy + {horizon} map bmm + decode", run, check


# The learned row's prompts: trained by the bench in a throw-away home (quality is not the point,
# the timed work is the same for any prompt): one AdamW step on 16 pydoc examples per layer.
BENCH_DATA = DataSettings(source="pydoc", n_examples=32, prefix_tokens=8, min_prefix_tokens=4)
BENCH_TRAINING = PromptTraining(epochs=1, batch_size=16, max_examples=16)


def bench_home(session: ModelSession, row: str) -> Callable[[], None]:
    """For ``future_lens[learned]``: a throw-away ``LENSLAB_HOME`` holding a bench-trained prompt per layer.

    The home's ``models`` links to the real one; ``~/.cache/lenslab`` is never written. The probe
    then loads its prompts from there as the page does. Returns the function that restores the
    environment and deletes the home (a no-op for every other row).
    """
    if row != "future_lens[learned]":
        return lambda: None
    before = os.environ.get("LENSLAB_HOME")
    home = Path(tempfile.mkdtemp(prefix="lenslab-bench-learned-"))
    (home / "models").symlink_to(lenslab_home() / "models")
    os.environ["LENSLAB_HOME"] = str(home)
    config = get_probe("future_lens").default_config()
    started = time.perf_counter()
    data = build_dataset(session, BENCH_DATA)  # built once, in the throw-away home
    for layer in session.check_layers(config.layers):
        train_soft_prompt(session, data, layer, BENCH_TRAINING).save(
            soft_prompt_path(session.model_id, layer)
        )
    print(f"bench-trained learned prompts in {time.perf_counter() - started:.1f} s ({home})", flush=True)

    def restore() -> None:
        if before is None:
            os.environ.pop("LENSLAB_HOME", None)
        else:
            os.environ["LENSLAB_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)

    return restore


def causal_floor(
    session: ModelSession, hf: torch.nn.Module, tokens: Tensor, config: Any
) -> tuple[str, Callable[[], Tensor], Callable[[Any], None]]:
    """The fixed / learned method's floor (free-running); its run returns ids ``[layer, pos, N, k]``."""
    if config.protocol != "free-running":
        raise ValueError(f"the causal floor times the free-running protocol, not {config.protocol!r}")
    layers = session.check_layers(config.layers)
    horizon, seq = config.horizon + 1, tokens.shape[1]
    body = hf.model
    rows = len(layers) * seq
    if config.method == "fixed":
        context = fixed_context_ids(session).to(tokens.device)
        embedded = body.embed_tokens(context[None])  # the model's own (scaled) embeddings
        prefix, last_embed = embedded[:, :-1], embedded[:, -1:].expand(rows, -1, -1)
        kind = f"ctx prefix once + {rows} cells × {horizon} cached steps"
    else:
        artefacts = Artefacts.saved(session)
        missing = artefacts.missing("learned", layers)
        if missing:
            raise ValueError(missing)
        with torch.inference_mode():
            bos = body.embed_tokens(torch.tensor([[bos_id(session)]], device=tokens.device))
            soft = torch.stack(
                [
                    artefacts.prompts[layer].vectors * float(artefacts.prompts[layer].meta["multiplier"])
                    for layer in layers
                ]
            ).to(bos.dtype)  # [layer, n_prompt, d]: one prefix per layer's prompt
            prefix = torch.cat([bos.expand(len(layers), -1, -1), soft[:, :-1]], 1)
            last_embed = soft[:, -1:].repeat_interleave(seq, 0)
        kind = (
            f"bench-trained prompts (1 step, 16 ex.): {len(layers)} prefixes once + {rows} cells × "
            f"{horizon} cached steps"
        )

    def run() -> Tensor:
        with torch.inference_mode():
            states, _ = prefill_and_actual(hf, tokens, horizon)
            cells = {layer: states[layer][0] for layer in layers}  # [seq, d] per layer
            cache = hf(inputs_embeds=prefix, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(rows // prefix.shape[0])

            def write(group: int, layer_states: Tensor) -> Callable[..., Tensor]:
                def hook(_module: object, _args: object, output: Any) -> Any:
                    hidden = output[0] if isinstance(output, tuple) else output
                    hidden = hidden.clone()
                    hidden[group * seq : (group + 1) * seq, -1] = layer_states
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                return hook

            handles = [
                body.layers[layer].register_forward_hook(write(group, cells[layer]))
                for group, layer in enumerate(layers)
            ]
            try:
                out = hf(inputs_embeds=last_embed, past_key_values=cache, use_cache=True, logits_to_keep=1)
            finally:
                for handle in handles:
                    handle.remove()
            ids = []
            for n in range(horizon):
                logits = out.logits[:, -1].float()
                logits.logsumexp(-1)
                ids.append(logits.topk(config.k, -1).indices)
                if n + 1 < horizon:
                    out = hf(
                        ids[-1][:, :1], past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1
                    )
            return torch.stack(ids, 1).reshape(len(layers), seq, horizon, -1)

    def check(result: Any) -> None:
        """Top-1 of every cell and N equal but for near-ties (a batch of another shape can swap
        one, and a swapped greedy token changes the cell's later N)."""
        probe, ours = torch.as_tensor(result.top_ids), run().cpu()
        share = (probe[..., 0] == ours[..., 0]).float().mean().item()
        if share < 0.99:
            raise AssertionError(f"causal floor's top-1 differ from the probe's (agree {share:.4f})")
        print(f"causal floor: top-1 agree with the probe in {share:.4f} of {probe[..., 0].numel()} cells")

    return kind, run, check
