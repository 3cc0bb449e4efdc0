"""Exact Jacobians of the final residual stream with respect to each layer's residual stream.

The J-lens (Gurnee et al. 2026, reference implementation ``anthropics/jacobian-lens``) averages
the *true* Jacobian of the network — gradients flow through every norm, softmax and gate, unlike
the detached Jacobian of :mod:`lenslab.probes.jacobian` — from the residual stream after block
``l`` to the residual stream after the last block (before the final norm). The reference's
per-prompt estimator, which this module reproduces, puts a one-hot cotangent on output dimension
``i`` at *every* valid target position at once, so that one backward pass gives, at each source
position ``p``, row ``i`` of ``Σ_{p' ≥ p} ∂h_final[p'] / ∂h_l[p]`` (causality zeroes ``p' < p``);
the prompt's ``J_l`` is the mean of that over the valid source positions. Valid positions are
``skip_first … seq − 2`` (attention-sink positions and the last position, which has no next
token, are left out). The same-position Jacobian ``∂h_final[t] / ∂h_l[t]`` would need one
backward per (output dimension, position); the reference names it as a variant, and this module
computes it only for single states (:func:`instance_jacobians`, the J-gap).

Cost: one forward pass (with graph) and ``ceil(d_model / dim_batch)`` batched backward passes per
prompt; the ``dim_batch`` cotangents of one pass run as one vmapped backward
(``is_grads_batched``), so the forward is never replicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession, StopForward
from lenslab.progress import NO_PROGRESS, Progress


def valid_positions(seq_len: int, skip_first: int) -> Int[Tensor, " n_valid"]:
    """Source/target positions of the average: ``skip_first … seq_len − 2`` (reference rule)."""
    if skip_first < 0:
        raise ValueError(f"skip_first must be ≥ 0, got {skip_first}")
    if seq_len - 1 <= skip_first:
        raise ValueError(
            f"a window of {seq_len} tokens leaves no position after skipping the first {skip_first} "
            "and the last one: use longer windows or skip fewer positions"
        )
    return torch.arange(skip_first, seq_len - 1)


@contextmanager
def residual_graph(
    session: ModelSession, tokens: Int[Tensor, "1 seq"], first_layer: int = 0
) -> Iterator[dict[int, Tensor]]:
    """Forward ``tokens`` with autograd on; yields ``{layer: resid after block layer}`` with graph.

    The residual stream after block ``first_layer`` is replaced by a detached leaf that requires
    grad, so the graph starts there (nothing before it is recorded) whatever the parameters'
    ``requires_grad``. The forward stops after the last block: the final norm and the unembedding
    never run. Yields inside the session's hook context (the lock is held).
    """
    last = session.n_layers - 1
    first_layer = session.check_layer(first_layer)
    box: dict[int, Tensor] = {}

    def keep(tensor: Tensor, *, hook: Any) -> Tensor | None:
        layer = hooknames.layer_of(hook.name)
        assert layer is not None
        if layer == first_layer:
            tensor = tensor.detach().requires_grad_(True)
        box[layer] = tensor
        if layer == last:
            raise StopForward
        return tensor if layer == first_layer else None

    names = [hooknames.resid(layer) for layer in range(first_layer, last + 1)]
    with session.hooks([(name, keep) for name in names]) as model, torch.enable_grad():
        model.hf(input_ids=tokens)
        if last not in box:
            raise RuntimeError("the forward pass did not reach the last block")
        yield box


def prompt_jacobians(
    session: ModelSession,
    tokens: Int[Tensor, "1 seq"],
    *,
    skip_first: int,
    dim_batch: int = 64,
    progress: Progress = NO_PROGRESS,
) -> tuple[Float[Tensor, "layer d_model d_model"], int]:
    """One prompt's reference estimator ``J_l`` for every layer ``l`` (float64, CPU), and n positions.

    ``J[l, i, j]`` = mean over valid source positions ``p`` of ``Σ_{p' valid, p' ≥ p}
    ∂h_final[p', i] / ∂h_l[p, j]``. The last layer's entry is the identity by definition (the
    final residual stream's derivative with respect to itself), computed through the same path.
    ``progress`` may raise ``Cancelled`` between backward passes.
    """
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError("prompt_jacobians takes one prompt (tokens of shape [1, seq])")
    if dim_batch < 1:
        raise ValueError(f"dim_batch must be ≥ 1, got {dim_batch}")
    seq = int(tokens.shape[1])
    positions = valid_positions(seq, skip_first)
    d, n_layers = session.d_model, session.n_layers
    jac = torch.zeros(n_layers, d, d, dtype=torch.float64)
    with residual_graph(session, tokens) as resid:
        target = resid[n_layers - 1]
        sources = [resid[layer] for layer in range(n_layers)]
        at = positions.to(target.device)
        starts = list(range(0, d, dim_batch))
        for step, start in enumerate(starts):
            rows = min(dim_batch, d - start)
            cotangent = torch.zeros(rows, *target.shape, dtype=target.dtype, device=target.device)
            index = torch.arange(rows, device=target.device)
            cotangent[index[:, None], 0, at[None, :], start + index[:, None]] = 1.0
            grads = torch.autograd.grad(
                target, sources, cotangent, retain_graph=step < len(starts) - 1, is_grads_batched=True
            )
            for layer, grad in enumerate(grads):
                jac[layer, start : start + rows] = grad[:, 0, at].double().mean(1).cpu()
            progress((step + 1) / len(starts), f"output dimensions {start + rows}/{d}")
    return jac, len(positions)


def instance_jacobians(
    session: ModelSession,
    tokens: Int[Tensor, "1 seq"],
    layer: int,
    position: int,
    *,
    dim_batch: int = 64,
    progress: Progress = NO_PROGRESS,
) -> tuple[Float[Tensor, "d_model d_model"], Float[Tensor, "d_model d_model"]]:
    """The input's own Jacobians at state (``layer``, ``position``), both float64 on CPU.

    Returns ``(same, summed)``: ``same = ∂h_final[t] / ∂h_l[t]`` (the same-position Jacobian) and
    ``summed = Σ_{p' ≥ t} ∂h_final[p'] / ∂h_l[t]`` (the reference estimator's term at ``t``, whose
    average over positions and prompts is J̄). At the last position the two coincide (the sum has
    one term), so there only the ``d_model`` same-position rows run and ``summed`` is their copy:
    half the backward work of the ``2 × d_model`` rows any other position needs.
    """
    seq = int(tokens.shape[1])
    layer = session.check_layer(layer)
    position = session.check_position(position, seq)
    d = session.d_model
    last = position == seq - 1
    same = torch.zeros(d, d, dtype=torch.float64)
    summed = torch.zeros(d, d, dtype=torch.float64)
    with residual_graph(session, tokens, first_layer=layer) as resid:
        target, source = resid[session.n_layers - 1], resid[layer]
        starts = list(range(0, d, dim_batch))
        for step, start in enumerate(starts):
            rows = min(dim_batch, d - start)
            index = torch.arange(rows, device=target.device)
            kinds = 1 if last else 2
            cotangent = torch.zeros(kinds * rows, *target.shape, dtype=target.dtype, device=target.device)
            cotangent[index, 0, position, start + index] = 1.0
            if not last:
                cotangent[
                    rows + index[:, None], 0, torch.arange(position, seq)[None, :], start + index[:, None]
                ] = 1.0
            (grad,) = torch.autograd.grad(
                target, [source], cotangent, retain_graph=step < len(starts) - 1, is_grads_batched=True
            )
            same[start : start + rows] = grad[:rows, 0, position].double().cpu()
            summed_rows = grad[:rows] if last else grad[rows:]  # the same rows at the last position
            summed[start : start + rows] = summed_rows[:, 0, position].double().cpu()
            progress((step + 1) / len(starts), f"instance Jacobian rows {start + rows}/{d}")
    return same, summed
