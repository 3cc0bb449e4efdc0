"""Benchmark: sweep throughput (items/s) with 1 and 2 local Ray workers on the embedded model.

Each run is a logit-lens sweep over the built-in ``capitals`` prompts, shards of 2 items, on a
fresh local Ray with as many CPUs as workers (each actor: one CPU, one torch thread). Model
loading is excluded: the clock starts once every worker has finished a shard (so all have loaded
the model) and counts the items finished after that. Scaling efficiency = (items/s with 2) /
(2 × items/s with 1). The serial backend (in-process, this process's torch threads) is shown
for reference.
Writes bench/results/sweep.md.

Run: .venv/bin/python bench/bench_sweep.py [n_prompts]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, write
from lenslab.sweeps import Status, sweep

N_PROMPTS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
SHARD = 2
CONFIG = ("layers=0,17",)  # two decoded layers: the forward dominates, as in most sweeps


def steady_rate(backend: str, workers: int, folder: Path) -> tuple[float, int, float]:
    """Items/s after every worker finished its first shard; also the items counted and wall time."""
    marks: list[tuple[float, int, int]] = []

    def record(status: Status) -> None:
        marks.append((time.perf_counter(), status.items_done, status.shards_run))

    started = time.perf_counter()
    sweep(
        "logit_lens",
        "tasks:capitals",
        folder,
        limit=N_PROMPTS,
        shard_size=SHARD,
        config=CONFIG,
        backend=backend,
        workers=workers if backend == "ray" else None,
        on_status=record,
    )
    wall = time.perf_counter() - started
    warm = next(m for m in marks if m[2] >= workers)
    end = max(m for m in marks if m[2] > 0)
    items = end[1] - warm[1]
    return items / max(end[0] - warm[0], 1e-9), items, wall


def main() -> None:
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, backend, workers in (
            ("serial", "serial", 1),
            ("ray × 1", "ray", 1),
            ("ray × 2", "ray", 2),
        ):
            rows[label] = steady_rate(backend, workers, Path(tmp) / label.replace(" ", ""))
            print(label, rows[label], flush=True)
    one, two = rows["ray × 1"][0], rows["ray × 2"][0]
    load = os.getloadavg()[0]
    lines = [
        "## Sweeps: items/s with 1 vs 2 local Ray workers",
        "",
        f"Measured on {machine()}; load average {load:.1f} at the end. Embedded Gemma 3 270M, logit "
        f"lens (k=5, layers 0 and 17 decoded), {N_PROMPTS} `capitals` prompts, shards of {SHARD}. "
        "The machine has 2 cores shared with other jobs, so absolute rates are noisy; "
        "the efficiency is the figure to read.",
        "",
        "| backend | items/s (steady, model load excluded) | items counted | wall incl. start-up (s) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {k} | {r:.3f} | {n} | {w:.0f} |" for k, (r, n, w) in rows.items()]
    lines += ["", f"Speed-up 2 vs 1 Ray worker: {two / one:.2f}×; scaling efficiency {two / (2 * one):.0%}."]
    write("sweep", "\n".join(lines))


if __name__ == "__main__":
    main()
