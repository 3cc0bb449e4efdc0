"""Shared-neuron analysis: which MLP units two tasks (or two models) share, and what they do.

Method (after "Do LLMs and VLMs Share Neurons for Inference?" and StreetMath, see
``shared/papers/README.md`` §4), defined cleanly:

1. **Unit** = one hidden activation of a block's MLP, the input of the down projection: for gated
   MLPs (Gemma, Llama) the product ``act(gate(x)) · up(x)``, for GPT-2 the post-GELU hidden.
   The TransformerBridge exposes it as ``blocks.{l}.mlp.out.hook_in`` for all three families.
   Attention heads are a second unit type, scored by the norm of their output ``z_h W_O^h``.
2. **Score** per set: mean |activation| over the prompt tokens (BOS excluded: its activations are
   outliers that would swamp every mean) or over the answer position only (the last prompt token,
   which predicts the answer). Optionally weighted by the mean |output weight| of the unit
   (StreetMath's importance: |W| column mean × activation). Means are streamed over right-padded
   batches with padding masked out, and the forward stops before the 262k-token unembedding;
   no activation cache is kept.
3. **Selection and overlap**: top-k units per layer per set; per layer |A∩B|/k, Jaccard, the
   count expected for two random k-subsets of n units, k²/n, and the hypergeometric p-value
   P(X ≥ observed). The overall p-value is exact: the per-layer hypergeometric laws convolved.
   Heads are selected globally (a layer has only a few).
4. **Causal check**: intervene on unit groups (shared, A-only, B-only, a random control of the
   A-only size drawn outside A∪B) by zeroing, mean-ablating (mean over both sets' tokens) or
   amplifying (×α), and measure the teacher-forced log-prob of the expected answer and greedy
   accuracy (every answer token is the argmax) on both sets, paired per prompt against the
   unmodified run.

Two-model mode compares one prompt set on two models of the same architecture (refusing
mismatches); the offline demo perturbs this model's block weights with seeded noise inside a
context manager that restores them bit-exactly (see :func:`perturbed_weights`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from scipy.stats import hypergeom

from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Config, Probe, Progress, Result, register, to_numpy
from lenslab.probes.plotting import label
from lenslab.probes.tasks import TaskItem, TaskSet, builtin_names, load_task_set

if TYPE_CHECKING:
    from torch import Tensor

PERTURBED = "perturbed"
CONDITIONS = ("none", "shared", "A-only", "B-only", "random")
COLOURS = {"A-only": "#1f77b4", "shared": "#9467bd", "B-only": "#ff7f0e", "random": "#7f7f7f"}


def mlp_hook(layer: int) -> str:
    """Hook name of the MLP hidden (the down projection's input) of block ``layer``."""
    return f"blocks.{layer}.mlp.out.hook_in"


def head_hook(layer: int) -> str:
    """Hook name of the per-head attention output ``z`` (the output projection's input)."""
    return f"blocks.{layer}.attn.o.hook_in"


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SharedNeuronsConfig(Config):
    """Settings of the shared-neuron analysis."""

    set_a: str = field(
        default="exact_arithmetic",
        metadata={
            "help": "prompt set A: a built-in name, a .txt/.jsonl path or 'prompt => answer' lines",
            "hidden": True,  # the app has its own set pickers
        },
    )
    set_b: str = field(
        default="approximate_arithmetic",
        metadata={"help": "prompt set B (ignored when comparing two models)", "hidden": True},
    )
    model_b: str = field(
        default="",
        metadata={
            "help": "compare two models on set A instead of two sets: 'perturbed' (a noise-perturbed "
            "copy of this model) or an HF folder / id of the same architecture; empty: compare sets",
            "hidden": True,
        },
    )
    noise_scale: float = field(
        default=0.05,
        metadata={
            "help": "noise of the perturbed copy, relative to each weight matrix's std",
            "min": 0.0,
            "max": 10.0,
        },
    )
    n_prompts: int = field(
        default=24, metadata={"help": "prompts per set (the first n)", "min": 2, "max": 2000}
    )
    positions: str = field(
        default="all",
        metadata={
            "help": "score over all prompt tokens (BOS excluded) or the answer position",
            "choices": ("all", "answer"),
        },
    )
    score: str = field(
        default="activation",
        metadata={
            "help": "mean |activation|, or weighted by the unit's mean |output weight| (StreetMath)",
            "choices": ("activation", "weighted"),
        },
    )
    top_fraction: float = field(
        default=0.01,
        metadata={"help": "fraction of units per layer taken as a set's top units", "min": 1e-4, "max": 0.5},
    )
    top_k: int = field(
        default=0, metadata={"help": "units per layer (overrides top fraction when > 0)", "min": 0}
    )
    head_fraction: float = field(
        default=0.1,
        metadata={"help": "fraction of all attention heads taken as top heads", "min": 0.01, "max": 0.5},
    )
    causal: bool = field(
        default=True, metadata={"help": "run the intervention test (needs expected answers)"}
    )
    intervention: str = field(
        default="zero",
        metadata={"help": "what to do to the chosen units", "choices": ("zero", "mean", "amplify")},
    )
    alpha: float = field(
        default=2.0,
        metadata={"help": "amplification factor (intervention 'amplify')", "min": -10.0, "max": 10.0},
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the built-in sets, random control and noise", "min": 0}
    )
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass", "min": 1, "max": 256})

    @classmethod
    def fast_for_tests(cls) -> SharedNeuronsConfig:
        """Small settings for the reliability tests."""
        return cls(n_prompts=4, causal=False)

    def validate(self, session: ModelSession) -> None:
        """Check numbers, that the sets resolve, and that k fits the MLP width."""
        super().validate(session)
        n_units = mlp_width(session)
        k = self.units_per_layer(n_units)
        if k >= n_units:
            raise ValueError(f"top units per layer ({k}) must be smaller than the MLP width ({n_units})")
        if not self.set_a.strip():
            raise ValueError("choose prompt set A")
        if not self.model_b.strip() and not self.set_b.strip():
            raise ValueError("choose prompt set B (or a second model to compare on set A)")

    def units_per_layer(self, n_units: int) -> int:
        """k: top units kept per layer (``top_k`` or ``top_fraction`` of ``n_units``, at least 1)."""
        return self.top_k if self.top_k > 0 else max(1, round(self.top_fraction * n_units))

    @property
    def mode(self) -> str:
        """'models' when a second model is named, else 'tasks'."""
        return "models" if self.model_b.strip() else "tasks"


# ----------------------------------------------------------------------------------- overlap maths
@dataclass(frozen=True)
class Overlap:
    """Overlap of two top-unit selections per layer, with the chance level."""

    count: Int[np.ndarray, " layer"]
    fraction: Float[np.ndarray, " layer"]  # |A∩B| / k
    jaccard: Float[np.ndarray, " layer"]
    expected: Float[np.ndarray, " layer"]  # k_a k_b / n for random subsets
    p_value: Float[np.ndarray, " layer"]  # P(X ≥ count), X hypergeometric
    total_fraction: float
    total_expected_fraction: float
    total_p_value: float


def expected_overlap(n: int, k_a: int, k_b: int) -> float:
    """Mean overlap of a random ``k_a``-subset and a random ``k_b``-subset of ``n`` units."""
    return k_a * k_b / n


def overlap_p_value(n: int, k_a: int, k_b: int, observed: int) -> float:
    """P(overlap ≥ ``observed``) for random subsets: the hypergeometric upper tail."""
    return float(hypergeom.sf(observed - 1, n, k_a, k_b))


def total_overlap_p_value(n: int, k_a: Sequence[int], k_b: Sequence[int], observed: int) -> float:
    """P(Σ_layers overlap ≥ ``observed``) with independent random subsets in every layer (exact)."""
    pmf = np.ones(1)
    for a, b in zip(k_a, k_b, strict=True):
        support = np.arange(min(a, b) + 1)
        pmf = np.convolve(pmf, hypergeom.pmf(support, n, a, b))
    return float(min(1.0, max(0.0, pmf[observed:].sum())))


def overlap_stats(top_a: Sequence[Sequence[int]], top_b: Sequence[Sequence[int]], n: int) -> Overlap:
    """Per-layer overlap, Jaccard, chance level and p-values of two top-unit selections of ``n`` units."""
    if len(top_a) != len(top_b) or not len(top_a):
        raise ValueError("both selections need the same, non-zero number of layers")
    counts, fractions, jaccards, expected, p_values, sizes_a, sizes_b = [], [], [], [], [], [], []
    for units_a, units_b in zip(top_a, top_b, strict=True):
        set_a, set_b = {int(u) for u in units_a}, {int(u) for u in units_b}
        if not set_a or not set_b:
            raise ValueError("every layer needs at least one selected unit in both sets")
        if max(set_a | set_b) >= n or min(set_a | set_b) < 0:
            raise ValueError(f"unit index out of range for {n} units")
        shared = len(set_a & set_b)
        counts.append(shared)
        fractions.append(shared / min(len(set_a), len(set_b)))
        jaccards.append(shared / len(set_a | set_b))
        expected.append(expected_overlap(n, len(set_a), len(set_b)))
        p_values.append(overlap_p_value(n, len(set_a), len(set_b), shared))
        sizes_a.append(len(set_a))
        sizes_b.append(len(set_b))
    total = int(sum(counts))
    denominator = sum(min(a, b) for a, b in zip(sizes_a, sizes_b, strict=True))
    return Overlap(
        count=np.asarray(counts, dtype=np.int64),
        fraction=np.asarray(fractions, dtype=np.float64),
        jaccard=np.asarray(jaccards, dtype=np.float64),
        expected=np.asarray(expected, dtype=np.float64),
        p_value=np.asarray(p_values, dtype=np.float64),
        total_fraction=total / denominator,
        total_expected_fraction=float(sum(expected)) / denominator,
        total_p_value=total_overlap_p_value(n, sizes_a, sizes_b, total),
    )


def top_units(scores: Float[np.ndarray, "layer unit"], k: int) -> Int[np.ndarray, "layer k"]:
    """Indices of the ``k`` highest-scoring units in every layer, best first (ties: lower index)."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k={k} must be between 1 and the number of units {scores.shape[-1]}")
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[:, :k].astype(np.int64)


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
    down = _in_out_weight(session.bridge.blocks[layer].mlp.out.original_component)
    return down.detach().float().abs().mean(-1)


def head_output_weight(session: ModelSession, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """The attention output projection of ``layer`` split per head."""
    o_proj = _in_out_weight(session.bridge.blocks[layer].attn.o.original_component)
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
    with session.lock:
        try:
            with torch.no_grad():
                for _, param in sorted(
                    session.bridge.original_model.named_parameters(), key=lambda kv: kv[0]
                ):
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


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (before the unembedding)."""


def _run_until_final_norm(
    session: ModelSession, tokens: Int[Tensor, "batch seq"], hooks: list[tuple[str, Callable]]
) -> Float[Tensor, "batch seq d_model"]:
    """Forward with ``hooks`` attached, stopping at the final norm; returns the last residual."""
    captured: dict[str, Tensor] = {}

    def stop(tensor: Tensor, *, hook: Any) -> None:
        captured["resid"] = tensor
        raise _StopForward

    with (
        session.hooks([*hooks, ("ln_final.hook_in", stop)]) as bridge,
        torch.inference_mode(),
        suppress(_StopForward),
    ):
        bridge(tokens)
    if "resid" not in captured:
        raise RuntimeError("the forward pass never reached the final norm")
    return captured["resid"]


@dataclass
class UnitStats:
    """Streamed per-unit sums for one prompt set (all float64, on the model's device)."""

    abs_all: Tensor  # [layer, unit] Σ |act| over prompt tokens (BOS excluded)
    signed_all: Tensor  # [layer, unit] Σ act over the same tokens (for mean ablation)
    abs_answer: Tensor  # [layer, unit] Σ |act| at the answer position
    head_all: Tensor  # [layer, head] Σ ‖z_h W_O^h‖
    head_answer: Tensor
    tokens_all: int = 0
    tokens_answer: int = 0
    seconds: float = 0.0

    def mean_abs(self, positions: str) -> Float[Tensor, "layer unit"]:
        """Mean |activation| per unit over ``positions`` ('all' or 'answer')."""
        return self.abs_all / self.tokens_all if positions == "all" else self.abs_answer / self.tokens_answer

    def head_mean(self, positions: str) -> Float[Tensor, "layer head"]:
        """Mean head output norm over ``positions``."""
        return (
            self.head_all / self.tokens_all if positions == "all" else self.head_answer / self.tokens_answer
        )


def unit_statistics(
    session: ModelSession,
    items: Sequence[TaskItem],
    batch_size: int = 8,
    progress: Progress = NO_PROGRESS,
    span: tuple[float, float] = (0.0, 1.0),
) -> UnitStats:
    """Stream |activation| sums of every MLP unit and head over ``items`` (prompts only).

    Only the MLP-hidden and head-output hooks are read, each batch is reduced inside its hook and
    dropped, and the forward stops before the unembedding: memory stays O(layers × units).
    """
    layers = range(session.n_layers)
    n_units, n_heads, device = mlp_width(session), int(session.cfg.n_heads), session.device
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
    stats = UnitStats(
        zeros(len(layers), n_units), zeros(len(layers), n_units), zeros(len(layers), n_units),
        zeros(len(layers), n_heads), zeros(len(layers), n_heads),
    )  # fmt: skip
    encoded = encode_items(session, items, with_answer=False)
    masks: dict[str, Tensor] = {}
    w_o = [head_output_weight(session, layer) for layer in layers]

    def mlp_reader(layer: int) -> Callable:
        def read(tensor: Tensor, *, hook: Any) -> None:
            act = tensor.float()
            stats.abs_all[layer] += torch.einsum("bs,bsu->u", masks["all"], act.abs()).double()
            stats.signed_all[layer] += torch.einsum("bs,bsu->u", masks["all"], act).double()
            stats.abs_answer[layer] += torch.einsum("bs,bsu->u", masks["answer"], act.abs()).double()

        return read

    def head_reader(layer: int) -> Callable:
        def read(tensor: Tensor, *, hook: Any) -> None:
            z = tensor.float().reshape(*tensor.shape[:2], n_heads, -1)
            norms = torch.einsum("bshd,hdm->bshm", z, w_o[layer].float()).norm(dim=-1)
            stats.head_all[layer] += torch.einsum("bs,bsh->h", masks["all"], norms).double()
            stats.head_answer[layer] += torch.einsum("bs,bsh->h", masks["answer"], norms).double()

        return read

    hooks = [(mlp_hook(layer), mlp_reader(layer)) for layer in layers]
    hooks += [(head_hook(layer), head_reader(layer)) for layer in layers]
    started = time.perf_counter()
    done = 0
    with session.lock:
        for chunk, tokens in _batches(session, encoded, batch_size):
            all_mask = torch.zeros(tokens.shape, device=device)
            answer_mask = torch.zeros(tokens.shape, device=device)
            for row, item in enumerate(chunk):
                all_mask[row, 1 : item.prompt_len] = 1.0  # BOS excluded
                answer_mask[row, item.prompt_len - 1] = 1.0
            masks["all"], masks["answer"] = all_mask, answer_mask
            _run_until_final_norm(session, tokens, hooks)
            stats.tokens_all += int(all_mask.sum().item())
            stats.tokens_answer += len(chunk)
            done += len(chunk)
            progress(
                span[0] + (span[1] - span[0]) * done / len(encoded), f"scored {done}/{len(encoded)} prompts"
            )
    stats.seconds = time.perf_counter() - started
    if stats.tokens_all == 0:
        raise ValueError("the prompts have no tokens besides BOS: nothing to score")
    return stats


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

        hooks.append((mlp_hook(layer), edit))
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
) -> AnswerScores:
    """Log p(answer | prompt) (summed over answer tokens) and exact greedy match, with ``hooks`` live.

    Only the answer-predicting positions are decoded (final norm + unembedding), never the full
    [batch, seq, vocab] logits.
    """
    logprobs, correct = [], []
    with session.lock:
        for chunk, tokens in _batches(session, encoded, batch_size):
            resid = _run_until_final_norm(session, tokens, list(hooks))
            for row, item in enumerate(chunk):
                positions = torch.arange(
                    item.prompt_len - 1, item.prompt_len - 1 + item.answer_len, device=resid.device
                )
                targets = tokens[row, positions + 1]
                log_probs = session.decode_resid(resid[row, positions]).float().log_softmax(-1)
                logprobs.append(log_probs.gather(-1, targets[:, None]).sum().item())
                correct.append(float(bool((log_probs.argmax(-1) == targets).all())))
    return AnswerScores(np.asarray(logprobs, dtype=np.float64), np.asarray(correct, dtype=np.float64))


