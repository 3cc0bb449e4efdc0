"""Floor of the patch lens page (``patch_lens``): what it cannot avoid, as bare tensor work.

The source prompt's body run up to the source layer (a hook stops it there), the target prompt's
two forwards keeping every block's output (clean, and with the source state written into the
target layer's output at the target position), then ONE batched decode of all 2 × layers ×
positions rows: final norm, ``rows @ W_U`` in chunks of 256, logsumexp, top-k and the tracked
token's logit (the clean run's final prediction at each position). The run returns the top-k ids
``[2, layer, position, k]``, checked against the probe's before timing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.floor_future_lens import _outputs
from lenslab.models import ModelSession


def patch_lens_floor(
    session: ModelSession,
    hf: torch.nn.Module,
    stopped: Callable[[Tensor, int], Tensor],
    tokens: Tensor,
    config: Any,
) -> tuple[str, Callable[[], Tensor], Callable[[Any], None]]:
    """(kind, run, check) of the patch lens floor at the probe's ``config``."""
    layer, target_layer = config.layers(session)
    target = session.tokenize(config.target)
    position = session.check_position(config.position, int(tokens.shape[-1]))
    target_position = session.check_position(config.target_position, int(target.shape[-1]), "target_position")
    body, w_u = hf.model, hf.lm_head.weight

    def put(state: Tensor) -> Callable[..., Any]:
        def hook(_module: object, _args: object, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, target_position] = state
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def run() -> Tensor:
        with torch.inference_mode():
            state = stopped(tokens, layer)[0, position]
            grids = []
            for patched in (False, True):
                box, remove = _outputs(body)
                handle = body.layers[target_layer].register_forward_hook(put(state)) if patched else None
                try:
                    body(target)
                finally:
                    remove()
                    if handle is not None:
                        handle.remove()
                grids.append(torch.stack([out[0] for out in box]))  # [layer, pos, d]
            rows = body.norm(torch.stack(grids).reshape(-1, w_u.shape[-1]))
            seq, layers = target.shape[-1], session.n_layers
            ids, track = [], None
            for start in range(0, rows.shape[0], 256):
                logits = (rows[start : start + 256] @ w_u.T).float()
                logits.logsumexp(-1)
                ids.append(logits.topk(config.k, -1).indices)
            top = torch.cat(ids).reshape(2, layers, seq, -1)
            track = top[0, -1, :, 0]  # the clean run's prediction per position
            for grid in range(2):  # the tracked token's logit per cell (one gather of W_U rows)
                (rows.reshape(2, layers, seq, -1)[grid] * w_u[track]).sum(-1)
            return top

    def check(result: Any) -> None:
        """Top-1 of every cell equal but for near-ties (the probe ranks float32 softmax values)."""
        probe, ours = torch.as_tensor(result.top_ids), run().cpu()
        share = (probe[..., 0] == ours[..., 0]).float().mean().item()
        if share < 0.995:
            raise AssertionError(f"patch lens floor: top-1 differ from the probe's (agree {share:.4f})")
        print(f"patch lens floor: top-1 agree with the probe in {share:.4f} of {probe[..., 0].numel()} cells")

    return f"stop@{layer} + 2 target forwards + 1 decode", run, check
