"""Feature dashboards for every feature of an SAE in one streaming pass over a corpus.

For each batch of corpus windows the model runs up to the SAE's hook only, the SAE encodes the
activations and four running statistics are updated on the device for all features at once:

- top-k activations per feature (merge the running [k, d_sae] table with the batch and take
  ``topk`` along the token axis again — exact, equal to a brute-force top-k over the corpus);
- a uniform random sample of firing positions per feature (each firing (token, feature) pair
  gets a random key; keep the ``n_samples`` largest keys — reservoir sampling by priorities),
  from which the feature page draws examples at several activation quantiles;
- a histogram of non-zero activations on fixed log-spaced bins (edges set from the first batch);
- firing counts and activation sums (frequency, mean).

By default the windows come from the corpus' held-out documents (``corpus.split_documents``),
which lenslab-trained SAEs never saw, so a feature's examples are not its training text. BOS
positions are skipped: their residual is an outlier that says nothing about the text. The
result is plain numpy, cached on disk per (model, SAE, corpus windows, settings) with
``np.savez`` + JSON (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import to_numpy
from lenslab.probes.sae.corpus import PYTHON_DOCS, SUBSETS, Subset, TokenWindows, as_tensor, token_windows
from lenslab.probes.sae.loading import LoadedSAE, sae_root
from lenslab.progress import NO_PROGRESS, Progress

ARRAY_FIELDS = (
    "tokens",
    "top_values",
    "top_index",
    "sample_values",
    "sample_index",
    "hist_counts",
    "bin_edges",
    "fire_count",
    "act_sum",
)


@dataclass(frozen=True)
class DashboardSettings:
    """What the streaming pass reads and keeps."""

    corpus: str = PYTHON_DOCS
    documents: Subset = "held-out"  # which documents of the corpus: held-out, train or all
    n_seq: int = 256
    context_size: int = 64
    top_k: int = 20
    n_samples: int = 40
    n_bins: int = 64
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError on unusable settings."""
        for name in ("n_seq", "context_size", "top_k", "n_samples", "n_bins", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.context_size < 2:
            raise ValueError("context_size must be at least 2 (BOS plus one token)")
        if self.documents not in SUBSETS:
            raise ValueError(f"documents must be one of {', '.join(SUBSETS)}, got {self.documents!r}")


@dataclass
class FeatureDashboards:
    """Streaming statistics for all features; flat token index = window * context_size + position."""

    tokens: np.ndarray  # int64 [n_seq, context]
    top_values: np.ndarray  # float32 [d_sae, top_k], descending; 0 where fewer firings
    top_index: np.ndarray  # int64 [d_sae, top_k]; -1 where fewer firings
    sample_values: np.ndarray  # float32 [d_sae, n_samples]
    sample_index: np.ndarray  # int64 [d_sae, n_samples]; -1 where fewer firings
    hist_counts: np.ndarray  # int64 [d_sae, n_bins]
    bin_edges: np.ndarray  # float32 [n_bins + 1], log-spaced; out-of-range values land in the end bins
    fire_count: np.ndarray  # int64 [d_sae]
    act_sum: np.ndarray  # float64 [d_sae]
    meta: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        """Tokens the statistics cover (BOS excluded)."""
        return int(self.meta["n_tokens"])

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.top_values.shape[0])

    def frequency(self) -> np.ndarray:
        """Fraction of tokens on which each feature fires."""
        return self.fire_count / max(self.n_tokens, 1)

    def save(self, path: Path) -> Path:
        """Write ``<path>.npz`` and ``<path>.json`` (atomic renames; no pickle)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{name: getattr(self, name) for name in ARRAY_FIELDS})
        tmp.replace(path.with_suffix(".npz"))
        path.with_suffix(".json").write_text(json.dumps(self.meta, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureDashboards:
        """Read what :meth:`save` wrote; FileNotFoundError when absent."""
        npz, meta = path.with_suffix(".npz"), path.with_suffix(".json")
        if not npz.is_file() or not meta.is_file():
            raise FileNotFoundError(f"no dashboards cached at {path}")
        with np.load(npz, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAY_FIELDS}
        return cls(**arrays, meta=json.loads(meta.read_text()))


def cache_key(
    session: ModelSession, loaded: LoadedSAE, windows: TokenWindows, settings: DashboardSettings
) -> str:
    """Digest of everything the dashboards depend on."""
    parts = [session.model_id, loaded.identity, windows.digest, json.dumps(asdict(settings), sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cache_path(session: ModelSession, key: str) -> Path:
    """Where dashboards with ``key`` live (extension added on save/load)."""
    return sae_root(session) / "dashboards" / key


def get_dashboards(
    session: ModelSession,
    loaded: LoadedSAE,
    settings: DashboardSettings = DashboardSettings(),
    progress: Progress = NO_PROGRESS,
    *,
    use_cache: bool = True,
) -> FeatureDashboards:
    """Cached dashboards for ``loaded`` over the corpus in ``settings``; built on a miss."""
    settings.validate()
    progress(0.0, "tokenising the corpus")
    windows = token_windows(
        session,
        settings.corpus,
        context_size=settings.context_size,
        n_seq=settings.n_seq,
        subset=settings.documents,
    )
    key = cache_key(session, loaded, windows, settings)
    path = cache_path(session, key)
    if use_cache:
        try:
            dashboards = FeatureDashboards.load(path)
            progress(1.0, "dashboards loaded from cache")
            return dashboards
        except (FileNotFoundError, KeyError, ValueError, OSError):
            pass
    dashboards = build_dashboards(session, loaded, windows, settings, progress)
    dashboards.meta["cache_key"] = key
    if use_cache:
        dashboards.save(path)
    return dashboards


FORWARD_BATCHES = 4  # statistics batches per forward in :func:`build_dashboards`


def build_dashboards(
    session: ModelSession,
    loaded: LoadedSAE,
    windows: TokenWindows,
    settings: DashboardSettings,
    progress: Progress = NO_PROGRESS,
) -> FeatureDashboards:
    """One streaming pass over ``windows`` accumulating every feature's statistics."""
    started = time.perf_counter()
    tokens = as_tensor(windows, session)
    n_seq, context = tokens.shape
    device = session.device
    d_sae, top_k, n_samples, n_bins = loaded.d_sae, settings.top_k, settings.n_samples, settings.n_bins
    top_values = torch.zeros(top_k, d_sae, device=device)
    top_index = torch.full((top_k, d_sae), -1, dtype=torch.long, device=device)
    sample_keys = torch.full((n_samples, d_sae), -1.0, device=device)
    sample_values = torch.zeros(n_samples, d_sae, device=device)
    sample_index = torch.full((n_samples, d_sae), -1, dtype=torch.long, device=device)
    hist = torch.zeros(d_sae * n_bins, dtype=torch.long, device=device)
    fire_count = torch.zeros(d_sae, dtype=torch.long, device=device)
    act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
    edges: Tensor | None = None
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    n_batches = math.ceil(n_seq / settings.batch_size)
    feature_ids = torch.arange(d_sae, device=device)
    # The forward runs FORWARD_BATCHES statistics batches at once (the same activations, about
    # half the CPU time); the statistics still advance one ``settings.batch_size`` batch at a time,
    # since the histogram edges and the random sample keys depend on that batching.
    forward_rows = settings.batch_size * FORWARD_BATCHES
    captured = tokens[:0]
    with session.lock:
        for b in range(n_batches):
            first = b * settings.batch_size
            batch = tokens[first : first + settings.batch_size]
            if first % forward_rows == 0:
                with torch.inference_mode():
                    captured = session.capture(tokens[first : first + forward_rows], [loaded.hook_name])[
                        loaded.hook_name
                    ]
            offset = first % forward_rows
            with torch.inference_mode():
                acts = loaded.encode(captured[offset : offset + len(batch), 1:]).float()
            # flat corpus index of each non-BOS token in this batch
            rows = torch.arange(first, first + len(batch), device=device)[:, None] * context
            flat_index = (rows + torch.arange(1, context, device=device)[None, :]).reshape(-1)
            acts = acts.reshape(-1, d_sae)
            firing = acts > 0
            if edges is None:
                edges = _log_edges(acts[firing], n_bins, device)
            # running top-k along the token axis
            merged_values = torch.cat([top_values, acts])
            merged_index = torch.cat([top_index, flat_index[:, None].expand(-1, d_sae)])
            top_values, order = merged_values.topk(top_k, dim=0)
            top_index = merged_index.gather(0, order)
            # uniform sample of firing positions by random priorities
            keys = torch.rand(acts.shape, generator=generator, device=device)
            keys = torch.where(firing, keys, torch.full_like(keys, -1.0))
            merged_keys = torch.cat([sample_keys, keys])
            sample_keys, order = merged_keys.topk(n_samples, dim=0)
            sample_values = torch.cat([sample_values, acts]).gather(0, order)
            sample_index = torch.cat([sample_index, flat_index[:, None].expand(-1, d_sae)]).gather(0, order)
            # histogram and counts over firing entries only
            token_pos, feature = firing.nonzero(as_tuple=True)
            values = acts[token_pos, feature]
            bins = (torch.bucketize(values, edges) - 1).clamp(0, n_bins - 1)
            hist.index_add_(0, feature * n_bins + bins, torch.ones_like(bins))
            fire_count += firing.sum(0)
            act_sum.index_add_(0, feature_ids, acts.sum(0).double())
            progress((b + 1) / n_batches, f"dashboards: batch {b + 1}/{n_batches}")
    top_index = torch.where(top_values > 0, top_index, torch.full_like(top_index, -1))
    sample_index = torch.where(sample_keys >= 0, sample_index, torch.full_like(sample_index, -1))
    seconds = time.perf_counter() - started
    n_tokens = n_seq * (context - 1)
    assert edges is not None
    meta = {
        "model_id": session.model_id,
        "sae": loaded.spec,
        "sae_identity": loaded.identity,
        "hook_name": loaded.hook_name,
        "corpus": windows.corpus,
        "documents": settings.documents,
        "corpus_digest": windows.digest,
        "settings": asdict(settings),
        "n_tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / seconds, 1),
    }
    return FeatureDashboards(
        tokens=windows.tokens,
        top_values=to_numpy(top_values.T).astype(np.float32),
        top_index=to_numpy(top_index.T).astype(np.int64),
        sample_values=to_numpy(sample_values.T).astype(np.float32),
        sample_index=to_numpy(sample_index.T).astype(np.int64),
        hist_counts=to_numpy(hist.reshape(d_sae, n_bins)).astype(np.int64),
        bin_edges=to_numpy(edges).astype(np.float32),
        fire_count=to_numpy(fire_count).astype(np.int64),
        act_sum=to_numpy(act_sum).astype(np.float64),
        meta=meta,
    )


