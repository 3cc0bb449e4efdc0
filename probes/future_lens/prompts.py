"""Future Lens methods 3 and 4: transplant h_t^ℓ into a context and let the model run on.

The fixed prompt overwrites the layer-ℓ state at the last position of a generic context with
h_t^ℓ; the learned prompt does the same after BOS + a trainable soft prompt (10 vectors) trained
with KL(original ‖ intervened) at t+N, AdamW lr 5e-4 (Pal et al., 2023), saved as an artefact
per model and layer. How the intervened run reaches N ≥ 1 is the *protocol* (``PROTOCOLS``):

- ``"free-running"`` (the paper's, the default): the intervened model continues with its own
  greedy tokens (:func:`free_running_logits`, one KV-cached generation per batch);
- ``"teacher-forced"``: the original run's true continuation t+1..t+N is fed after the context
  (:func:`causal_logits`, one forward), so N ≥ 1 measures the state *and* the fed tokens.
  Soft-prompt training uses it (the KL target is the original run at t+N).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.artefacts import (
    ARTEFACT_FORMAT,
    load_artefact,
    save_artefact,
    training_provenance,
)
from lenslab.probes.future_lens.data import HORIZONS, FutureLensData, bos_id, cache_dir
from lenslab.progress import NO_PROGRESS, Progress

FIXED_CONTEXT = 'Hello! Could you please tell me more about "'
PROTOCOLS = ("free-running", "teacher-forced")  # how the intervened run reaches N ≥ 1
FREE_RUNNING = "free-running"
DEFAULT_PROTOCOL = FREE_RUNNING  # the paper's


# ----------------------------------------------------------------------------- the transplant
def transplant_hook(states: Float[Tensor, "batch d_model"], position: int) -> Callable[..., Tensor]:
    """A hook writing ``states`` into sequence ``position`` of a residual stream (nothing else)."""

    def hook(resid: Tensor, *, hook: Any) -> Tensor:
        resid = resid.clone()
        resid[:, position] = states.to(resid.dtype)
        return resid

    return hook


def embedding_multiplier(session: ModelSession) -> float:
    """How much the model scales token embeddings (√d_model for Gemma, 1 for Llama/GPT-2)."""
    embed = session.input_embedding()
    ids = torch.tensor([[1, 2, 3]], device=session.device)
    with torch.no_grad():
        out = embed(ids)[0].float()
        raw = embed.weight[ids[0]].float()
    return float(out.norm() / raw.norm().clamp_min(1e-12))


def fixed_context_ids(session: ModelSession, context: str = FIXED_CONTEXT) -> Int[Tensor, " ctx"]:
    """Token ids (BOS first) of the generic context prompt."""
    return session.tokenize(context)[0]


def _intervention(
    session: ModelSession,
    states: Float[Tensor, "batch d_model"],
    layer: int,
    context_ids: Int[Tensor, " ctx"] | None,
    soft_prompt: Tensor | None,
    multiplier: float,
) -> tuple[Int[Tensor, "batch ctx"], list[tuple[str, Callable[..., Tensor]]]]:
    """The context tokens (one row per state) and the hooks that transplant and insert the prompt."""
    batch = states.shape[0]
    device = session.device
    if soft_prompt is not None:
        n_soft = soft_prompt.shape[0]
        context_ids = torch.full((n_soft + 1,), bos_id(session), dtype=torch.long, device=device)
    if context_ids is None:
        raise ValueError("give a context (fixed prompt) or a soft prompt")
    context_ids = context_ids.to(device)
    position = context_ids.shape[0] - 1
    hooks = [(session.resid_name(layer), transplant_hook(states, position))]
    if soft_prompt is not None:

        def insert_soft(embedded: Tensor, *, hook: Any) -> Tensor:
            prompt = (soft_prompt * multiplier).to(embedded.dtype)
            return torch.cat(
                [embedded[:, :1], prompt.expand(embedded.shape[0], -1, -1), embedded[:, 1 + n_soft :]], 1
            )

        hooks.append((hooknames.EMBED, insert_soft))
    return context_ids.expand(batch, -1), hooks


def causal_logits(
    session: ModelSession,
    states: Float[Tensor, "batch d_model"],
    layer: int,
    teacher: Int[Tensor, "batch fed"],
    *,
    context_ids: Int[Tensor, " ctx"] | None = None,
    soft_prompt: Tensor | None = None,
    multiplier: float = 1.0,
) -> Float[Tensor, "batch horizon vocab"]:
    """Teacher-forced logits for N = 0..fed after transplanting ``states`` into the context's end.

    The context is ``context_ids`` (fixed prompt) or BOS + ``soft_prompt`` (learned prompt,
    raw embeddings scaled by ``multiplier``); ``teacher`` holds the tokens fed after it (the
    original run's continuation t+1..t+fed), so N ≥ 1 sees the true tokens, not the intervened
    run's own (the ``"teacher-forced"`` protocol, and how the soft prompt is trained).
    Differentiable w.r.t. ``soft_prompt`` (callers choose ``no_grad``/``inference_mode``). Runs
    the HF forward under ``session.hooks`` so only the last fed+1 positions are unembedded.
    """
    context, hooks = _intervention(session, states, layer, context_ids, soft_prompt, multiplier)
    tokens = torch.cat([context, teacher.to(session.device)], 1)
    with session.hooks(hooks) as model:
        out = model.hf(input_ids=tokens, use_cache=False, logits_to_keep=teacher.shape[1] + 1)
    return out.logits


def free_running_logits(
    session: ModelSession,
    states: Float[Tensor, "batch d_model"],
    layer: int,
    horizon: int,
    *,
    context_ids: Int[Tensor, " ctx"] | None = None,
    soft_prompt: Tensor | None = None,
    multiplier: float = 1.0,
) -> Float[Tensor, "batch horizon vocab"]:
    """Free-running logits for N = 0..horizon-1: the intervened run continues on its own tokens.

    The context (as in :func:`causal_logits`) is run once with the transplant, then the model
    appends its own greedy token and steps on with the KV cache (``session.generate_greedy``),
    as in Pal et al. (2023): nothing of the original continuation is fed. The transplant and
    the soft prompt act on the prefill only; the cache carries them into every later step.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be ≥ 1, got {horizon}")
    context, hooks = _intervention(session, states, layer, context_ids, soft_prompt, multiplier)
    phase = {"prefill": True}

    def prefill_only(fn: Callable[..., Tensor]) -> Callable[..., Tensor | None]:
        def hook(tensor: Tensor, *, hook: Any) -> Tensor | None:
            return fn(tensor, hook=hook) if phase["prefill"] else None

        return hook

    def prefill_done() -> None:
        phase["prefill"] = False

    _, kept = session.generate_greedy(
        context.contiguous(),
        horizon,
        hooks=[(name, prefill_only(fn)) for name, fn in hooks],
        on_prefill=prefill_done,
        logits_to_keep=1,
    )
    return torch.cat(kept, 1)


# ------------------------------------------------------------------------------- learned prompt
@dataclass
class SoftPrompt:
    """A learned context for layer ``layer``: raw embeddings (multiplied by the model's scale)."""

    layer: int
    vectors: Float[Tensor, "n_prompt d_model"]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        """Write the prompt with its metadata."""
        return save_artefact(path, {"vectors": self.vectors}, {**self.meta, "layer": self.layer})

    @classmethod
    def load(cls, path: Path, session: ModelSession) -> SoftPrompt:
        """Read a prompt saved by :meth:`save`; prompts of another model are refused."""
        tensors, meta = load_artefact(path, session, "soft_prompt", "soft-prompt")
        return cls(layer=int(meta["layer"]), vectors=tensors["vectors"].to(session.device), meta=meta)


def soft_prompt_path(model_id: str, layer: int) -> Path:
    """Where the soft prompt for ``layer`` of ``model_id`` is saved."""
    return cache_dir(model_id) / f"soft_prompt_L{layer}.safetensors"


def evaluation_prompt_path(model_id: str, layer: int) -> Path:
    """Where an evaluation keeps a prompt for ``layer`` it retrained on its own data.

    Apart from :func:`soft_prompt_path` so that evaluating on other data never replaces the
    prompt the page's learned method reads.
    """
    return cache_dir(model_id) / f"soft_prompt_L{layer}_evaluation.safetensors"


def load_soft_prompt(session: ModelSession, layer: int, path: Path | None = None) -> SoftPrompt | None:
    """The saved soft prompt of this model for ``layer`` (the page's by default), or None."""
    path = soft_prompt_path(session.model_id, layer) if path is None else path
    return SoftPrompt.load(path, session) if path.is_file() else None


def trained_prompt_layers(session: ModelSession) -> list[int]:
    """Layers with a saved soft prompt for the session's model."""
    return [layer for layer in range(session.n_layers) if soft_prompt_path(session.model_id, layer).is_file()]


def kl_original_intervened(target_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean KL(p_original ‖ p_intervened) over all leading dims."""
    target = torch.log_softmax(target_logits.float(), -1)
    pred = torch.log_softmax(logits.float(), -1)
    return (target.exp() * (target - pred)).sum(-1).mean()


@dataclass(frozen=True)
class PromptTraining:
    """Settings of learned-prompt training (defaults: the paper's, epochs raised for small corpora)."""

    n_prompt: int = 10
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 16
    init_std: float = 0.02
    horizons: tuple[int, ...] = (0, 1, 2, 3)
    seed: int = 0
    max_examples: int | None = None

    def validate(self) -> None:
        """Reject settings that cannot train."""
        if not 1 <= self.n_prompt <= 64:
            raise ValueError(f"n_prompt must be between 1 and 64, got {self.n_prompt}")
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs must be between 1 and 100, got {self.epochs}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 1 <= self.batch_size <= 512:
            raise ValueError(f"batch_size must be between 1 and 512, got {self.batch_size}")
        if not self.horizons or any(not 0 <= n < HORIZONS for n in self.horizons):
            raise ValueError(f"horizons must be a non-empty subset of 0..{HORIZONS - 1}, got {self.horizons}")


def train_soft_prompt(
    session: ModelSession,
    data: FutureLensData,
    layer: int,
    settings: PromptTraining | None = None,
    progress: Progress = NO_PROGRESS,
) -> SoftPrompt:
    """Train a soft prompt for ``layer`` on the training split (KL objective, AdamW).

    Training is teacher-forced (:func:`causal_logits`): the original run's tokens t+1..t+3 are
    fed after the prompt and the KL to the original distribution is taken at every N in one
    differentiable forward. Evaluation and the grid then read the prompt free-running by default.

    The prompt lives in the raw embedding table's space and is multiplied by the model's embedding
    scale (√d_model = 25.3 for Gemma), so the paper's N(0, 0.02) init and lr 5e-4 keep their
    meaning relative to real token embeddings. Only the prompt gets gradients
    (``torch.autograd.grad``), the model's weights are untouched.
    """
    settings = settings or PromptTraining()
    settings.validate()
    layer = session.check_layer(layer)
    train = data.split(test=False)
    if settings.max_examples is not None:  # a seeded sample, so that every training document can appear
        keep = np.random.default_rng(settings.seed).permutation(len(train))[: settings.max_examples]
        train = np.sort(train[keep])
    if len(train) == 0:
        raise ValueError("the training split is empty")
    generator = torch.Generator().manual_seed(settings.seed)
    vectors = (torch.randn(settings.n_prompt, session.d_model, generator=generator) * settings.init_std).to(
        session.device, torch.float32
    )
    vectors.requires_grad_(True)
    optimizer = torch.optim.AdamW([vectors], lr=settings.lr)
    multiplier = embedding_multiplier(session)
    horizons = list(settings.horizons)
    fed = max(horizons)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    with session.lock:
        for epoch in range(settings.epochs):
            order = rng.permutation(train)
            for begin in range(0, len(order), settings.batch_size):
                idx = np.sort(order[begin : begin + settings.batch_size])
                states = torch.as_tensor(data.resid[idx, layer], device=session.device)
                teacher = torch.as_tensor(data.labels[idx, :fed], device=session.device)
                with torch.no_grad():
                    target = session.decode_resid(
                        torch.as_tensor(data.final[idx][:, horizons], device=session.device)
                    )
                logits = causal_logits(
                    session, states, layer, teacher, soft_prompt=vectors, multiplier=multiplier
                )
                loss = kl_original_intervened(target, logits[:, horizons])
                (grad,) = torch.autograd.grad(loss, [vectors])
                vectors.grad = grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step += 1
                progress(
                    step / total, f"layer {layer} · epoch {epoch + 1}/{settings.epochs} · KL {losses[-1]:.3f}"
                )
    seconds = time.perf_counter() - started
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "soft_prompt",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "multiplier": multiplier,
        "data_key": data.key,
        "n_train": len(train),
        "provenance": training_provenance(data, train),
        "training": {**asdict(settings), "horizons": horizons},
        "losses": losses,
        "seconds": seconds,
        "examples_per_second": len(train) * settings.epochs / max(seconds, 1e-9),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return SoftPrompt(layer=layer, vectors=vectors.detach(), meta=meta)
