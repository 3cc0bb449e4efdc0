"""Start, resume and finish sweeps: the manifest, the backend, the merged result and its report.

A sweep folder holds ``manifest.json`` (the spec: a :class:`SweepConfig`), ``prompts.json`` (the
prompts as read when it started, so a resume never depends on the source file again),
``shards/`` (one file per finished shard), ``status.json`` (progress, for the app) and, once all
shards are in, ``report/`` — a normal report (``report.json`` + ``arrays.npz`` + ``report.html``)
holding one :class:`SweepResult`.
"""

from __future__ import annotations

import importlib
import json
import shlex
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenslab.probes.sweep_result import SweepConfig, SweepResult, aggregate
from lenslab.sweeps.engine import BACKENDS, Backend, Status, StatusCallback, execute, write_json
from lenslab.sweeps.job import SweepJob, point_label
from lenslab.sweeps.models import check_model_spec
from lenslab.sweeps.sources import load_prompts

MANIFEST_FORMAT = 1
REPORT_DIR = "report"


def sweeps_dir() -> Path:
    """``$LENSLAB_HOME/sweeps``: where the app and the CLI put sweeps without an ``--out``."""
    from lenslab.models.paths import lenslab_home

    return lenslab_home() / "sweeps"


def new_sweep_folder() -> Path:
    """A fresh folder name under :func:`sweeps_dir` (time stamp + random suffix)."""
    return sweeps_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def make_backend(
    backend: str = "ray",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> Backend:
    """The backend by name: ``ray`` (local or ``address``/``$RAY_ADDRESS``) or ``serial``."""
    if backend == "serial":
        from lenslab.sweeps.serial import SerialBackend

        return SerialBackend()
    if backend == "ray":
        from lenslab.sweeps.ray_backend import RayBackend

        return RayBackend(workers, address=address, gpus_per_worker=gpus_per_worker)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def sweep(
    probes: str | Sequence[str],
    source: str,
    out: str | Path | None = None,
    *,
    models: Sequence[str] = (),
    config: Sequence[str] = (),
    grid: Sequence[str] = (),
    limit: int = 0,
    shard_size: int = 8,
    max_tokens: int = 512,
    dtype: str = "float32",
    imports: Sequence[str] = (),
    backend: str | Backend = "ray",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    on_status: StatusCallback | None = None,
    title: str = "",
) -> SweepResult:
    """Run ``probes`` over every prompt of ``source`` × grid points × models; write the report.

    ``source``: ``tasks:<set>``, ``corpus:pydoc``, or a .txt/.jsonl file. ``grid``: ``key=v1,v2``
    entries (cartesian product). The folder ``out`` (default: a new one in :func:`sweeps_dir`)
    receives the manifest, the shards as they finish and ``report/``. ``on_status`` receives a
    :class:`~lenslab.sweeps.engine.Status` after each shard and may raise ``Cancelled``; the
    folder can then be finished with :func:`resume`.
    """
    names = (probes,) if isinstance(probes, str) else tuple(probes)
    spec = SweepConfig(
        probes=tuple(p.strip() for n in names for p in n.split(",") if p.strip()),
        source=source,
        models=tuple(models),
        config=tuple(config),
        grid=tuple(grid),
        limit=limit,
        shard_size=shard_size,
        max_tokens=max_tokens,
        dtype=dtype,
        imports=tuple(imports),
    )
    folder = Path(out) if out is not None else new_sweep_folder()
    if (folder / "manifest.json").exists():
        raise FileExistsError(
            f"{folder} already holds a sweep: resume it with `lenslab sweep --resume {folder}`"
        )
    job = _job(spec, load_prompts(source, limit).texts)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "prompts.json", {"prompts": list(job.prompts)})
    write_json(
        folder / "manifest.json",
        {
            "format": MANIFEST_FORMAT,
            "kind": SweepJob.kind,
            "config": spec.to_dict(),
            "title": title,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_items": job.n_items,
        },
    )
    return _run(folder, job, backend, workers, address, gpus_per_worker, on_status, title)


