"""Fitting J̄_l: a mergeable running mean of per-prompt Jacobians, checkpointed and resumable.

The fit state is a sum and a count per layer (:class:`FitState`), so shards fitted on disjoint
documents anywhere combine exactly with :func:`merge` (the count-weighted mean the reference's
``JacobianLens.merge`` computes). :func:`fit_shard` processes a list of documents — one prompt
each: its first ``seq_len`` tokens — and, when given a checkpoint path, writes the state
atomically every ``checkpoint_every`` prompts and resumes from it on restart. :func:`fit` adds the
stopping rule of Neuronpedia's fitting notes: stop once the smoothed relative change of the
running mean per prompt stays below ``tol`` (after at least ``min_prompts``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.jacobian_lens.estimator import prompt_jacobians
from lenslab.progress import NO_PROGRESS, Cancelled, Progress

REFERENCE_SEQ_LEN = 128
REFERENCE_SKIP_FIRST = 16
REFERENCE_TOL = 2e-3
REFERENCE_MIN_PROMPTS = 100
REFERENCE_MAX_PROMPTS = 1000
STATE_FORMAT = 1


@dataclass(frozen=True)
class FitSpec:
    """How prompts are cut and when the fit stops (defaults: the reference's full specification)."""

    corpus: str = "python-docs"
    seq_len: int = REFERENCE_SEQ_LEN
    skip_first: int = REFERENCE_SKIP_FIRST
    min_prompts: int = REFERENCE_MIN_PROMPTS
    max_prompts: int = REFERENCE_MAX_PROMPTS
    tol: float = REFERENCE_TOL
    smoothing: int = 10  # prompts in the moving mean of the relative change
    dim_batch: int = 64  # output dimensions per vmapped backward pass (memory, not the result)

    def validate(self) -> None:
        """Clear errors for impossible settings."""
        if not 3 <= self.seq_len <= 4096:
            raise ValueError(f"seq_len must be in 3..4096, got {self.seq_len}")
        if not 0 <= self.skip_first <= self.seq_len - 2:
            raise ValueError(
                f"skip_first must be in 0..{self.seq_len - 2} (seq_len − 2), got {self.skip_first}"
            )
        if not 1 <= self.min_prompts <= self.max_prompts:
            raise ValueError(
                f"need 1 ≤ min_prompts ≤ max_prompts, got {self.min_prompts} and {self.max_prompts}"
            )
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {self.tol}")
        if self.smoothing < 1:
            raise ValueError(f"smoothing must be ≥ 1, got {self.smoothing}")
        if self.dim_batch < 1:
            raise ValueError(f"dim_batch must be ≥ 1, got {self.dim_batch}")

    def shape_key(self) -> tuple[str, int, int]:
        """What must agree for two states to be averaged together."""
        return (self.corpus, self.seq_len, self.skip_first)

    def deviations(self) -> list[str]:
        """How this spec departs from the reference's (empty when it doesn't)."""
        out = []
        if self.seq_len != REFERENCE_SEQ_LEN:
            out.append(f"windows of {self.seq_len} tokens (reference {REFERENCE_SEQ_LEN})")
        if self.skip_first != REFERENCE_SKIP_FIRST:
            out.append(f"first {self.skip_first} positions skipped (reference {REFERENCE_SKIP_FIRST})")
        if self.max_prompts < REFERENCE_MIN_PROMPTS:
            out.append(f"at most {self.max_prompts} prompts (reference: at least {REFERENCE_MIN_PROMPTS})")
        elif self.min_prompts != REFERENCE_MIN_PROMPTS or self.tol != REFERENCE_TOL:
            out.append(f"stopping rule min {self.min_prompts} prompts, tol {self.tol:g}")
        return out


@dataclass
class FitState:
    """Running sum of per-prompt Jacobians: everything a fit, a shard or a checkpoint holds.

    ``jacobian_sum[l]`` is the sum over prompts of each prompt's J_l (float64); ``n_prompts`` the
    count, so ``mean() = jacobian_sum / n_prompts`` and two states merge by adding both.
    ``rel_change[k]`` is the relative change of the running mean when prompt ``k`` was added
    (the reference's convergence diagnostic; meaningful for sequentially fitted states).
    ``cursor`` is how many of the shard's documents were consumed (processed or skipped).
    """

    model_id: str
    spec: FitSpec
    jacobian_sum: Float[Tensor, "layer d_model d_model"]
    n_prompts: int = 0
    n_positions: int = 0
    documents: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    rel_change: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cursor: int = 0
    converged: bool = False

    @classmethod
    def empty(cls, session: ModelSession, spec: FitSpec) -> FitState:
        """A state with nothing accumulated, for ``session``'s model."""
        d = session.d_model
        return cls(session.model_id, spec, torch.zeros(session.n_layers, d, d, dtype=torch.float64))

    def mean(self) -> Float[Tensor, "layer d_model d_model"]:
        """J̄_l for every layer (float64)."""
        if self.n_prompts == 0:
            raise ValueError("the fit state holds no prompt yet")
        return self.jacobian_sum / self.n_prompts

    def smoothed_change(self) -> float:
        """Moving mean of the last ``spec.smoothing`` relative changes (NaN before enough prompts)."""
        tail = [c for c in self.rel_change[-self.spec.smoothing :] if not math.isnan(c)]
        return float(np.mean(tail)) if len(tail) == self.spec.smoothing else math.nan

    # ------------------------------------------------------------------------ checkpoint files
    def save(self, path: Path) -> Path:
        """Write the state atomically (temporary file, then rename): a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": STATE_FORMAT,
            "model_id": self.model_id,
            "spec": asdict(self.spec),
            "jacobian_sum": self.jacobian_sum,
            "n_prompts": self.n_prompts,
            "n_positions": self.n_positions,
            "documents": self.documents,
            "skipped": self.skipped,
            "rel_change": self.rel_change,
            "seconds": self.seconds,
            "cursor": self.cursor,
            "converged": self.converged,
        }
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> FitState:
        """Read a state written by :meth:`save`."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if payload.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a J-lens fit state (format {payload.get('format')!r})")
        spec = FitSpec(**payload.pop("spec"))
        payload.pop("format")
        return cls(spec=spec, **payload)


