"""The four Future Lens methods behind one dispatch, and the trained artefacts they need.

1. direct projection: decode h_t^ℓ (final norm + unembed) as if it were the prediction for t+N+1;
2. linear model: a d_model×d_model map h_t^ℓ → last block's output at t+N, fitted in closed form
   (ridge on centred data, float64), decoded through final norm + unembed (``linear``);
3. fixed prompt: run a generic context, overwrite the layer-ℓ state at its last position with
   h_t^ℓ and read N = 0..3 as the intervened model continues with its own greedy tokens
   (``protocol="free-running"``, the paper's) or is fed the original run's tokens
   (``protocol="teacher-forced"``);
4. learned prompt: as 3 with a trainable soft prompt (10 vectors) trained with KL(original ‖
   intervened) at t+N, AdamW lr 5e-4 (Pal et al., 2023) (3 and 4: ``prompts``).

The protocol only matters for 3 and 4 at N ≥ 1: direct and linear read no continuation.

Trained artefacts are safetensors files with JSON metadata (model id, d_model, settings, data
key) under ``artefacts_dir()/future_lens/<model>``; loading one for another model is refused
(``artefacts``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.artefacts import check_disjoint
from lenslab.probes.future_lens.continuation import SoftContext, causal_grid_topk
from lenslab.probes.future_lens.data import FutureLensData
from lenslab.probes.future_lens.linear import (
    LinearMaps,
    load_linear,
)
from lenslab.probes.future_lens.prompts import (
    DEFAULT_PROTOCOL,
    FREE_RUNNING,
    PROTOCOLS,
    SoftPrompt,
    causal_logits,
    embedding_multiplier,
    fixed_context_ids,
    free_running_logits,
    load_soft_prompt,
    trained_prompt_layers,
)
from lenslab.progress import NO_PROGRESS, Progress

METHODS = ("direct", "linear", "fixed", "learned")


@dataclass
class Artefacts:
    """What the trained methods need: linear maps and soft prompts by layer (either may be absent)."""

    linear: LinearMaps | None = None
    prompts: dict[int, SoftPrompt] = field(default_factory=dict)

    @classmethod
    def saved(cls, session: ModelSession) -> Artefacts:
        """Everything saved for the session's model."""
        prompts = {}
        for layer in trained_prompt_layers(session):
            prompt = load_soft_prompt(session, layer)
            if prompt is not None:
                prompts[layer] = prompt
        return cls(linear=load_linear(session), prompts=prompts)

    def missing(self, method: str, layers: list[int]) -> str | None:
        """A sentence naming what ``method`` lacks for ``layers``, or None when it can run."""
        if method == "linear":
            if self.linear is None:
                return "no linear maps are trained for this model yet: train them (Train / evaluate)"
            lacking = [layer for layer in layers if layer not in self.linear.layers]
            if lacking:
                return f"no linear maps for layer(s) {lacking}: train them (Train / evaluate)"
        if method == "learned":
            lacking = [layer for layer in layers if layer not in self.prompts]
            if lacking:
                return f"no learned prompt for layer(s) {lacking}: train one per layer (Train / evaluate)"
        return None

    def check_disjoint(self, data: FutureLensData, methods: list[str], layers: list[int]) -> None:
        """Refuse (``ValueError``) artefacts fitted on one of ``data``'s test documents.

        Checks what ``methods`` would use at ``layers``: one provenance check for maps and prompts.
        """
        if "linear" in methods and self.linear is not None:
            check_disjoint(self.linear.meta, data, "the linear maps")
        if "learned" in methods:
            for layer in layers:
                if layer in self.prompts:
                    check_disjoint(self.prompts[layer].meta, data, f"the learned prompt of layer {layer}")


def method_logits(
    session: ModelSession,
    method: str,
    layer: int,
    states: Float[Tensor, "batch d_model"],
    horizon: int,
    artefacts: Artefacts,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    teacher: Int[Tensor, "batch fed"] | None = None,
) -> Float[Tensor, "batch horizon vocab"]:
    """Logits for t+1 .. t+horizon predicted from single states h_t^ℓ by ``method``.

    ``protocol`` says how fixed and learned reach N ≥ 1 (``prompts.PROTOCOLS``); teacher forcing
    needs ``teacher``, the original run's tokens t+1 .. t+horizon-1.
    """
    if method == "direct":
        return session.decode_resid(states)[:, None].expand(-1, horizon, -1)
    if method == "linear":
        if artefacts.missing("linear", [layer]):
            raise ValueError(artefacts.missing("linear", [layer]))
        return session.decode_resid(artefacts.linear.predict(states, layer)[:, :horizon])  # type: ignore[union-attr]
    if method == "fixed":
        context = {"context_ids": fixed_context_ids(session)}
    elif method == "learned":
        if artefacts.missing("learned", [layer]):
            raise ValueError(artefacts.missing("learned", [layer]))
        prompt = artefacts.prompts[layer]
        multiplier = float(prompt.meta.get("multiplier", embedding_multiplier(session)))
        context = {"soft_prompt": prompt.vectors, "multiplier": multiplier}
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if protocol == "free-running":
        return free_running_logits(session, states, layer, horizon, **context)
    if protocol == "teacher-forced":
        if teacher is None or teacher.shape[1] < horizon - 1:
            raise ValueError(f"teacher forcing needs the original tokens t+1 .. t+{horizon - 1}")
        return causal_logits(session, states, layer, teacher[:, : horizon - 1], **context)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")


