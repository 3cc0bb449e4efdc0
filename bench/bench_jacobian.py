"""Benchmark: lenslab's detached-Jacobian algorithms against the reference approach, same run.

Reference (Golden's implementation): ``torch.autograd.functional.jacobian(vectorize=True)`` on the
detached forward (here: the hook-based detached bridge forward) for the final-norm state at the
last position. Measured against it, on the embedded Gemma 3 270M, for prompts of 8, 16 and 32
tokens:

1. exact contributions J_i x_i of every token to every layer's residual/attention/MLP output at
   every position (one batched forward of the compiled operator) vs deriving the contributions of
   the single final target from the reference Jacobian;
2. the full Jacobian by batched adjoint (VJP) products vs the reference;
3. the top-24 singular values by matrix-free randomized block-Krylov SVD vs materialise-then-SVD
   (materialised both ways: with lenslab's fast Jacobian, and with the reference).

Peak memory is the process RSS high-water mark above the level before each call, sampled every
5 ms. Run: ``.venv/bin/python bench/bench_jacobian.py [--lengths 8 16 32] [--threads 2]``;
writes ``bench/results/jacobian.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lenslab.models import ModelSession
from lenslab.probes.detached import COMPONENTS, detached, record_coefficients, target_hook
from lenslab.probes.jacobian_linear import LinearizedModel, contributions, jacobian, randomized_svd

TEXT = (
    "The Eiffel Tower is located in the city of Paris, which is the capital of France. Every year "
    "millions of visitors climb its stairs, take the lifts to the top and look out over the river and "
    "the old streets of the city below, before they go back down to the"
)
RESULTS = Path(__file__).parent / "results" / "jacobian.md"
RANK = 24
BLOCK = 48
ITERATIONS = 2


class PeakMemory:
    """RSS high-water mark (MiB above the starting RSS) sampled by a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        """Prepare a sampler; use as a context manager."""
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        """Start sampling."""
        self._base = self._rss()
        self.peak = self._base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        """Peak growth in MiB."""
        return (self.peak - self._base) / 2**20


def measure(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, float, Any]:
    """(best seconds, peak MiB, value) of ``fn`` over ``repeats`` runs."""
    best, peak, value = float("inf"), 0.0, None
    for _ in range(repeats):
        with PeakMemory() as memory:
            started = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - started
        best, peak = min(best, elapsed), max(peak, memory.mib)
    return best, peak, value


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def bench_length(session: ModelSession, length: int, repeats: int) -> dict[str, Any]:
    """All measurements for one prompt length."""
    tokens = session.tokenize(TEXT)[:, :length]
    if tokens.shape[-1] < length:
        raise ValueError(f"the bench text has only {tokens.shape[-1]} tokens")
    row: dict[str, Any] = {"tokens": length}
    row["forward_s"], _, _ = measure(lambda: session.run(tokens), repeats=2)
    row["record_s"], _, coefficients = measure(lambda: record_coefficients(session, tokens))
    model = LinearizedModel(session, coefficients)
    inputs = coefficients.inputs
    target = "ln_final.hook_out"

    # Reference: autograd jacobian(vectorize=True) of the detached forward.
    def reference() -> torch.Tensor:
        with detached(session, coefficients) as hooked:
            fn = lambda x: hooked(x[None])[target][0, -1]  # noqa: E731
            return torch.autograd.functional.jacobian(fn, inputs[0], vectorize=True)

    row["reference_s"], row["reference_mib"], full_ref = measure(reference)
    ref_contrib = torch.einsum("osi,si->so", full_ref, inputs[0])

    # 1. Contributions of every token to every layer part at every position.
    names = [target] + [
        target_hook(session, layer, part) for layer in range(session.n_layers) for part in COMPONENTS
    ]
    row["contrib_s"], row["contrib_mib"], (contrib, _) = measure(
        lambda: contributions(model, inputs, names), repeats=repeats
    )
    row["contrib_err"] = relative(contrib[target][:, -1], ref_contrib)
    row["contrib_targets"] = len(names) * length

    # 2. Full Jacobian by batched adjoint products.
    row["jacobian_s"], row["jacobian_mib"], full = measure(
        lambda: jacobian(model, inputs, target, -1), repeats=repeats
    )
    row["jacobian_err"] = relative(full, full_ref)

    # 3. Top-24 SVD: matrix-free vs materialise-then-SVD.
    d_out = full.shape[0]
    row["svd_of_j_s"], _, exact = measure(lambda: torch.linalg.svdvals(full.reshape(d_out, -1)))
    row["rsvd_s"], row["rsvd_mib"], (_, values, _) = measure(
        lambda: randomized_svd(model, inputs, target, -1, rank=RANK, block=RANK, iterations=5),
        repeats=repeats,
    )
    row["rsvd_err"] = float(((values.double() - exact[:RANK].double()).abs() / exact[:RANK].double()).max())
    row["stable_rank"] = float(exact.double().square().sum() / exact[0].double().square())
    row["sigma"] = [round(float(v), 3) for v in exact[:6]]
    return row