def merge(states: Sequence[FitState]) -> FitState:
    """The fit on the union of the states' documents: sums and counts added (exact, count-weighted).

    States must share the model, corpus, window length and skipped positions, and must not share
    documents (a document counted twice would be weighted twice). The merged state has no
    convergence curve (the order of prompts across shards is not defined).
    """
    if not states:
        raise ValueError("merge needs at least one fit state")
    first = states[0]
    seen: set[int] = set()
    for state in states:
        if state.model_id != first.model_id:
            raise ValueError(f"cannot merge fits of {first.model_id!r} and {state.model_id!r}")
        if state.spec.shape_key() != first.spec.shape_key():
            raise ValueError(
                f"cannot merge fits with different (corpus, seq_len, skip_first): "
                f"{first.spec.shape_key()} vs {state.spec.shape_key()}"
            )
        overlap = seen.intersection(state.documents)
        if overlap:
            raise ValueError(f"fit states share documents {sorted(overlap)[:5]}: shards must be disjoint")
        seen.update(state.documents)
    return FitState(
        model_id=first.model_id,
        spec=first.spec,
        jacobian_sum=sum((s.jacobian_sum for s in states[1:]), first.jacobian_sum.clone()),
        n_prompts=sum(s.n_prompts for s in states),
        n_positions=sum(s.n_positions for s in states),
        documents=[d for s in states for d in s.documents],
        skipped=[d for s in states for d in s.skipped],
        rel_change=[],
        seconds=sum(s.seconds for s in states),
        cursor=0,
        converged=False,
    )


def document_tokens(session: ModelSession, text: str, seq_len: int) -> Tensor:
    """A document's prompt: BOS and its first tokens, at most ``seq_len`` in all.

    Only a prefix of the text is tokenized (growing until it yields ``seq_len`` tokens or is the
    whole text), so long documents never meet the session's prompt-length limit.
    """
    chars = 8 * seq_len
    while True:
        tokens = session.tokenize(text[:chars])
        if tokens.shape[1] > seq_len or chars >= len(text):
            return tokens[:, :seq_len]
        chars *= 2


def _relative_change(state: FitState, jac: Tensor) -> float:
    """‖J_new − mean‖ / ((n + 1)‖mean‖), max over layers: the change of the running mean (reference)."""
    if state.n_prompts == 0:
        return math.nan
    mean = state.jacobian_sum / state.n_prompts
    diff = torch.linalg.matrix_norm(jac - mean)
    norm = torch.linalg.matrix_norm(mean).clamp_min(1e-30)
    return float((diff / ((state.n_prompts + 1) * norm)).max())