def unit_groups(
    top_a: Int[np.ndarray, "layer k"], top_b: Int[np.ndarray, "layer k"], n_units: int, seed: int
) -> dict[str, dict[int, list[int]]]:
    """Per-layer unit groups for the causal test: shared, A-only, B-only and a random control.

    The control has the A-only size in every layer and is drawn (seeded) from units in neither
    top set, so it measures what removing that many *unselected* units does.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[int, list[int]]] = {"shared": {}, "A-only": {}, "B-only": {}, "random": {}}
    for layer, (row_a, row_b) in enumerate(zip(top_a.tolist(), top_b.tolist(), strict=True)):
        set_a, set_b = set(row_a), set(row_b)
        groups["shared"][layer] = sorted(set_a & set_b)
        groups["A-only"][layer] = sorted(set_a - set_b)
        groups["B-only"][layer] = sorted(set_b - set_a)
        outside = np.setdiff1d(np.arange(n_units), np.asarray(sorted(set_a | set_b), dtype=np.int64))
        size = min(len(groups["A-only"][layer]), len(outside))
        groups["random"][layer] = sorted(int(u) for u in rng.choice(outside, size=size, replace=False))
    return groups


# ------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class SharedNeuronsResult(Result):
    """Top units of two sets (or models), their overlap against chance, and the causal test."""

    probe = "shared_neurons"
    config: SharedNeuronsConfig
    mode: str  # "tasks" (set A vs set B, one model) or "models" (model A vs model B, set A)
    label_a: str
    label_b: str
    prompts_a: list[str]
    answers_a: list[str]
    prompts_b: list[str]
    answers_b: list[str]
    n_units: int
    k: int
    mlp_scores_a: Float[np.ndarray, "layer unit"]
    mlp_scores_b: Float[np.ndarray, "layer unit"]
    top_a: Int[np.ndarray, "layer k"]
    top_b: Int[np.ndarray, "layer k"]
    overlap_count: Int[np.ndarray, " layer"]
    overlap_fraction: Float[np.ndarray, " layer"]
    jaccard: Float[np.ndarray, " layer"]
    expected_count: Float[np.ndarray, " layer"]
    p_value: Float[np.ndarray, " layer"]
    shared_fraction: float
    chance_fraction: float
    total_p_value: float
    head_scores_a: Float[np.ndarray, "layer head"]
    head_scores_b: Float[np.ndarray, "layer head"]
    head_top_a: Int[np.ndarray, " k_heads"]  # flat indices layer * n_heads + head
    head_top_b: Int[np.ndarray, " k_heads"]
    head_overlap: int
    head_expected: float
    head_p_value: float
    conditions: list[str]  # "none" first (the unmodified model)
    eval_sets: list[str]
    group_sizes: Int[np.ndarray, " condition"]  # units changed per condition (all layers)
    logprob: Float[np.ndarray, "condition set item"]  # NaN-padded where a set has fewer items
    correct: Float[np.ndarray, "condition set item"]
    prompts_per_second: float
    seconds: float

    # ------------------------------------------------------------------------------ statistics
    @property
    def n_layers(self) -> int:
        """Number of layers scored."""
        return int(self.mlp_scores_a.shape[0])

    def causal_table(self) -> list[dict[str, Any]]:
        """Per condition and set: accuracy, mean log-prob, and the paired change vs no intervention ± SEM."""
        rows = []
        if not self.conditions:
            return rows
        for c, condition in enumerate(self.conditions):
            for s, set_name in enumerate(self.eval_sets):
                valid = ~np.isnan(self.logprob[0, s])
                delta = self.logprob[c, s, valid] - self.logprob[0, s, valid]
                delta_acc = self.correct[c, s, valid] - self.correct[0, s, valid]
                n = int(valid.sum())
                rows.append(
                    {
                        "condition": condition,
                        "set": set_name,
                        "units": int(self.group_sizes[c]),
                        "accuracy": float(self.correct[c, s, valid].mean()),
                        "logprob": float(self.logprob[c, s, valid].mean()),
                        "delta_logprob": float(delta.mean()),
                        "delta_logprob_sem": _sem(delta),
                        "delta_accuracy": float(delta_acc.mean()),
                        "delta_accuracy_sem": _sem(delta_acc),
                        "n": n,
                    }
                )
        return rows

    def dissociation(self) -> dict[str, float] | None:
        """StreetMath's test: Δlog-prob of A and of B when A-only (and B-only) units are changed."""
        if self.mode != "tasks" or "A-only" not in self.conditions or len(self.eval_sets) < 2:
            return None
        table = {(r["condition"], r["set"]): r for r in self.causal_table()}
        a, b = self.eval_sets[0], self.eval_sets[1]
        return {
            "A-only → ΔA": table["A-only", a]["delta_logprob"],
            "A-only → ΔB": table["A-only", b]["delta_logprob"],
            "B-only → ΔA": table["B-only", a]["delta_logprob"],
            "B-only → ΔB": table["B-only", b]["delta_logprob"],
            "random → ΔA": table["random", a]["delta_logprob"],
            "random → ΔB": table["random", b]["delta_logprob"],
        }

    def interpretation(self) -> str:
        """A plain-language reading of the overlap and of the dissociation test (markdown)."""
        a, b = self.label_a, self.label_b
        ratio = self.shared_fraction / max(self.chance_fraction, 1e-12)
        lines = [
            f"**Overlap.** {self.shared_fraction:.0%} of the top-{self.k} MLP units per layer are shared by "
            f"`{a}` and `{b}`, {ratio:.1f}× the {self.chance_fraction:.1%} expected for random sets "
            f"(p = {self.total_p_value:.2g}); {int((self.p_value < 0.01).sum())} of {self.n_layers} layers "
            "are individually above chance at p < 0.01."
        ]
        if self.conditions:
            table = {(r["condition"], r["set"]): r for r in self.causal_table()}
            what = {
                "zero": "Zeroing",
                "mean": "Mean-ablating",
                "amplify": f"Amplifying (×{self.config.alpha:g})",
            }
            for condition in self.conditions[1:]:
                rows = [(s, table[condition, s], table["none", s]) for s in self.eval_sets]
                parts = [
                    f"`{s}` {row['delta_logprob']:+.2f} ± {row['delta_logprob_sem']:.2f} "
                    f"(accuracy {base['accuracy']:.0%} → {row['accuracy']:.0%})"
                    for s, row, base in rows
                ]
                units = table[condition, self.eval_sets[0]]["units"]
                lines.append(
                    f"- {what[self.config.intervention]} the **{condition}** units ({units}) changes "
                    f"log p(answer) by " + ", ".join(parts)
                )
            gap = self.dissociation()
            if gap is not None:
                a_gap = gap["A-only → ΔA"] - gap["A-only → ΔB"]
                b_gap = gap["B-only → ΔB"] - gap["B-only → ΔA"]
                separates = a_gap < 0 and b_gap < 0
                lines.append(
                    f"**Dissociation.** A-only units hurt A {'more' if a_gap < 0 else 'less'} than B "
                    f"(ΔA − ΔB = {a_gap:+.2f}); B-only units hurt B {'more' if b_gap < 0 else 'less'} than A "
                    f"(ΔB − ΔA = {b_gap:+.2f}): the components "
                    + (
                        "**separate** in both directions."
                        if separates
                        else "do **not** separate in both directions."
                    )
                )
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Shared fraction vs chance, its p-value, baseline accuracies and the dissociation."""
        out: dict[str, Any] = {
            "shared fraction": self.shared_fraction,
            "chance": self.chance_fraction,
            "p-value": self.total_p_value,
            "units per layer": self.k,
        }
        if self.conditions:
            for s, set_name in enumerate(self.eval_sets):
                out[f"accuracy {set_name}"] = float(np.nanmean(self.correct[0, s]))
        gap = self.dissociation()
        if gap is not None:
            out["A-only ablation: ΔA − ΔB"] = gap["A-only → ΔA"] - gap["A-only → ΔB"]
        return out

    # -------------------------------------------------------------------------------- figures
    def figures(self) -> dict[str, go.Figure]:
        """Overlap vs chance by layer, rank heatmap by membership, Venn-style counts, causal bars."""
        figures = {
            "overlap": self._overlap_figure(),
            "membership": self._membership_figure(),
            "venn": self._venn_figure(),
            "heads": self._heads_figure(),
        }
        if self.conditions:
            figures["causal_logprob"] = self._causal_figure(
                "delta_logprob", "Δ log p(answer) vs no intervention"
            )
            figures["causal_accuracy"] = self._causal_figure("accuracy", "accuracy")
        return figures

    def _names(self) -> tuple[str, str]:
        return label(self.label_a), label(self.label_b)

    def _overlap_figure(self) -> go.Figure:
        layers = list(range(self.n_layers))
        chance = self.expected_count / self.k
        stars = ["★" if p < 0.01 else "" for p in self.p_value]
        fig = go.Figure()
        fig.add_bar(
            x=layers,
            y=self.overlap_fraction,
            name="|A∩B| / k",
            text=stars,
            textposition="outside",
            customdata=np.stack([self.overlap_count, self.p_value, self.jaccard], axis=-1),
            hovertemplate="layer %{x}<br>|A∩B|/k = %{y:.3f} (%{customdata[0]} units)"
            "<br>Jaccard %{customdata[2]:.3f}<br>p = %{customdata[1]:.2e}<extra></extra>",
            marker_color=COLOURS["shared"],
        )
        fig.add_scatter(
            x=layers, y=self.jaccard, mode="lines+markers", name="Jaccard", line={"color": "#2ca02c"}
        )
        fig.add_scatter(
            x=layers, y=chance, mode="lines", name="chance k/n", line={"dash": "dash", "color": "black"}
        )
        a, b = self._names()
        fig.update_layout(
            title=f"Top-{self.k} MLP units shared by {a} and {b}, per layer (★ p < 0.01 vs random sets)",
            xaxis_title="layer",
            yaxis_title="overlap",
            yaxis_range=[0, 1.08],
            template="plotly_white",
        )
        return fig

    def _membership_figure(self) -> go.Figure:
        a, b = self._names()
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=(f"top units of {a}", f"top units of {b}"), shared_yaxes=True
        )
        for col, (top, other, own_name) in enumerate(
            ((self.top_a, self.top_b, "A-only"), (self.top_b, self.top_a, "B-only")), start=1
        ):
            shared = np.stack([np.isin(top[layer], other[layer]) for layer in range(self.n_layers)])
            hover = [
                [
                    f"unit {unit} · {'shared' if s else own_name}"
                    for unit, s in zip(row_units, row_shared, strict=True)
                ]
                for row_units, row_shared in zip(top.tolist(), shared.tolist(), strict=True)
            ]
            fig.add_trace(
                go.Heatmap(
                    z=shared.astype(float),
                    x=list(range(1, self.k + 1)),
                    y=[f"L{layer}" for layer in range(self.n_layers)],
                    customdata=hover,
                    hovertemplate="%{y} rank %{x}<br>%{customdata}<extra></extra>",
                    colorscale=[[0, COLOURS[own_name]], [1, COLOURS["shared"]]],
                    zmin=0,
                    zmax=1,
                    showscale=False,
                    xgap=1,
                    ygap=1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="rank within layer")
        fig.update_layout(
            title="Top units by layer and rank: purple = in both top sets, blue/orange = one set only",
            template="plotly_white",
            height=max(320, 22 * self.n_layers + 160),
        )
        return fig

    def _venn_figure(self) -> go.Figure:
        layers = list(range(self.n_layers))
        shared = self.overlap_count
        only_a = np.asarray([len(set(self.top_a[layer]) - set(self.top_b[layer])) for layer in layers])
        only_b = np.asarray([len(set(self.top_b[layer]) - set(self.top_a[layer])) for layer in layers])
        a, b = self._names()
        fig = go.Figure()
        for name, values, colour in (
            (f"{a} only", only_a, COLOURS["A-only"]),
            ("shared", shared, COLOURS["shared"]),
            (f"{b} only", only_b, COLOURS["B-only"]),
        ):
            fig.add_bar(x=layers, y=values, name=f"{name} ({int(values.sum())})", marker_color=colour)
        fig.update_layout(
            barmode="stack",
            title=f"Venn counts per layer (A only | shared | B only): {int(only_a.sum())} | "
            f"{int(shared.sum())} | {int(only_b.sum())} units",
            xaxis_title="layer",
            yaxis_title="units",
            template="plotly_white",
        )
        return fig

    def _heads_figure(self) -> go.Figure:
        n_heads = self.head_scores_a.shape[1]
        membership = np.zeros(self.n_layers * n_heads)
        membership[self.head_top_a] += 1
        membership[self.head_top_b] += 2
        names = np.asarray(["", "A-only", "B-only", "shared"])[membership.astype(int)].reshape(
            self.n_layers, n_heads
        )
        a, b = self._names()
        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(f"head output norm · {a}", f"head output norm · {b}"),
            shared_yaxes=True,
        )
        for col, scores in enumerate((self.head_scores_a, self.head_scores_b), start=1):
            fig.add_trace(
                go.Heatmap(
                    z=scores,
                    x=[f"H{h}" for h in range(n_heads)],
                    y=[f"L{layer}" for layer in range(self.n_layers)],
                    text=names,
                    texttemplate="%{text}",
                    textfont={"size": 9},
                    colorscale="Blues",
                    showscale=col == 2,
                    hovertemplate="%{y} %{x}<br>mean ‖z W_O‖ = %{z:.3g}<br>%{text}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_layout(
            title=f"Attention heads: top {len(self.head_top_a)} per set, {self.head_overlap} shared "
            f"(chance {self.head_expected:.1f}, p = {self.head_p_value:.2g})",
            template="plotly_white",
            height=max(320, 22 * self.n_layers + 160),
        )
        return fig

    def _causal_figure(self, metric: str, axis: str) -> go.Figure:
        rows = self.causal_table()
        fig = go.Figure()
        shown = [c for c in self.conditions if metric != "delta_logprob" or c != "none"]
        for s, set_name in enumerate(self.eval_sets):
            picked = [next(r for r in rows if r["condition"] == c and r["set"] == set_name) for c in shown]
            if metric == "accuracy":
                values = [r["accuracy"] for r in picked]
                errors = [np.sqrt(r["accuracy"] * (1 - r["accuracy"]) / max(r["n"], 1)) for r in picked]
            else:
                values = [r[metric] for r in picked]
                errors = [r[f"{metric}_sem"] for r in picked]
            fig.add_bar(
                x=[f"{c} ({r['units']})" for c, r in zip(shown, picked, strict=True)],
                y=values,
                error_y={"type": "data", "array": errors, "visible": True},
                name=label(set_name),
                marker_color=[COLOURS["A-only"], COLOURS["B-only"]][s % 2],
            )
        what = {
            "zero": "zero-ablated",
            "mean": "mean-ablated",
            "amplify": f"amplified ×{self.config.alpha:g}",
        }
        fig.update_layout(
            barmode="group",
            title=f"Causal test: units {what[self.config.intervention]} (x: group, units changed); "
            "error bars: SEM over prompts",
            xaxis_title="units changed",
            yaxis_title=axis,
            template="plotly_white",
        )
        return fig


def _sem(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------- probe
def resolve_sets(config: SharedNeuronsConfig) -> tuple[TaskSet, TaskSet | None]:
    """Load set A and (in tasks mode) set B from the config."""
    set_a = load_task_set(config.set_a, n=config.n_prompts, seed=config.seed)
    set_b = (
        None if config.mode == "models" else load_task_set(config.set_b, n=config.n_prompts, seed=config.seed)
    )
    return set_a, set_b


def load_model_b(session: ModelSession, spec: str) -> ModelSession:
    """The second model named by ``spec`` (loaded with the same device and dtype), checked to match."""
    other = ModelSession.load(spec, device=session.device, dtype=session.dtype)
    check_same_architecture(session, other)
    return other


@register
class SharedNeurons(Probe[SharedNeuronsConfig, SharedNeuronsResult]):
    """Which MLP units two prompt sets (or two models) share, versus chance, and what they do."""

    name = "shared_neurons"
    title = "Shared neurons"
    description = (
        "Top MLP units per layer for two prompt sets (or two models), their overlap against the "
        "chance level, and an ablation test of shared vs set-specific units."
    )
    config_cls = SharedNeuronsConfig
    result_cls = SharedNeuronsResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
    ) -> SharedNeuronsResult:
        """Run the analysis; ``prompt`` is only a description (the sets come from ``config``).

        In two-model mode ``config.model_b`` names the second model: ``'perturbed'`` builds the
        noise copy in place (see :func:`perturbed_weights`), anything else is loaded.
        """
        config.validate(session)
        if config.mode == "models" and config.model_b.strip() != PERTURBED:
            progress(0.0, f"loading {config.model_b}")
            return self.compare(
                session, load_model_b(session, config.model_b.strip()), config, progress, prompt
            )
        return self.compare(session, None, config, progress, prompt)

    def compare(
        self,
        session: ModelSession,
        session_b: ModelSession | None,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
        description: str = "",
    ) -> SharedNeuronsResult:
        """The analysis with an explicit second model (``None``: set B, or the perturbed copy)."""
        config.validate(session)
        if session_b is not None:
            check_same_architecture(session, session_b)
        set_a, set_b = resolve_sets(config)
        eval_sets = [set_a] if set_b is None else [set_a, set_b]
        missing = [s.name for s in eval_sets if not s.has_answers]
        if config.causal and missing:
            raise ValueError(
                f"the causal check needs an expected answer for every prompt; {missing} has prompts "
                "without one (use 'prompt => answer' lines) or switch the causal check off"
            )
        started = time.perf_counter()
        with session.lock:
            stats_a = unit_statistics(session, set_a.items, config.batch_size, progress, (0.0, 0.3))
            if config.mode == "tasks":
                assert set_b is not None
                stats_b = unit_statistics(session, set_b.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = set_a.name, set_b.name, session
            elif session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    stats_b = unit_statistics(session, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a = session.model_id
                label_b = f"{session.model_id} + noise {config.noise_scale:g}"
                scorer_b = session
            else:
                with session_b.lock:
                    stats_b = unit_statistics(session_b, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = session.model_id, session_b.model_id, session_b
            scoring_seconds = stats_a.seconds + stats_b.seconds
            n_scored = len(set_a.items) + (len(set_a.items) if set_b is None else len(set_b.items))

            n_units = mlp_width(session)
            k = config.units_per_layer(n_units)
            scores_a = unit_scores(session, stats_a, config.positions, config.score)
            if config.mode == "models" and session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    scores_b = unit_scores(session, stats_b, config.positions, config.score)
            else:
                scores_b = unit_scores(scorer_b, stats_b, config.positions, config.score)
            top_a, top_b = top_units(scores_a, k), top_units(scores_b, k)
            overlap = overlap_stats(top_a, top_b, n_units)

            heads_a = to_numpy(stats_a.head_mean(config.positions)).astype(np.float32)
            heads_b = to_numpy(stats_b.head_mean(config.positions)).astype(np.float32)
            n_all_heads = heads_a.size
            head_k = max(1, round(config.head_fraction * n_all_heads))
            head_top_a = np.argsort(-heads_a.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_top_b = np.argsort(-heads_b.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_shared = len(set(head_top_a.tolist()) & set(head_top_b.tolist()))

            conditions: list[str] = []
            group_sizes: list[int] = []
            logprob = np.zeros((0, len(eval_sets), 0))
            correct = np.zeros((0, len(eval_sets), 0))
            if config.causal:
                means = (stats_a.signed_all + (stats_b.signed_all if set_b is not None else 0)) / (
                    stats_a.tokens_all + (stats_b.tokens_all if set_b is not None else 0)
                )
                groups = unit_groups(top_a, top_b, n_units, config.seed)
                conditions = list(CONDITIONS) if set_b is not None else ["none", "shared", "A-only", "random"]
                encoded = [encode_items(session, s.items, with_answer=True) for s in eval_sets]
                width = max(len(e) for e in encoded)
                logprob = np.full((len(conditions), len(eval_sets), width), np.nan)
                correct = np.full((len(conditions), len(eval_sets), width), np.nan)
                steps = len(conditions) * len(eval_sets)
                for c, condition in enumerate(conditions):
                    chosen = {} if condition == "none" else groups[condition]
                    group_sizes.append(sum(len(u) for u in chosen.values()))
                    hooks = intervention_hooks(chosen, config.intervention, alpha=config.alpha, means=means)
                    for s, items in enumerate(encoded):
                        step = c * len(eval_sets) + s
                        progress(0.6 + 0.4 * step / steps, f"causal test: {condition} on {eval_sets[s].name}")
                        scores = answer_scores(session, items, hooks, config.batch_size)
                        logprob[c, s, : len(items)] = scores.logprob
                        correct[c, s, : len(items)] = scores.correct
        progress(1.0, "done")
        return SharedNeuronsResult(
            model_id=session.model_id,
            prompt=description or f"{label_a} vs {label_b}",
            config=config,
            mode=config.mode,
            label_a=label_a,
            label_b=label_b,
            prompts_a=set_a.prompts,
            answers_a=[item.answer for item in set_a.items],
            prompts_b=[] if set_b is None else set_b.prompts,
            answers_b=[] if set_b is None else [item.answer for item in set_b.items],
            n_units=n_units,
            k=k,
            mlp_scores_a=scores_a,
            mlp_scores_b=scores_b,
            top_a=top_a,
            top_b=top_b,
            overlap_count=overlap.count,
            overlap_fraction=overlap.fraction,
            jaccard=overlap.jaccard,
            expected_count=overlap.expected,
            p_value=overlap.p_value,
            shared_fraction=overlap.total_fraction,
            chance_fraction=overlap.total_expected_fraction,
            total_p_value=overlap.total_p_value,
            head_scores_a=heads_a,
            head_scores_b=heads_b,
            head_top_a=head_top_a,
            head_top_b=head_top_b,
            head_overlap=head_shared,
            head_expected=expected_overlap(n_all_heads, head_k, head_k),
            head_p_value=overlap_p_value(n_all_heads, head_k, head_k, head_shared),
            conditions=conditions,
            eval_sets=[s.name for s in eval_sets],
            group_sizes=np.asarray(group_sizes, dtype=np.int64),
            logprob=logprob,
            correct=correct,
            prompts_per_second=n_scored / max(scoring_seconds, 1e-9),
            seconds=time.perf_counter() - started,
        )


__all__ = [
    "SharedNeurons",
    "SharedNeuronsConfig",
    "SharedNeuronsResult",
    "answer_scores",
    "builtin_names",
    "check_same_architecture",
    "intervention_hooks",
    "overlap_stats",
    "perturbed_weights",
    "top_units",
    "unit_statistics",
]