def _log_edges(firing_values: Tensor, n_bins: int, device: torch.device) -> Tensor:
    """Log-spaced bin edges spanning the first batch's firing values with wide margins."""
    if firing_values.numel() == 0:
        low, high = 1e-3, 1e3
    else:
        low = max(float(firing_values.min()) / 10, 1e-6)
        high = float(firing_values.max()) * 10
    return torch.logspace(math.log10(low), math.log10(high), n_bins + 1, device=device)


def logit_effects(
    session: ModelSession, loaded: LoadedSAE, features: list[int] | None = None, k: int = 10, chunk: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top and bottom ``k`` tokens of each feature's decoder direction: (top ids, values, bottom ids, values).

    Each row W_dec[f] is decoded by ``session.decode_direction``: through the final norm's weight,
    then the unembedding, the same way the Jacobian probe reads a direction (Neuronpedia and
    SAEDashboard skip the norm's weight; for Gemma it rescales every dimension by 1 + w and can
    reorder the tokens). Computed in chunks of features.
    """
    ids = list(range(loaded.d_sae)) if features is None else [loaded.check_feature(f) for f in features]
    out: list[list[Tensor]] = [[], [], [], []]
    with torch.inference_mode():
        for start in range(0, len(ids), chunk):
            part = torch.tensor(ids[start : start + chunk], device=loaded.sae.W_dec.device)
            effects = session.decode_direction(loaded.sae.W_dec[part])
            top_v, top_i = effects.topk(k, dim=-1)
            bot_v, bot_i = effects.topk(k, dim=-1, largest=False)
            for slot, value in enumerate((top_i, top_v, bot_i, bot_v)):
                out[slot].append(value)
    top_i, top_v, bot_i, bot_v = (to_numpy(torch.cat(parts)) for parts in out)
    return top_i.astype(np.int64), top_v.astype(np.float32), bot_i.astype(np.int64), bot_v.astype(np.float32)


def quantile_groups(
    values: np.ndarray, index: np.ndarray, n_groups: int = 4, per_group: int = 3
) -> list[dict]:
    """Split a feature's sampled firings into ``n_groups`` activation quantile bands (highest first)."""
    valid = index >= 0
    values, index = values[valid], index[valid]
    if values.size == 0:
        return []
    order = np.argsort(-values, kind="stable")
    values, index = values[order], index[order]
    groups = []
    for g, chunk in enumerate(np.array_split(np.arange(values.size), min(n_groups, values.size))):
        if chunk.size == 0:
            continue
        low_q, high_q = 1 - (g + 1) / n_groups, 1 - g / n_groups
        picks = chunk[np.linspace(0, chunk.size - 1, min(per_group, chunk.size)).round().astype(int)]
        groups.append(
            {
                "label": f"quantile {low_q:.2f}-{high_q:.2f} "
                f"(act {values[chunk].min():.3g}-{values[chunk].max():.3g})",
                "values": values[picks].astype(np.float32),
                "index": index[picks].astype(np.int64),
            }
        )
    return groups
