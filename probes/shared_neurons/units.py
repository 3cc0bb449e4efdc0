"""Unit-level model access for the shared-neuron analysis: weights, streamed scores, interventions.

A unit is one MLP hidden activation (:func:`lenslab.models.hooknames.mlp_hidden`); a head's
output is read at :func:`lenslab.models.hooknames.attn_heads`. Every forward goes through the
session and stops at the final norm, so the 262k-wide unembedding is never computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import to_numpy
from lenslab.probes.shared_neurons.stats import matched_samples
from lenslab.probes.shared_neurons.tasks import TaskItem
from lenslab.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from torch import Tensor


# -------------------------------------------------------------------------------- model utilities
def mlp_width(session: ModelSession) -> int:
    """Number of MLP units per layer (``d_mlp``)."""
    return int(session.cfg.d_mlp)


def _in_out_weight(module: Any) -> Tensor:
    """The module's weight as an (in, out) matrix: nn.Linear stores (out, in), GPT-2's Conv1D (in, out)."""
    weight = module.weight
    return weight.T if isinstance(module, torch.nn.Linear) else weight


def unit_output_weight(session: ModelSession, layer: int) -> Float[Tensor, " unit"]:
    """Mean |output weight| of every MLP unit of ``layer`` (StreetMath's |W| column mean)."""
    down = _in_out_weight(session.block_component(layer, "mlp.out"))
    return down.detach().float().abs().mean(-1)


def head_output_weight(session: ModelSession, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """The attention output projection of ``layer`` split per head."""
    o_proj = _in_out_weight(session.block_component(layer, "attn.o"))
    n_heads = int(session.cfg.n_heads)
    return o_proj.detach().reshape(n_heads, -1, o_proj.shape[-1])


def describe_architecture(session: ModelSession) -> str:
    """A one-line description used in mismatch messages."""
    return (
        f"{session.model_id} ({session.architecture}, {session.n_layers} layers, "
        f"{mlp_width(session)} MLP units, {int(session.cfg.n_heads)} heads, d_model {session.d_model})"
    )


def check_same_architecture(session_a: ModelSession, session_b: ModelSession) -> None:
    """Refuse to compare units of models whose units do not correspond one to one."""
    facts_a = (
        session_a.architecture,
        session_a.n_layers,
        mlp_width(session_a),
        int(session_a.cfg.n_heads),
        session_a.d_model,
    )
    facts_b = (
        session_b.architecture,
        session_b.n_layers,
        mlp_width(session_b),
        int(session_b.cfg.n_heads),
        session_b.d_model,
    )
    if facts_a != facts_b:
        raise ValueError(
            "cannot compare units across different architectures: "
            f"{describe_architecture(session_a)} vs {describe_architecture(session_b)}; "
            "choose a model of the same architecture and size (e.g. a fine-tuned copy)"
        )


@contextmanager
def perturbed_weights(session: ModelSession, scale: float, seed: int = 0) -> Iterator[ModelSession]:
    """Temporarily add seeded Gaussian noise (``scale`` × each matrix's std) to the block weights.

    Only 2-D weights without a vocabulary dimension are touched (embeddings and unembedding stay
    as they are), so the extra memory is one copy of the block matrices (≈0.4 GB for Gemma 3
    270M), held only inside the ``with``; the originals are copied back bit-exactly on exit, also
    after an exception. Holds the session lock throughout so nobody sees the perturbed model.
    """
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"noise scale must be a finite number ≥ 0, got {scale}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    saved: list[tuple[torch.nn.Parameter, Tensor]] = []
    with session.lock.exclusive():  # no yield to other jobs while the weights are perturbed
        try:
            with torch.no_grad():
                for _, param in sorted(session.named_weights(), key=lambda kv: kv[0]):
                    if param.ndim != 2 or session.d_vocab in param.shape:
                        continue
                    saved.append((param, param.detach().clone()))
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                    param.add_(
                        (scale * param.detach().float().std() * noise.to(param.device)).to(param.dtype)
                    )
            yield session
        finally:
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)


# ----------------------------------------------------------------------------------- forward passes
@dataclass(frozen=True)
class EncodedItem:
    """Token ids of prompt (+ answer) and where the prompt ends."""

    ids: list[int]
    prompt_len: int
    answer_len: int


def encode_items(session: ModelSession, items: Sequence[TaskItem], with_answer: bool) -> list[EncodedItem]:
    """Tokenize prompts (BOS first) and, if asked, the expected answers appended without BOS."""
    encoded = []
    for item in items:
        prompt_ids = session.tokenize(item.prompt)[0].tolist()
        answer_ids = (
            session.tokenizer(item.answer, add_special_tokens=False)["input_ids"] if with_answer else []
        )
        if with_answer and not answer_ids:
            raise ValueError(
                f"the prompt {item.prompt[-40:]!r} has no expected answer: the causal check needs one"
            )
        ids = prompt_ids + list(answer_ids)
        if len(ids) > session.max_tokens:
            raise ValueError(
                f"a prompt with its answer is {len(ids)} tokens; the limit is {session.max_tokens}"
            )
        encoded.append(EncodedItem(ids, len(prompt_ids), len(answer_ids)))
    return encoded


def _batches(
    session: ModelSession, encoded: Sequence[EncodedItem], batch_size: int
) -> Iterator[tuple[list[EncodedItem], Int[Tensor, "batch seq"]]]:
    """Right-padded token batches of ``encoded`` on the model's device.

    With causal attention, right padding never changes the real positions' activations, so no
    attention mask is needed; callers mask the padded positions out of their statistics.
    """
    pad_id = session.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    for start in range(0, len(encoded), batch_size):
        chunk = list(encoded[start : start + batch_size])
        width = max(len(e.ids) for e in chunk)
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, item in enumerate(chunk):
            tokens[row, : len(item.ids)] = torch.tensor(item.ids)
        yield chunk, tokens.to(session.device)


def _last_resid(
    session: ModelSession, tokens: Int[Tensor, "batch seq"], hooks: Sequence[tuple[str, Callable]]
) -> Float[Tensor, "batch seq d_model"]:
    """The last residual stream (the final norm's input) with ``hooks`` live; the unembedding never runs."""
    return session.capture(tokens, [hooknames.FINAL_NORM_IN], hooks=hooks)[hooknames.FINAL_NORM_IN]


MAX_GROUPS = 64  # prompts are summed into at most this many groups (the bootstrap's resampling units)


@dataclass
class UnitStats:
    """Streamed per-unit sums for one prompt set, kept per prompt group (float64, model's device).

    Prompt ``i`` is summed into group ``i % groups``: with at most :data:`MAX_GROUPS` prompts every
    prompt is its own group, so a bootstrap over groups is a bootstrap over prompts; larger sets
    keep memory at O(groups × layers × units) and resample groups of independent prompts.
    """

    abs_all: Tensor  # [group, layer, unit] Σ |act| over prompt tokens (BOS excluded)
    abs_answer: Tensor  # [group, layer, unit] Σ |act| at the answer position (last prompt token)
    head_all: Tensor  # [group, layer, head] Σ ‖z_h W_O^h‖ over prompt tokens
    head_answer: Tensor  # [group, layer, head] the same at the answer position
    tokens_all: Tensor  # [group] prompt tokens summed (BOS excluded)
    tokens_answer: Tensor  # [group] answer positions summed (one per prompt)
    signed_all: Tensor  # [layer, unit] Σ act over prompt tokens (for mean ablation)
    seconds: float = 0.0

    @classmethod
    def empty(cls, session: ModelSession, n_prompts: int) -> UnitStats:
        """Zero sums sized for ``n_prompts`` prompts on ``session``'s model."""
        groups = max(1, min(n_prompts, MAX_GROUPS))
        layers, units, heads = session.n_layers, mlp_width(session), int(session.cfg.n_heads)
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=session.device)  # noqa: E731
        return cls(
            zeros(groups, layers, units), zeros(groups, layers, units),
            zeros(groups, layers, heads), zeros(groups, layers, heads),
            zeros(groups), zeros(groups), zeros(layers, units),
        )  # fmt: skip

    @property
    def n_groups(self) -> int:
        """Number of prompt groups (= prompts when there are at most :data:`MAX_GROUPS`)."""
        return int(self.tokens_all.shape[0])

    def _sums(self, positions: str, heads: bool) -> tuple[Tensor, Tensor]:
        if positions not in ("all", "answer"):
            raise ValueError(f"positions must be 'all' or 'answer', got {positions!r}")
        if positions == "all":
            return (self.head_all if heads else self.abs_all), self.tokens_all
        return (self.head_answer if heads else self.abs_answer), self.tokens_answer

    def mean_abs(self, positions: str) -> Float[Tensor, "layer unit"]:
        """Mean |activation| per unit over ``positions`` ('all' or 'answer'), pooled over prompts."""
        sums, counts = self._sums(positions, heads=False)
        return sums.sum(0) / counts.sum()

    def head_mean(self, positions: str) -> Float[Tensor, "layer head"]:
        """Mean head output norm over ``positions``, pooled over prompts."""
        sums, counts = self._sums(positions, heads=True)
        return sums.sum(0) / counts.sum()

    def grouped(self, positions: str, heads: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-group sums ``[group, layer, unit|head]`` and counts ``[group]`` as float64 numpy."""
        sums, counts = self._sums(positions, heads)
        return to_numpy(sums).astype(np.float64), to_numpy(counts).astype(np.float64)

    @property
    def total_tokens(self) -> int:
        """Prompt tokens scored (BOS excluded), all groups."""
        return int(self.tokens_all.sum().item())


def _reader_hooks(
    session: ModelSession, stats: UnitStats, masks: dict[str, Tensor]
) -> list[tuple[str, Callable]]:
    """Hooks that add each batch's masked |activations| into ``stats`` (per prompt group).

    ``masks`` holds, for the current batch, ``all`` and ``answer`` position masks [batch, seq]
    and ``group`` (the group index of every row); they are set before each forward.
    """
    n_heads = int(session.cfg.n_heads)
    w_o = [head_output_weight(session, layer) for layer in range(session.n_layers)]

    def mlp_reader(layer: int) -> Callable:
        def read(tensor: Tensor, *, hook: Any) -> None:
            act = tensor.float()
            group = masks["group"]
            stats.abs_all[:, layer].index_add_(
                0, group, torch.einsum("bs,bsu->bu", masks["all"], act.abs()).double()
            )
            stats.abs_answer[:, layer].index_add_(
                0, group, torch.einsum("bs,bsu->bu", masks["answer"], act.abs()).double()
            )
            stats.signed_all[layer] += torch.einsum("bs,bsu->u", masks["all"], act).double()

        return read

    def head_reader(layer: int) -> Callable:
        def read(tensor: Tensor, *, hook: Any) -> None:
            z = tensor.float().reshape(*tensor.shape[:2], n_heads, -1)
            norms = torch.einsum("bshd,hdm->bshm", z, w_o[layer].float()).norm(dim=-1)
            group = masks["group"]
            stats.head_all[:, layer].index_add_(
                0, group, torch.einsum("bs,bsh->bh", masks["all"], norms).double()
            )
            stats.head_answer[:, layer].index_add_(
                0, group, torch.einsum("bs,bsh->bh", masks["answer"], norms).double()
            )

        return read

    hooks = [(hooknames.mlp_hidden(layer), mlp_reader(layer)) for layer in range(session.n_layers)]
    hooks += [(hooknames.attn_heads(layer), head_reader(layer)) for layer in range(session.n_layers)]
    return hooks


def _set_masks(
    masks: dict[str, Tensor],
    stats: UnitStats,
    chunk: Sequence[EncodedItem],
    first: int,
    shape: torch.Size,
    device: Any,
) -> None:
    """Position masks and group indices of one batch whose first item is item number ``first``."""
    all_mask = torch.zeros(shape, device=device)
    answer_mask = torch.zeros(shape, device=device)
    for row, item in enumerate(chunk):
        all_mask[row, 1 : item.prompt_len] = 1.0  # BOS excluded; answer tokens never counted
        answer_mask[row, item.prompt_len - 1] = 1.0
    group = torch.arange(first, first + len(chunk), device=device) % stats.n_groups
    masks["all"], masks["answer"], masks["group"] = all_mask, answer_mask, group
    stats.tokens_all.index_add_(0, group, all_mask.sum(-1).double())
    stats.tokens_answer.index_add_(0, group, answer_mask.sum(-1).double())


def unit_statistics(
    session: ModelSession,
    items: Sequence[TaskItem],
    batch_size: int = 8,
    progress: Progress = NO_PROGRESS,
    span: tuple[float, float] = (0.0, 1.0),
) -> UnitStats:
    """Stream |activation| sums of every MLP unit and head over ``items`` (prompts only).

    Only the MLP-hidden and head-output hooks are read, each batch is reduced inside its hook and
    dropped, and the forward stops before the unembedding: memory stays O(groups × layers × units).
    """
    encoded = encode_items(session, items, with_answer=False)
    stats = UnitStats.empty(session, len(encoded))
    masks: dict[str, Tensor] = {}
    hooks = _reader_hooks(session, stats, masks)
    started = time.perf_counter()
    done = 0
    with session.lock:
        for chunk, tokens in _batches(session, encoded, batch_size):
            _set_masks(masks, stats, chunk, done, tokens.shape, session.device)
            _last_resid(session, tokens, hooks)
            done += len(chunk)
            progress(
                span[0] + (span[1] - span[0]) * done / len(encoded), f"scored {done}/{len(encoded)} prompts"
            )
    stats.seconds = time.perf_counter() - started
    if stats.total_tokens == 0:
        raise ValueError("the prompts have no tokens besides BOS: nothing to score")
    return stats


def unit_weights(session: ModelSession, score: str) -> Float[np.ndarray, "layer unit"] | None:
    """Per-unit score multiplier: the mean |output weight| for ``score='weighted'``, else None."""
    if score != "weighted":
        return None
    weights = torch.stack([unit_output_weight(session, layer).cpu() for layer in range(session.n_layers)])
    return to_numpy(weights).astype(np.float64)


def unit_scores(
    session: ModelSession, stats: UnitStats, positions: str, score: str
) -> Float[np.ndarray, "layer unit"]:
    """Per-unit scores: mean |activation|, optionally × mean |output weight| (StreetMath)."""
    scores = stats.mean_abs(positions).float()
    if score == "weighted":
        weights = torch.stack(
            [unit_output_weight(session, layer).to(scores.device) for layer in range(session.n_layers)]
        )
        scores = scores * weights
    return to_numpy(scores).astype(np.float32)


def intervention_hooks(
    unit_groups: dict[int, Sequence[int]],
    mode: str,
    *,
    alpha: float = 2.0,
    means: Float[Tensor, "layer unit"] | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks that zero, mean-ablate or amplify (×``alpha``) the given units of each layer's MLP."""
    if mode not in ("zero", "mean", "amplify"):
        raise ValueError(f"intervention must be 'zero', 'mean' or 'amplify', got {mode!r}")
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs the units' mean activations")
    hooks = []
    for layer, units in sorted(unit_groups.items()):
        if len(units) == 0:
            continue
        index = torch.as_tensor(list(units), dtype=torch.long)

        def edit(tensor: Tensor, *, hook: Any, layer: int = layer, index: Tensor = index) -> Tensor:
            out = tensor.clone()
            idx = index.to(tensor.device)
            if mode == "zero":
                out[..., idx] = 0
            elif mode == "mean":
                out[..., idx] = means[layer, idx.to(means.device)].to(
                    device=tensor.device, dtype=tensor.dtype
                )
            else:
                out[..., idx] = tensor[..., idx] * alpha
            return out

        hooks.append((hooknames.mlp_hidden(layer), edit))
    return hooks


@dataclass(frozen=True)
class AnswerScores:
    """Teacher-forced log-prob of each item's expected answer and whether greedy decoding gives it."""

    logprob: Float[np.ndarray, " item"]
    correct: Float[np.ndarray, " item"]


def answer_scores(
    session: ModelSession,
    encoded: Sequence[EncodedItem],
    hooks: Sequence[tuple[str, Callable]] = (),
    batch_size: int = 8,
    collect: UnitStats | None = None,
) -> AnswerScores:
    """Log p(answer | prompt) (summed over answer tokens) and exact greedy match, with ``hooks`` live.

    Only the answer-predicting positions are decoded (final norm + unembedding), never the full
    [batch, seq, vocab] logits. With ``collect`` (and no intervention hooks), the same forward
    also adds the prompt positions' unit statistics into it: with causal attention the appended
    answer tokens never change the prompt positions, so one pass serves both purposes.
    """
    if collect is not None and hooks:
        raise ValueError("unit statistics are collected only from the unmodified model (no hooks)")
    masks: dict[str, Tensor] = {}
    readers = _reader_hooks(session, collect, masks) if collect is not None else []
    logprobs, correct = [], []
    done = 0
    with session.lock:
        for chunk, tokens in _batches(session, encoded, batch_size):
            if collect is not None:
                _set_masks(masks, collect, chunk, done, tokens.shape, session.device)
            resid = _last_resid(session, tokens, [*hooks, *readers])
            done += len(chunk)
            rows = [
                torch.arange(item.prompt_len - 1, item.prompt_len - 1 + item.answer_len, device=resid.device)
                for item in chunk
            ]
            # one unembedding for the whole batch: each call streams all of W_U from memory
            decoded = session.decode_resid(torch.cat([resid[row, p] for row, p in enumerate(rows)]))
            for row, (positions, logits) in enumerate(
                zip(rows, decoded.split([len(p) for p in rows]), strict=True)
            ):
                targets = tokens[row, positions + 1]
                log_probs = logits.float().log_softmax(-1)
                logprobs.append(log_probs.gather(-1, targets[:, None]).sum().item())
                correct.append(float(bool((log_probs.argmax(-1) == targets).all())))
    return AnswerScores(np.asarray(logprobs, dtype=np.float64), np.asarray(correct, dtype=np.float64))


def unit_groups(
    top_a: Int[np.ndarray, "layer k"],
    top_b: Int[np.ndarray, "layer k"],
    magnitude: Float[np.ndarray, "layer unit"],
    seed: int,
) -> dict[str, dict[int, list[int]]]:
    """Per-layer unit groups for the causal test: shared, A-only, B-only and two matched controls.

    ``random-A`` (``random-B``) has one unit for every A-only (B-only) unit, drawn (seeded) from
    units in neither top set at the nearest rank by ``magnitude``; both controls draw jointly,
    without replacement, from that one pool (see :func:`matched_samples`). ``magnitude`` should
    be measured on prompts that did not select the units (the probe uses the control task):
    ranked by the selection score itself, the top sets fill the strongest ranks by definition
    and no free unit of matching rank is left.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[int, list[int]]] = {
        name: {} for name in ("shared", "A-only", "B-only", "random-A", "random-B")
    }
    for layer, (row_a, row_b) in enumerate(zip(top_a.tolist(), top_b.tolist(), strict=True)):
        set_a, set_b = set(row_a), set(row_b)
        groups["shared"][layer] = sorted(set_a & set_b)
        groups["A-only"][layer] = sorted(set_a - set_b)
        groups["B-only"][layer] = sorted(set_b - set_a)
        controls = matched_samples(
            {"random-A": groups["A-only"][layer], "random-B": groups["B-only"][layer]},
            set_a | set_b,
            magnitude[layer],
            rng,
        )
        groups["random-A"][layer] = controls["random-A"]
        groups["random-B"][layer] = controls["random-B"]
    return groups