def fit_shard(
    session: ModelSession,
    documents: Sequence[int],
    spec: FitSpec | None = None,
    *,
    texts: Sequence[str] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 10,
    stop_when_converged: bool = False,
    max_seconds: float | None = None,
    progress: Progress = NO_PROGRESS,
) -> FitState:
    """Accumulate the per-prompt Jacobians of ``documents`` (indices into ``spec.corpus``).

    With ``checkpoint``, a state already saved there (same model, spec and document list) is
    resumed and the state is rewritten every ``checkpoint_every`` prompts and on cancel, so a
    restarted call continues where it stopped and ends with the same sums as an uninterrupted
    one. Documents too short for one valid position are recorded as skipped. With
    ``stop_when_converged`` the fit stops once ``max_prompts`` is reached or, after
    ``min_prompts``, the smoothed relative change is below ``tol``. ``max_seconds`` caps the
    fitting time: no prompt is started that the last prompt's duration says would overrun it
    (at least one prompt is always fitted).
    """
    from lenslab.probes.sae.corpus import corpus_texts

    spec = spec or FitSpec()
    spec.validate()
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be ≥ 1, got {checkpoint_every}")
    texts = list(texts) if texts is not None else corpus_texts(spec.corpus)
    documents = [int(d) for d in documents]
    bad = [d for d in documents if not 0 <= d < len(texts)]
    if bad:
        raise ValueError(f"document indices {bad[:5]} out of range: the corpus has {len(texts)} documents")
    state = _resume(session, spec, documents, checkpoint) or FitState.empty(session, spec)
    budget = len(documents)
    total = min(budget, spec.max_prompts) if stop_when_converged else budget

    def done() -> bool:
        if max_seconds is not None and state.n_prompts > 0:
            per_prompt = state.seconds / state.n_prompts
            if state.seconds + per_prompt > max_seconds:
                return True
        if not stop_when_converged:
            return False
        if state.n_prompts >= spec.max_prompts:
            return True
        return state.n_prompts >= spec.min_prompts and state.smoothed_change() < spec.tol

    try:
        while state.cursor < budget and not done():
            doc = documents[state.cursor]
            tokens = document_tokens(session, texts[doc], spec.seq_len)
            if tokens.shape[1] - 1 <= spec.skip_first:
                state.skipped.append(doc)
                state.cursor += 1
                continue
            started = time.perf_counter()
            base = min(state.n_prompts, total) / max(total, 1)

            def inner(fraction: float, message: str = "", base: float = base, doc: int = doc) -> None:
                progress(
                    min(base + fraction / max(total, 1), 1.0),
                    f"prompt {state.n_prompts + 1} (document {doc}): {message}",
                )

            jac, n_valid = prompt_jacobians(
                session, tokens, skip_first=spec.skip_first, dim_batch=spec.dim_batch, progress=inner
            )
            state.rel_change.append(_relative_change(state, jac))
            state.jacobian_sum += jac
            state.n_prompts += 1
            state.n_positions += n_valid
            state.documents.append(doc)
            state.cursor += 1
            state.seconds += time.perf_counter() - started
            if checkpoint is not None and state.n_prompts % checkpoint_every == 0:
                state.save(checkpoint)
    except Cancelled:
        if checkpoint is not None:
            state.save(checkpoint)
        raise
    state.converged = (
        stop_when_converged and state.n_prompts >= spec.min_prompts and (state.smoothed_change() < spec.tol)
    )
    if checkpoint is not None:
        state.save(checkpoint)
    progress(1.0, f"{state.n_prompts} prompts, {state.n_positions} positions")
    return state


def _resume(
    session: ModelSession, spec: FitSpec, documents: list[int], checkpoint: Path | None
) -> FitState | None:
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    state = FitState.load(Path(checkpoint))
    if state.model_id != session.model_id:
        raise ValueError(
            f"the checkpoint {checkpoint} belongs to {state.model_id!r}, not {session.model_id!r}: "
            "delete it or choose another path"
        )
    if state.spec != spec:
        raise ValueError(
            f"the checkpoint {checkpoint} was fitted with {state.spec}, not {spec}: delete it to restart"
        )
    consumed = documents[: state.cursor]
    if sorted(state.documents + state.skipped) != sorted(consumed):
        raise ValueError(f"the checkpoint {checkpoint} was fitted on other documents: delete it to restart")
    return state


def training_documents(n_documents: int, seed: int = 0) -> list[int]:
    """The corpus's training documents (held-out ones never fitted on) in a fixed shuffled order."""
    from lenslab.probes.sae.corpus import split_documents

    train, _ = split_documents(n_documents)
    order = np.random.default_rng(seed).permutation(len(train))
    return [train[i] for i in order]


def fit(
    session: ModelSession,
    spec: FitSpec | None = None,
    *,
    checkpoint: Path | None = None,
    checkpoint_every: int = 10,
    progress: Progress = NO_PROGRESS,
) -> FitState:
    """Fit J̄ on the training documents of ``spec.corpus`` with the stopping rule (one process)."""
    from lenslab.probes.sae.corpus import corpus_texts

    spec = spec or FitSpec()
    texts = corpus_texts(spec.corpus)
    return fit_shard(
        session,
        training_documents(len(texts)),
        spec,
        texts=texts,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        stop_when_converged=True,
        progress=progress,
    )
