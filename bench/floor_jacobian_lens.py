"""Floor of the J-lens page (``jacobian_lens``): what it cannot avoid, as bare tensor work.

- ONE forward on the plain HF model keeping every block's output; with the J-gap, the gap
  layer's output is replaced by a leaf that requires grad (parameters frozen), so only the later
  blocks record a graph and that same forward serves the backward;
- the J-lens map of every read layer as one batched product ``bmm(states, J̄ᵀ)``, then ONE
  decode of all 2 × layers × positions rows (J-lens and logit lens): final norm, ``rows @ W_U``
  in chunks of 256, logsumexp and top-k (the top-k's probabilities are ``exp(logit − lse)``).
  The last layer's logit-lens rows are the model's own logits, so the final prediction costs
  nothing more;
- the J-gap: the rows of the input's own Jacobian as ONE batched backward (``is_grads_batched``)
  from the last block's output to the gap state: ``d_model`` one-hot cotangents for the
  same-position Jacobian, and ``d_model`` more for the summed term unless the gap position is the
  last (there the two coincide), then ``J̄ h`` and ``J h`` decoded as a few rows and the two
  Frobenius norms.

The run returns the J-lens and logit-lens top-1 ids ``[layer, pos]`` and the gap's relative
Frobenius distances, checked against the probe's before timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lenslab.models import ModelSession
from lenslab.probes.jacobian_lens.artefacts import JacobianLens

CHUNK = 256


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Parameters not requiring grad inside the block (so a graph starts at the leaf only)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def top_rows(hf: torch.nn.Module, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k probabilities and ids of each pre-norm row (final norm, unembedding, logsumexp, top-k)."""
    norm, w_u = hf.model.norm, hf.lm_head.weight
    probs, ids = [], []
    for start in range(0, rows.shape[0], CHUNK):
        logits = (norm(rows[start : start + CHUNK]) @ w_u.T).float()
        top = logits.topk(k, -1)
        probs.append((top.values - logits.logsumexp(-1, keepdim=True)).exp())
        ids.append(top.indices)
    return torch.cat(probs), torch.cat(ids)


def jacobian_lens_floor(
    session: ModelSession, hf: torch.nn.Module, tokens: Tensor, config: Any
) -> tuple[str, Callable[[], tuple[Tensor, Tensor, Tensor]], Callable[[Any], None]]:
    """(kind, run, check) of the J-lens floor at the probe's ``config``."""
    lens = JacobianLens.load(session)
    layers = session.check_layers(config.layers)
    body, w_u = hf.model, hf.lm_head.weight
    seq, d, n_layers = int(tokens.shape[-1]), session.d_model, session.n_layers
    jac = lens.jacobians[layers].to(w_u.device, w_u.dtype)
    gap_layer = n_layers // 2 if config.gap_layer == -1 else session.check_layer(config.gap_layer)
    position = session.check_position(config.gap_position, seq)
    last = position == seq - 1
    n_rows = (1 if last else 2) * d
    mean = lens.jacobians[gap_layer].to(w_u.device, w_u.dtype)

    def run() -> tuple[Tensor, Tensor, Tensor]:
        box: dict[int, Tensor] = {}

        def keeper(index: int) -> Callable[..., Any]:
            def keep(_module: object, _args: object, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                if config.gap and index == gap_layer:
                    hidden = hidden.detach().requires_grad_(True)
                    box[index] = hidden
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
                box[index] = hidden
                return None

            return keep

        handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(body.layers)]
        try:
            with frozen(hf), torch.set_grad_enabled(config.gap):
                body(tokens)
        finally:
            for handle in handles:
                handle.remove()
        with torch.inference_mode():
            states = torch.stack([box[layer][0].detach() for layer in layers])  # [layer, pos, d]
            rows = torch.cat([torch.bmm(states, jac.transpose(1, 2)), states]).flatten(0, 1)
            _probs, ids = top_rows(hf, rows, config.k)
            top1 = ids[:, 0].reshape(2, len(layers), seq)
        frob = torch.full((2,), float("nan"))
        if config.gap:
            target, source = box[n_layers - 1], box[gap_layer]
            index = torch.arange(d, device=target.device)
            cotangent = torch.zeros(n_rows, *target.shape, dtype=target.dtype, device=target.device)
            cotangent[index, 0, position, index] = 1.0
            if not last:
                cotangent[d + index[:, None], 0, torch.arange(position, seq)[None, :], index[:, None]] = 1.0
            (grad,) = torch.autograd.grad(target, [source], cotangent, is_grads_batched=True)
            with torch.inference_mode():
                own = grad[:, 0, position].reshape(-1, d, d)  # [1 or 2, d, d]
                h = source[0, position].detach()
                top_rows(hf, torch.cat([(mean @ h)[None], own @ h]), config.k)
                own = own.expand(2, d, d)  # at the last position summed = same
                frob = (torch.linalg.matrix_norm(own - mean) / torch.linalg.matrix_norm(own)).cpu()
        return top1[0], top1[1], frob

    def check(result: Any) -> None:
        """Top-1 of both grids equal but for near-ties; the J-gap's distances within 1e-3."""
        j_top, l_top, frob = run()
        share = min(
            (torch.as_tensor(result.jlens_ids[..., 0]) == j_top.cpu()).float().mean().item(),
            (torch.as_tensor(result.logit_ids[..., 0]) == l_top.cpu()).float().mean().item(),
        )
        if share < 0.995:
            raise AssertionError(f"J-lens floor: top-1 differ from the probe's (agree {share:.4f})")
        if config.gap:
            theirs = torch.as_tensor(result.gap_rel_frobenius, dtype=torch.float64)
            error = float((frob.double() - theirs).abs().max())
            if not error < 1e-3:
                raise AssertionError(f"J-lens floor: J-gap {frob.tolist()} vs the probe's {theirs.tolist()}")
        print(f"J-lens floor: top-1 agree with the probe in {share:.4f} of {j_top.numel()} cells per grid")

    gap_text = f" + gap ({n_rows} VJP rows, 1 batched backward from L{gap_layer})" if config.gap else ""
    kind = f"forward + decode {2 * len(layers) * seq} rows{gap_text}"
    return kind, run, check
