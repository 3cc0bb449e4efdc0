"""Shared benchmark helpers: timing with warm-up, and writing results/<name>.md + RESULTS.md."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], object], repeat: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(fns: dict[str, Callable[[], object]], repeat: int = 7, warmup: int = 1) -> dict[str, float]:
    """Best (minimum) times of several functions, measured interleaved.

    On a shared, noisy CPU the minimum is the least-disturbed run of each; interleaving makes load
    changes hit every function alike, so the ratios stay meaningful.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def machine() -> str:
    """One line describing where the numbers were measured."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (
        f"{platform.machine()}, {torch.get_num_threads()} threads, {device}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def write(name: str, markdown: str) -> Path:
    """Save one benchmark's section and rebuild bench/RESULTS.md from all sections."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    sections = [p.read_text() for p in sorted(RESULTS.glob("*.md"))]
    header = (
        "# Benchmark results\n\nEach section is written by `bench/bench_<name>.py`; ratios compare "
        "against a baseline measured in the same run on the same machine.\n\n"
    )
    (RESULTS.parent / "RESULTS.md").write_text(header + "\n".join(sections))
    print(markdown)
    return path