def resume(
    folder: str | Path,
    *,
    backend: str | Backend = "ray",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    on_status: StatusCallback | None = None,
) -> SweepResult:
    """Finish an interrupted sweep: only shards without a file in ``folder/shards`` are run."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    spec = SweepConfig.from_dict(manifest["config"])
    prompts = json.loads((folder / "prompts.json").read_text(encoding="utf-8"))["prompts"]
    job = _job(spec, tuple(prompts))
    return _run(folder, job, backend, workers, address, gpus_per_worker, on_status, manifest.get("title", ""))


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a sweep folder; a folder without one is a ``FileNotFoundError``."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a sweep folder (no manifest.json)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("kind") != SweepJob.kind:
        raise ValueError(f"{path} is not a sweep manifest of format {MANIFEST_FORMAT}")
    return manifest


def _job(spec: SweepConfig, prompts: Sequence[str]) -> SweepJob:
    for module in spec.imports:
        importlib.import_module(module)
    for model in spec.models:
        check_model_spec(model)
    job = SweepJob(spec, tuple(prompts))
    job.check()
    return job


def _run(
    folder: Path,
    job: SweepJob,
    backend: str | Backend,
    workers: int | None,
    address: str | None,
    gpus_per_worker: float | None,
    on_status: StatusCallback | None,
    title: str,
) -> SweepResult:
    from lenslab.analyses.report import Report, provenance

    runner = make_backend(backend, workers, address, gpus_per_worker) if isinstance(backend, str) else backend
    merged, attempts, status = execute(job, folder, runner, on_status)
    result = build_result(job, merged, attempts, status)
    meta = {
        "title": title or f"Sweep: {', '.join(job.config.probes)}",
        "prompt": result.prompt,
        "model": result.model_id,
        "rerun": [rerun_command(job.config, folder)],
        **provenance(None),
    }
    report = Report([result], meta).save(folder / REPORT_DIR, overwrite=True)
    status.state, status.message = "done", str(report)
    write_json(folder / "status.json", status.to_dict())
    if on_status is not None:
        on_status(status.snapshot())
    return result


def build_result(
    job: SweepJob, merged: dict[str, np.ndarray], attempts: list[int], status: Status
) -> SweepResult:
    """The :class:`SweepResult` of a merged sweep state, with its aggregates."""
    shards = job.shards()
    item_attempts = np.ones(job.n_items, dtype=np.int64)
    for shard, tries in zip(shards, attempts, strict=True):
        item_attempts[list(shard.items)] = tries
    index = merged["item"]
    if not np.array_equal(index, np.arange(job.n_items)):
        raise ValueError("the merged shards do not cover every item exactly once")
    decoded = np.asarray([job.item(int(i)) for i in index], dtype=np.int64).reshape(-1, 4)
    n_points, n_probes = len(job.points), len(job.config.probes)
    combos = [(m, p, g) for m in range(len(job.models)) for p in range(n_probes) for g in range(n_points)]
    item_group = (decoded[:, 0] * n_probes + decoded[:, 1]) * n_points + decoded[:, 2]
    kinds = merged["metric_kinds"].tolist()
    estimate, low, high, n = aggregate(merged["values"], kinds, merged["status"], item_group, len(combos))
    model_ids = merged["model_ids"].tolist()
    return SweepResult(
        model_id=", ".join(model_ids),
        prompt=f"{job.config.source} ({len(job.prompts)} prompts)",
        config=job.config,
        prompts=list(job.prompts),
        models=model_ids,
        probes=list(job.config.probes),
        grid_labels=[point_label(p) for p in job.points],
        item_prompt=decoded[:, 3].copy(),
        item_model=decoded[:, 0].copy(),
        item_probe=decoded[:, 1].copy(),
        item_grid=decoded[:, 2].copy(),
        status=merged["status"].astype(np.int64),
        errors=[str(e) for e in merged["errors"].tolist()],
        attempts=item_attempts,
        metric_names=merged["metric_names"].tolist(),
        metric_kinds=kinds,
        metric_help=merged["metric_help"].tolist(),
        values=merged["values"],
        group_model=np.asarray([c[0] for c in combos], dtype=np.int64),
        group_probe=np.asarray([c[1] for c in combos], dtype=np.int64),
        group_grid=np.asarray([c[2] for c in combos], dtype=np.int64),
        estimate=estimate,
        low=low,
        high=high,
        n=n,
        backend=status.backend,
        workers=int(status.workers),
        seconds=float(status.updated - status.started),
        items_per_second=float(status.rate),
        retried_shards=int(sum(a - 1 for a in attempts)),
    )


def rerun_command(spec: SweepConfig, folder: Path) -> str:
    """The ``lenslab sweep`` command that runs this spec again (into ``<folder>-rerun``)."""
    parts = ["lenslab", "sweep", ",".join(spec.probes), "--source", spec.source]
    for model in spec.models:
        parts += ["--model", model]
    for pair in spec.config:
        parts += ["--config", pair]
    for entry in spec.grid:
        parts += ["--grid", entry]
    defaults = SweepConfig()
    for name, flag in (
        ("limit", "--limit"),
        ("shard_size", "--shard-size"),
        ("max_tokens", "--max-tokens"),
        ("dtype", "--dtype"),
    ):
        if getattr(spec, name) != getattr(defaults, name):
            parts += [flag, str(getattr(spec, name))]
    for module in spec.imports:
        parts += ["--import", module]
    return shlex.join([*parts, "--out", f"{folder}-rerun"])
