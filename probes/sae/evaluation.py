"""SAE quality on held-out documents: L0, explained variance and CE loss recovered, with 95% intervals.

The protocol (``docs/sae.md``): the windows come from documents the SAE never trained on
(``corpus.held_out_windows``); BOS positions are left out. Per token it keeps L0 and the squared
reconstruction error; per predicted position the next-token CE clean, with the SAE spliced in,
with the activation zero-ablated and with it mean-ablated (replaced by the training mean).

- explained variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄: the mean over the evaluated tokens);
- CE recovered = (CE_ablated − CE_sae) / (CE_ablated − CE_clean), against both ablations.

Each figure gets a 95% interval from ``probes.stats.bootstrap_by_group`` over documents (tokens
of one document are not independent evidence). The result is plain data and is stored in the
SAE's ``lenslab.json``: flat estimates under ``metrics`` and the rest under ``held_out``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import to_numpy
from lenslab.probes.sae.corpus import TokenWindows, as_tensor
from lenslab.probes.sae.loading import LoadedSAE
from lenslab.probes.stats import Interval, bootstrap_by_group, format_interval
from lenslab.progress import NO_PROGRESS, Progress

CE_VARIANTS = ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation")
METRICS = (
    "l0",
    "mse",
    "explained_variance",
    *CE_VARIANTS,
    "ce_recovered",
    "ce_recovered_mean",
)
"""Every figure a held-out evaluation reports (each with an interval)."""
NOT_MEASURED = "not measured (saved before held-out evaluation; retrain the SAE to measure it)"


def splice_hook(loaded: LoadedSAE, *, skip_bos: bool = True) -> Any:
    """A hook replacing the activation by its SAE reconstruction (BOS position left clean)."""

    def splice(activation: Tensor, hook: Any) -> Tensor:
        recon = loaded.decode(loaded.encode(activation)).to(activation.dtype)
        if skip_bos:
            recon = torch.cat([activation[:, :1], recon[:, 1:]], dim=1)
        return recon

    return splice


def zero_hook(*, skip_bos: bool = True) -> Any:
    """A hook zeroing the activation (the zero-ablation baseline of CE recovered); BOS left clean."""

    def zero(activation: Tensor, hook: Any) -> Tensor:
        out = torch.zeros_like(activation)
        if skip_bos:
            out[:, :1] = activation[:, :1]
        return out

    return zero


def mean_hook(mean: Float[Tensor, " d_in"], *, skip_bos: bool = True) -> Any:
    """A hook replacing the activation by ``mean`` at every position (mean ablation); BOS left clean."""

    def replace(activation: Tensor, hook: Any) -> Tensor:
        out = mean.to(activation).expand_as(activation).clone()
        if skip_bos:
            out[:, :1] = activation[:, :1]
        return out

    return replace


def explained_variance(sq_err: np.ndarray, deviation: np.ndarray) -> float:
    """1 − Σ squared error / Σ squared deviation from the mean (both per token)."""
    total = float(np.sum(deviation))
    return 1.0 - float(np.sum(sq_err)) / total if total > 0 else math.nan


def ce_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """(CE_ablated − CE_sae) / (CE_ablated − CE_clean): 1 when splicing costs nothing, 0 = ablation."""
    gap = ce_ablated - ce_clean
    return (ce_ablated - ce_sae) / gap if gap != 0 else math.nan


@dataclass(frozen=True)
class HeldOutEvaluation:
    """Held-out SAE quality: estimates with 95% intervals, and what they were measured on."""

    estimates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_tokens: int  # evaluated tokens (BOS excluded): L0, MSE, explained variance
    n_ce_positions: int  # predicted positions: the CE figures
    n_documents: int  # held-out documents behind them (the bootstrap's unit)
    documents: list[int]  # their indices in the corpus
    method: str

    def interval(self, name: str) -> Interval:
        """Figure ``name`` as an :class:`Interval`."""
        low, high = self.intervals.get(name, (math.nan, math.nan))
        return Interval(self.estimates[name], low, high, self.n_documents, self.method)

    def text(self, name: str, digits: int = 3) -> str:
        """``x [lo, hi] (n tokens, m documents)``."""
        low, high = self.intervals.get(name, (math.nan, math.nan))
        n = self.n_ce_positions if name.startswith("ce_") else self.n_tokens
        estimate = self.estimates[name]
        if math.isfinite(low) and math.isfinite(high):
            shown = format_interval(estimate, low, high, digits=digits)
        else:  # one document: nothing to resample
            shown = f"{estimate:.{digits}g} [no interval]"
        return f"{shown} ({n} tokens, {self.n_documents} documents)"

    def metrics(self) -> dict[str, float]:
        """Flat estimates and counts (``lenslab.json``'s ``metrics``)."""
        counts = {"n_tokens": self.n_tokens, "n_ce_positions": self.n_ce_positions}
        return {**self.estimates, **{k: float(v) for k, v in counts.items()}}

    def to_info(self) -> dict[str, Any]:
        """Intervals, counts and documents (``lenslab.json``'s ``held_out``)."""
        return {
            "intervals": {name: list(pair) for name, pair in self.intervals.items()},
            "n_tokens": self.n_tokens,
            "n_ce_positions": self.n_ce_positions,
            "n_documents": self.n_documents,
            "documents": self.documents,
            "method": self.method,
        }

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> HeldOutEvaluation | None:
        """Read back from ``lenslab.json``; None for SAEs saved before held-out evaluation."""
        held, metrics = info.get("held_out"), info.get("metrics")
        if not isinstance(held, dict) or not isinstance(metrics, dict) or "intervals" not in held:
            return None
        return cls(
            estimates={name: float(metrics[name]) for name in METRICS if name in metrics},
            intervals={name: (float(lo), float(hi)) for name, (lo, hi) in held["intervals"].items()},
            n_tokens=int(held["n_tokens"]),
            n_ce_positions=int(held["n_ce_positions"]),
            n_documents=int(held["n_documents"]),
            documents=[int(d) for d in held.get("documents", [])],
            method=str(held.get("method", "")),
        )


def quality_lines(info: dict[str, Any]) -> list[str]:
    """Held-out L0, explained variance and CE recovered of an SAE's ``lenslab.json``, for pages."""
    evaluation = HeldOutEvaluation.from_info(info)
    if evaluation is None:
        return [f"held-out quality: {NOT_MEASURED}"]
    names = {
        "l0": "L0",
        "explained_variance": "explained variance",
        "ce_recovered": "CE recovered (vs zero-ablation)",
        "ce_recovered_mean": "CE recovered (vs mean-ablation)",
    }
    return [
        f"{label} {evaluation.text(name)}" for name, label in names.items() if name in evaluation.estimates
    ]


def ablated_logprobs(
    session: ModelSession, window: Tensor, hook_name: str, hook: Any, positions: Tensor
) -> Float[Tensor, "pos vocab"]:
    """Next-token log-probabilities at ``positions`` of one BOS-led ``window`` under a constant ablation.

    With every non-BOS activation at ``hook_name`` replaced by one constant vector (zero or
    mean ablation) and BOS at position 0 left clean, the forward after the hook sees the same
    input in every window (causal attention: BOS's state depends on BOS alone), so these are the
    ablated log-probabilities of every window of the same length.
    """
    hidden = session.capture(window, [hooknames.FINAL_NORM], hooks=[(hook_name, hook)])[hooknames.FINAL_NORM]
    with torch.inference_mode():
        return session.final_logits(hidden[0, positions]).float().log_softmax(-1)


def evaluate_sae(
    session: ModelSession,
    loaded: LoadedSAE,
    windows: TokenWindows,
    *,
    mean_activation: Float[Tensor, " d_in"] | None = None,
    batch_size: int = 8,
    position_stride: int = 2,
    progress: Progress = NO_PROGRESS,
    forward_batches: int = 4,
) -> HeldOutEvaluation:
    """L0, MSE, explained variance and CE clean / spliced / zero- / mean-ablated on ``windows``.

    ``mean_activation`` is the mean-ablation baseline (the training activations' mean); None uses
    the mean over ``windows``. The losses are taken at every ``position_stride``-th position: the
    262k-wide unembedding dominates the cost on a CPU. Intervals: bootstrap over the documents
    in ``windows.documents``. ``progress`` is called after every forward (raising stops).

    The two ablations replace every non-BOS activation by the same constant, and every window
    starts with BOS at position 0, so everything after the hook is the same function of the
    position alone in every window: one forward of one window gives the ablated logits of all
    windows (:func:`ablated_logprobs`); only the clean and spliced passes run per batch.

    Each forward covers ``forward_batches`` batches of ``batch_size`` windows (32 windows of 64
    tokens per forward took about half the CPU time of 8 on Gemma 3 270M, with bit-identical
    hidden states); the full-vocabulary log-probabilities are still taken one ``batch_size``
    batch at a time, so their memory stays that of one batch.
    """
    tokens = as_tensor(windows, session)
    positions = torch.arange(1, tokens.shape[1] - 1, position_stride, device=session.device)
    token_docs = windows.documents[:, 1:].reshape(-1)
    ce_docs = windows.documents[:, to_numpy(positions + 1)].reshape(-1)
    acts, l0, sq_err = [], [], []
    ce: dict[str, list[np.ndarray]] = {name: [] for name in CE_VARIANTS}
    if forward_batches < 1:
        raise ValueError(f"forward_batches must be at least 1, got {forward_batches}")
    width = batch_size * forward_batches
    groups = [tokens[i : i + width] for i in range(0, len(tokens), width)]  # one forward each
    n_forwards, done = 2 * len(groups) + 2, 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        progress(done / n_forwards, f"held-out evaluation: {message} {done}/{n_forwards}")

    def nll(batch: Tensor, hidden: Tensor) -> np.ndarray:
        with torch.inference_mode():
            logprobs = session.final_logits(hidden[:, positions]).float().log_softmax(-1)
            picked = logprobs.gather(-1, batch[:, positions + 1, None])[..., 0]
        return to_numpy(-picked.double()).reshape(-1)

    for group in groups:  # clean pass: activations and clean CE in one forward
        out = session.capture(group, [loaded.hook_name, hooknames.FINAL_NORM])
        for first in range(0, len(group), batch_size):
            rows = slice(first, first + batch_size)
            act = out[loaded.hook_name][rows, 1:].float()
            with torch.inference_mode():
                feats = loaded.encode(act)
                recon = loaded.decode(feats).float()
            l0.append(to_numpy((feats > 0).sum(-1).double()).reshape(-1))
            sq_err.append(to_numpy(((recon - act) ** 2).sum(-1).double()).reshape(-1))
            acts.append(act.reshape(-1, act.shape[-1]))
            ce["ce_clean"].append(nll(group[rows], out[hooknames.FINAL_NORM][rows]))
        step("clean")
    flat = torch.cat(acts)
    mean = flat.mean(0) if mean_activation is None else mean_activation.float().to(flat.device)
    splice = [(loaded.hook_name, splice_hook(loaded))]
    for group in groups:
        hidden = session.capture(group, [hooknames.FINAL_NORM], hooks=splice)[hooknames.FINAL_NORM]
        for first in range(0, len(group), batch_size):
            rows = slice(first, first + batch_size)
            ce["ce_sae"].append(nll(group[rows], hidden[rows]))
        step("sae")
    targets = tokens[:, positions + 1]  # [window, position]
    rows = torch.arange(len(positions), device=tokens.device)[None, :]
    for name, hook in (("ce_zero_ablation", zero_hook()), ("ce_mean_ablation", mean_hook(mean))):
        logprobs = ablated_logprobs(session, tokens[:1], loaded.hook_name, hook, positions)
        ce[name] = [to_numpy(-logprobs[rows, targets].double()).reshape(-1)]
        step(name.removeprefix("ce_").replace("_", "-"))
    deviation = to_numpy(((flat - flat.mean(0)) ** 2).sum(-1).double())
    per_token = np.stack([np.concatenate(l0), np.concatenate(sq_err), deviation], axis=1)
    per_position = np.stack([np.concatenate(ce[name]) for name in CE_VARIANTS], axis=1)
    d_in = flat.shape[-1]
    token_stats: dict[str, Callable[[np.ndarray], float]] = {
        "l0": lambda v: float(v[:, 0].mean()),
        "mse": lambda v: float(v[:, 1].mean() / d_in),
        "explained_variance": lambda v: explained_variance(v[:, 1], v[:, 2]),
    }
    means = lambda v: v.mean(0)  # noqa: E731 - column means: clean, sae, zero, mean
    ce_stats: dict[str, Callable[[np.ndarray], float]] = {
        **{name: (lambda v, i=i: float(v[:, i].mean())) for i, name in enumerate(CE_VARIANTS)},
        "ce_recovered": lambda v: ce_recovered(*means(v)[[0, 1, 2]]),
        "ce_recovered_mean": lambda v: ce_recovered(*means(v)[[0, 1, 3]]),
    }
    intervals = {
        name: bootstrap_by_group(per_token, token_docs, stat, unit="documents")
        for name, stat in token_stats.items()
    } | {
        name: bootstrap_by_group(per_position, ce_docs, stat, unit="documents")
        for name, stat in ce_stats.items()
    }
    documents = sorted(int(d) for d in np.unique(token_docs))
    return HeldOutEvaluation(
        estimates={name: intervals[name].estimate for name in METRICS},
        intervals={name: (intervals[name].low, intervals[name].high) for name in METRICS},
        n_tokens=int(per_token.shape[0]),
        n_ce_positions=int(per_position.shape[0]),
        n_documents=len(documents),
        documents=documents,
        method=intervals["l0"].method,
    )