BATCHED = ("direct", "linear")  # methods whose whole grid is decoded in one batched product


def grid_topk(
    session: ModelSession,
    method: str,
    layers: list[int],
    states: dict[int, Float[Tensor, "seq d_model"]],
    horizon: int,
    artefacts: Artefacts,
    k: int,
) -> tuple[Int[Tensor, "layer seq horizon k"], Float[Tensor, "layer seq horizon k"]]:
    """Top-k ids and probabilities of every (layer, position) cell for a method in :data:`BATCHED`.

    The same numbers as :func:`method_topk` layer by layer, but every cell's final-layer state
    (the state itself for direct, its linear maps' predictions for linear) goes through the
    unembedding in one chunked product (:func:`~lenslab.probes.logit_lens.top_k_decode`): the
    262k-row matrix is read once per 256 rows instead of once per layer and chunk of 32.
    """
    from lenslab.probes.logit_lens import top_k_decode

    if method not in BATCHED:
        raise ValueError(f"grid_topk decodes {BATCHED}, not {method!r}")
    if method == "linear":
        missing = artefacts.missing("linear", layers)
        if missing:
            raise ValueError(missing)
    seq = next(iter(states.values())).shape[0] if states else 0
    with torch.inference_mode():
        if method == "direct":  # one distribution per state: the same guess for every N
            finals = torch.stack([states[layer] for layer in layers])[:, :, None]
        else:
            finals = torch.stack(
                [artefacts.linear.predict(states[layer], layer)[:, :horizon] for layer in layers]  # type: ignore[union-attr]
            )
        decoded = top_k_decode(session, finals.reshape(-1, finals.shape[-1]), k)
    shape = (len(layers), seq, finals.shape[2], k)
    ids = decoded.ids.reshape(shape).expand(-1, -1, horizon, -1).cpu()
    probs = decoded.probs.reshape(shape).expand(-1, -1, horizon, -1).cpu()
    return ids, probs


def batched(method: str, protocol: str) -> bool:
    """Whether the grid of ``method`` under ``protocol`` is computed for all layers at once.

    Direct and linear: one decode of every cell (:func:`grid_topk`); fixed and learned when
    free-running: one KV-cached continuation of every cell (:func:`causal_grid`). Teacher-forced
    fixed / learned run layer by layer (:func:`method_topk`).
    """
    return method in BATCHED or (method in ("fixed", "learned") and protocol == FREE_RUNNING)


def causal_grid(
    session: ModelSession,
    method: str,
    layers: list[int],
    states: dict[int, Float[Tensor, "seq d_model"]],
    horizon: int,
    artefacts: Artefacts,
    k: int,
    progress: Progress = NO_PROGRESS,
    on_chunk: Callable[[Tensor, Tensor], None] | None = None,
) -> tuple[Int[Tensor, "layer seq horizon k"], Float[Tensor, "layer seq horizon k"]]:
    """Free-running top-k of every (layer, position) cell of fixed or learned in one continuation.

    The same numbers as :func:`method_topk` layer by layer (``protocol="free-running"``), with
    the context's prefix run once and every cell a row of one KV-cached batch
    (:func:`~lenslab.probes.future_lens.continuation.causal_grid_topk`).
    """
    if method == "fixed":
        return causal_grid_topk(
            session,
            layers,
            states,
            horizon,
            k,
            context_ids=fixed_context_ids(session),
            progress=progress,
            on_chunk=on_chunk,
        )
    if method != "learned":
        raise ValueError(f"causal_grid continues fixed or learned, not {method!r}")
    missing = artefacts.missing("learned", layers)
    if missing:
        raise ValueError(missing)
    soft = {}
    for layer in layers:
        prompt = artefacts.prompts[layer]
        multiplier = float(prompt.meta.get("multiplier", embedding_multiplier(session)))
        soft[layer] = SoftContext(prompt.vectors, multiplier)
    return causal_grid_topk(
        session, layers, states, horizon, k, soft_prompts=soft, progress=progress, on_chunk=on_chunk
    )


def method_topk(
    session: ModelSession,
    method: str,
    layer: int,
    states: Float[Tensor, "batch d_model"],
    horizon: int,
    artefacts: Artefacts,
    k: int,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    teacher: Int[Tensor, "batch fed"] | None = None,
    chunk: int = 32,
) -> tuple[Tensor, Tensor]:
    """Top-k ids and probabilities ``[batch, horizon, k]`` (CPU), computed in chunks of states."""
    ids, probs = [], []
    with torch.inference_mode():
        for begin in range(0, states.shape[0], chunk):
            part = states[begin : begin + chunk]
            fed = teacher[begin : begin + chunk] if teacher is not None else None
            if method == "direct":  # one distribution per state: the same guess for every N
                logits = session.decode_resid(part)[:, None]
            else:
                logits = method_logits(
                    session, method, layer, part, horizon, artefacts, protocol=protocol, teacher=fed
                )
            logits = logits.float()
            # top-k of the logits and exp(logit − logsumexp): no 262k-wide softmax is materialised
            values, top = logits.topk(k, dim=-1)
            values = (values - logits.logsumexp(-1, keepdim=True)).exp()
            ids.append(top.expand(-1, horizon, -1).cpu())
            probs.append(values.expand(-1, horizon, -1).cpu())
    return torch.cat(ids), torch.cat(probs)
