"""Corpus-scale fits as sharded jobs: map shards → mergeable state → merge, on one machine or Ray.

- :class:`FutureLensCollectJob` — the Future Lens dataset (greedy labels and hidden states of
  every prefix), shards concatenated in order: the same arrays as ``build_dataset``;
- :class:`FutureLensLinearJob` — the linear maps' sufficient statistics
  (:class:`~lenslab.probes.future_lens.sufficient.LinearStats`) over the training prefixes,
  summed across shards: the hidden states never leave the workers;
- :class:`UnitStatsJob` — the shared-neuron unit scores' streamed sums
  (:class:`~lenslab.probes.shared_neurons.units.UnitStats`), summed across shards.

- :class:`JacobianLensJob` — the Jacobian lens' running sums of per-prompt Jacobians
  (:class:`~lenslab.probes.jacobian_lens.fit.FitState`), added across shards (an exact,
  count-weighted mean).

A new fit is one small class with ``shards``, ``map_shard`` and ``merge``, run by :func:`run_job`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lenslab.sweeps.engine import (
    Backend,
    Shard,
    ShardedJob,
    State,
    Status,
    StatusCallback,
    execute,
    write_json,
)


def contiguous_shards(model: str, n: int, shard_size: int, prefix: str = "s") -> list[Shard]:
    """Shards of ``shard_size`` consecutive item indices 0..n-1 (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    return [
        Shard(f"{prefix}{i:06d}", model, tuple(range(begin, min(begin + shard_size, n))))
        for i, begin in enumerate(range(0, n, shard_size))
    ]


def run_job(
    job: ShardedJob,
    folder: str | Path,
    backend: str | Backend = "serial",
    *,
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    on_status: StatusCallback | None = None,
    key: str = "",
) -> tuple[State, Status]:
    """Run (or finish) ``job`` in ``folder`` and return its merged state.

    ``key`` identifies the job's inputs; a folder that holds shards of a job with another key is
    refused, so a resume never merges shards of different data.
    """
    from lenslab.sweeps.runner import make_backend

    folder = Path(folder)
    shards = job.shards()
    fingerprint = hashlib.sha256(
        json.dumps([job.kind, key, [(s.id, s.model, list(s.items)) for s in shards]]).encode()
    ).hexdigest()[:16]
    manifest = folder / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
        if recorded != fingerprint:
            raise ValueError(f"{folder} holds shards of another job ({recorded}); use a new folder")
    else:
        write_json(manifest, {"kind": job.kind, "fingerprint": fingerprint, "created": time.time()})
    runner = make_backend(backend, workers, address, gpus_per_worker) if isinstance(backend, str) else backend
    merged, _, status = execute(job, folder, runner, on_status)
    status.state = "done"
    write_json(folder / "status.json", status.to_dict())
    return merged, status


def _concatenate(states: Sequence[State], keys: Sequence[str]) -> State:
    return {key: np.concatenate([s[key] for s in states]) for key in keys}


# ------------------------------------------------------------------------------------ Future Lens
@dataclass(frozen=True)
class _PrefixJob:
    """Shards of consecutive Future Lens prefixes, each collected with ``data.collect``."""

    model: str
    prefix_ids: np.ndarray = field(repr=False)
    batch_size: int = 32
    shard_size: int = 64
    dtype: str = "float32"
    max_tokens: int = 512
    imports: tuple[str, ...] = ()

    def shards(self) -> list[Shard]:
        """Consecutive prefixes."""
        return contiguous_shards(self.model, len(self.prefix_ids), self.shard_size)

    def _collect(self, session: Any, shard: Shard) -> tuple[np.ndarray, Any, Any, Any]:
        """The shard's rows with their greedy labels, all-layer states and final states."""
        from lenslab.probes.future_lens.data import collect

        rows = np.asarray(shard.items, dtype=np.int64)
        with session.lock:
            labels, resid, final = collect(session, self.prefix_ids[rows], self.batch_size)
        return rows, labels, resid, final


@dataclass(frozen=True)
class FutureLensCollectJob(_PrefixJob):
    """Greedy labels and hidden states of every prefix, shard by shard."""

    kind: ClassVar[str] = "future_lens_data"

    def map_shard(self, session: Any, shard: Shard) -> State:
        """Collect the shard's prefixes."""
        rows, labels, resid, final = self._collect(session, shard)
        n_items = np.asarray(len(rows))
        return {"rows": rows, "labels": labels, "resid": resid, "final": final, "n_items": n_items}

    def merge(self, states: Sequence[State]) -> State:
        """Concatenate in shard order (= prefix order)."""
        return _concatenate(states, ("rows", "labels", "resid", "final"))


@dataclass(frozen=True)
class FutureLensLinearJob(_PrefixJob):
    """Sufficient statistics of the linear maps over the training prefixes, summed across shards."""

    kind: ClassVar[str] = "future_lens_linear"
    layers: tuple[int, ...] = field(default=(), kw_only=True)

    def map_shard(self, session: Any, shard: Shard) -> State:
        """Collect the shard's states and reduce them to their sums at once."""
        from lenslab.probes.future_lens.sufficient import LinearStats

        rows, _, resid, final = self._collect(session, shard)
        return {**LinearStats.of(resid, final, self.layers).to_state(), "n_items": np.asarray(len(rows))}

    def merge(self, states: Sequence[State]) -> State:
        """Add the statistics."""
        from lenslab.probes.future_lens.sufficient import LinearStats

        total = LinearStats.from_state(states[0])
        for state in states[1:]:
            total = total.merge(LinearStats.from_state(state))
        return total.to_state()


def _driver_session(model: str, dtype: str) -> Any:
    from lenslab.sweeps.models import open_session

    return open_session(model, dtype=dtype)


def collect_future_lens_data(
    model: str,
    folder: str | Path,
    settings: Any = None,
    backend: str | Backend = "serial",
    *,
    session: Any = None,
    shard_size: int = 64,
    **backend_options: Any,
) -> Any:
    """The :class:`FutureLensData` of ``settings``, collected shard by shard (same as ``build_dataset``).

    The prefixes are drawn on the driver (``session``, or ``model`` loaded here: the tokenizer is
    needed), the forwards run on the workers.
    """
    from lenslab.probes.future_lens.data import DataSettings, FutureLensData, sample_windows

    settings = settings or DataSettings()
    settings.validate()
    session = session or _driver_session(model, "float32")
    prefix_ids, doc_ids, is_test = sample_windows(session, settings)
    job = FutureLensCollectJob(model, prefix_ids, settings.batch_size, shard_size)
    key = settings.key(session.model_id)
    merged, _ = run_job(job, folder, backend, key=key, **backend_options)
    return FutureLensData(
        model_id=session.model_id,
        key=key,
        settings=settings,
        prefix_ids=prefix_ids,
        doc_ids=doc_ids,
        is_test=is_test,
        labels=merged["labels"],
        resid=merged["resid"],
        final=merged["final"],
        meta={"n_train": int((~is_test).sum()), "n_test": int(is_test.sum())},
    )


def fit_future_lens_linear(
    model: str,
    folder: str | Path,
    settings: Any = None,
    backend: str | Backend = "serial",
    *,
    session: Any = None,
    layers: Sequence[int] | None = None,
    ridge: float | None = None,
    toward_identity: bool = True,
    shard_size: int = 64,
    **backend_options: Any,
) -> Any:
    """Future Lens linear maps fitted on data collected shard by shard.

    ``ridge=None`` (the default, as in ``fit_linear_maps``) chooses each map's ridge on held-out
    training documents by the MSE after the final norm, which no sum of moments gives: the
    dataset is collected on the workers (:func:`collect_future_lens_data`) and fitted on the
    driver by ``fit_linear_maps`` itself, so the artefact is the single-process one. A fixed
    ``ridge`` needs only sufficient statistics: each worker reduces its prefixes' states to
    XᵀX, XᵀY and sums (:class:`FutureLensLinearJob`), so the states never leave the workers;
    those maps equal ``fit_linear_maps(ridge=...)`` up to summation order.
    """
    from lenslab.probes.future_lens.artefacts import ARTEFACT_FORMAT, training_provenance
    from lenslab.probes.future_lens.data import HORIZONS, DataSettings, FutureLensData, sample_windows
    from lenslab.probes.future_lens.linear import LinearMaps, fit_linear_maps
    from lenslab.probes.future_lens.sufficient import LinearStats

    settings = settings or DataSettings()
    settings.validate()
    session = session or _driver_session(model, "float32")
    chosen = tuple(session.check_layers(list(layers) if layers is not None else None))
    if ridge is None:
        data = collect_future_lens_data(
            model, folder, settings, backend, session=session, shard_size=shard_size, **backend_options
        )
        return fit_linear_maps(session, data, list(chosen), None, toward_identity=toward_identity)
    prefix_ids, doc_ids, is_test = sample_windows(session, settings)
    train = prefix_ids[~is_test]
    job = FutureLensLinearJob(model, train, settings.batch_size, shard_size, layers=chosen)
    key = f"{settings.key(session.model_id)}|{chosen}|ridge={ridge}"
    merged, _ = run_job(job, folder, backend, key=key, **backend_options)
    stats = LinearStats.from_state(merged)
    weight, x_mean, y_mean = stats.solve(ridge, toward_identity=toward_identity, device=session.device)
    empty = np.zeros((0,), dtype=np.float32)
    index = FutureLensData(  # the split alone (no states): what the provenance record needs
        model_id=session.model_id,
        key=settings.key(session.model_id),
        settings=settings,
        prefix_ids=prefix_ids,
        doc_ids=doc_ids,
        is_test=is_test,
        labels=empty,
        resid=empty,
        final=empty,
        meta={},
    )
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "linear",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "ridge": ridge,
        "ridge_chosen": [[ridge] * HORIZONS for _ in chosen],
        "ridge_grid": [],
        "toward_identity": toward_identity,
        "data_key": settings.key(session.model_id),
        "n_train": stats.n,
        "provenance": training_provenance(index, np.flatnonzero(~is_test)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "fitted_by": "sharded sufficient statistics",
    }
    return LinearMaps(list(chosen), list(range(HORIZONS)), weight, x_mean, y_mean, meta)


# --------------------------------------------------------------------------------- shared neurons
_UNIT_GROUPED = ("abs_all", "abs_answer", "head_all", "head_answer", "tokens_all", "tokens_answer")


@dataclass(frozen=True)
class UnitStatsJob:
    """Per-unit sums of the shared-neuron scores (``units.unit_statistics``), merged across shards.

    ``UnitStats`` keeps its sums per prompt group (prompt ``i`` in group ``i % groups``). A shard
    holds at most ``MAX_GROUPS`` prompts, so its own groups are single prompts; the merge adds each
    prompt's row into the group its index in the whole set gives, which is the single pass's sum.
    """

    kind: ClassVar[str] = "shared_neurons_unit_stats"
    model: str
    items: tuple[Any, ...]  # TaskItem
    batch_size: int = 8
    shard_size: int = 16
    dtype: str = "float32"
    max_tokens: int = 512
    imports: tuple[str, ...] = ()

    def shards(self) -> list[Shard]:
        """Consecutive prompts, at most ``MAX_GROUPS`` a shard."""
        from lenslab.probes.shared_neurons.units import MAX_GROUPS

        if self.shard_size > MAX_GROUPS:
            raise ValueError(f"shard_size must be ≤ {MAX_GROUPS} (one group per prompt in a shard)")
        return contiguous_shards(self.model, len(self.items), self.shard_size)

    def map_shard(self, session: Any, shard: Shard) -> State:
        """The shard's per-prompt sums (float64, moved to the CPU) and the prompts' indices."""
        from lenslab.probes.shared_neurons.units import unit_statistics

        stats = unit_statistics(session, [self.items[i] for i in shard.items], self.batch_size)
        state = {name: getattr(stats, name).cpu().numpy() for name in (*_UNIT_GROUPED, "signed_all")}
        state.update(
            index=np.asarray(shard.items, dtype=np.int64),
            seconds=np.asarray(stats.seconds),
            n_items=np.asarray(len(shard.items)),
        )
        return state

    def merge(self, states: Sequence[State]) -> State:
        """Add every prompt's row into its group of the whole set; add the ungrouped sums."""
        from lenslab.probes.shared_neurons.units import MAX_GROUPS

        groups = max(1, min(len(self.items), MAX_GROUPS))
        merged: State = {}
        for name in _UNIT_GROUPED:
            rows = states[0][name]
            total = np.zeros((groups, *rows.shape[1:]), dtype=rows.dtype)
            for state in states:
                np.add.at(total, state["index"] % groups, state[name])
            merged[name] = total
        for key in ("signed_all", "seconds", "n_items"):
            merged[key] = sum(s[key] for s in states[1:]) + states[0][key]
        return merged


def shared_neuron_unit_stats(
    model: str,
    items: Sequence[Any],
    folder: str | Path,
    backend: str | Backend = "serial",
    *,
    batch_size: int = 8,
    shard_size: int = 16,
    **backend_options: Any,
) -> Any:
    """``UnitStats`` of ``items`` computed shard by shard (the same sums as ``unit_statistics``)."""
    from lenslab.probes.shared_neurons.units import UnitStats

    job = UnitStatsJob(model, tuple(items), batch_size, shard_size)
    key = hashlib.sha256(json.dumps([[i.prompt, i.answer] for i in items]).encode()).hexdigest()[:16]
    merged, _ = run_job(job, folder, backend, key=key, **backend_options)
    sums = {name: torch.as_tensor(merged[name]) for name in (*_UNIT_GROUPED, "signed_all")}
    return UnitStats(**sums, seconds=float(merged["seconds"]))


# ---------------------------------------------------------------------------------- Jacobian lens
_JLENS_LISTS = ("documents", "skipped")


@dataclass(frozen=True)
class JacobianLensJob:
    """Per-prompt Jacobian sums of the lens fit (``jacobian_lens.fit.fit_shard``), added across shards.

    Shards are runs of the fit's training documents; each worker fits its documents exactly as
    the single-process fit would and returns the float64 sums, counts and document lists.
    """

    kind: ClassVar[str] = "jacobian_lens"
    model: str
    documents: tuple[int, ...]
    spec: Any  # FitSpec
    shard_size: int = 4
    dtype: str = "float32"
    max_tokens: int = 512
    imports: tuple[str, ...] = ()

    def shards(self) -> list[Shard]:
        """Consecutive training documents (items are positions in ``documents``)."""
        return contiguous_shards(self.model, len(self.documents), self.shard_size)

    def map_shard(self, session: Any, shard: Shard) -> State:
        """The shard's fit state as arrays."""
        from lenslab.probes.jacobian_lens.fit import fit_shard

        state = fit_shard(session, [self.documents[i] for i in shard.items], self.spec)
        return {
            "jacobian_sum": state.jacobian_sum.cpu().numpy(),
            "n_prompts": np.asarray(state.n_prompts),
            "n_positions": np.asarray(state.n_positions),
            "documents": np.asarray(state.documents, dtype=np.int64),
            "skipped": np.asarray(state.skipped, dtype=np.int64),
            "seconds": np.asarray(state.seconds),
            "n_items": np.asarray(len(shard.items)),
        }

    def merge(self, states: Sequence[State]) -> State:
        """Add sums and counts; concatenate the document lists in shard order."""
        merged = {k: sum(s[k] for s in states[1:]) + states[0][k] for k in ("jacobian_sum", "n_prompts")}
        merged.update({k: sum(s[k] for s in states[1:]) + states[0][k] for k in ("n_positions", "seconds")})
        merged["n_items"] = sum(s["n_items"] for s in states)
        for key in _JLENS_LISTS:
            merged[key] = np.concatenate([s[key] for s in states])
        return merged


def fit_jacobian_lens(
    model: str,
    folder: str | Path,
    documents: Sequence[int],
    spec: Any = None,
    backend: str | Backend = "serial",
    *,
    session: Any = None,
    shard_size: int = 4,
    **backend_options: Any,
) -> Any:
    """The Jacobian lens fit state of ``documents``, fitted shard by shard (same sums as ``fit_shard``).

    Every document is fitted (no early stop: a convergence rule needs the prompts in one order);
    the result has no convergence curve, as :func:`~lenslab.probes.jacobian_lens.fit.merge` says.
    """
    from lenslab.probes.jacobian_lens.fit import FitSpec, FitState

    spec = spec or FitSpec()
    spec.validate()
    session = session or _driver_session(model, "float32")
    job = JacobianLensJob(model, tuple(int(d) for d in documents), spec, shard_size)
    key = json.dumps([session.model_id, list(job.documents), list(spec.shape_key())])
    merged, _ = run_job(job, folder, backend, key=key, **backend_options)
    return FitState(
        model_id=session.model_id,
        spec=spec,
        jacobian_sum=torch.as_tensor(merged["jacobian_sum"]),
        n_prompts=int(merged["n_prompts"]),
        n_positions=int(merged["n_positions"]),
        documents=[int(d) for d in merged["documents"]],
        skipped=[int(d) for d in merged["skipped"]],
        seconds=float(merged["seconds"]),
    )