def write(rows: list[dict[str, Any]], threads: int, device: str) -> str:
    """Markdown table of the measurements and ratios."""
    lines = [
        "# Detached-Jacobian benchmark (embedded Gemma 3 270M)",
        "",
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {threads}, "
        f"device {device}; machine shared with other jobs (timings noisy: compare ratios within a row).",
        "Reference = `torch.autograd.functional.jacobian(vectorize=True)` of the detached forward "
        "(final-norm state, last position).",
        "",
        "| tokens | forward | reference J | contributions (all layers×parts×positions) | ratio | "
        "adjoint J | ratio | top-24 rSVD | vs own J+SVD | vs ref J+SVD | rel. errors (contrib / J / σ) | "
        "peak MiB ref / contrib / J / rSVD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        own = r["jacobian_s"] + r["svd_of_j_s"]
        ref = r["reference_s"] + r["svd_of_j_s"]
        lines.append(
            f"| {r['tokens']} | {r['forward_s']:.2f} s | {r['reference_s']:.1f} s | {r['contrib_s']:.2f} s "
            f"({r['contrib_targets']} targets) | **{r['reference_s'] / r['contrib_s']:.0f}×** | "
            f"{r['jacobian_s']:.1f} s | **{r['reference_s'] / r['jacobian_s']:.2f}×** | "
            f"{r['rsvd_s']:.1f} s | "
            f"**{own / r['rsvd_s']:.2f}×** | {ref / r['rsvd_s']:.2f}× | "
            f"{r['contrib_err']:.1e} / {r['jacobian_err']:.1e} / {r['rsvd_err']:.1e} | "
            f"{r['reference_mib']:.0f} / {r['contrib_mib']:.0f} / {r['jacobian_mib']:.0f} / "
            f"{r['rsvd_mib']:.0f} |"
        )
    lines += ["", "Stable rank and top singular values of J (final-norm state, last position):", ""]
    for r in rows:
        lines.append(f"- {r['tokens']} tokens: stable rank {r['stable_rank']:.2f}, σ₁…σ₆ = {r['sigma']}")
    lines += [
        "",
        f"rSVD: randomized block Krylov, block {BLOCK}, {ITERATIONS} iterations "
        f"({BLOCK * (ITERATIONS + 1)} adjoint + {BLOCK * (2 * ITERATIONS + 1)} forward "
        "products vs 640 adjoint rows to materialise J). 'forward' = one normal forward of the prompt "
        "through the bridge (with unembedding), as a yardstick for machine load.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and write the markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    session = ModelSession.load()
    rows = []
    for length in args.lengths:
        row = bench_length(session, length, args.repeats)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(write(rows, args.threads, str(session.device)))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
