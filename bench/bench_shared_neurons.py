"""Benchmark: unit scoring throughput (prompts/s) of the shared-neuron probe on the embedded model.

Baseline: one ``session.run`` per prompt caching every MLP hidden and head output (a full
[seq, vocab] logits tensor included), then reducing. Ours: the probe's streamed scorer
(right-padded batches, reduced inside the hooks, forward stopped before the unembedding), at
batch size 1 and 8. Also the answer-scoring pass (decode only the answer positions) against
full logits. Writes bench/results/shared_neurons.md.

Run: .venv/bin/python bench/bench_shared_neurons.py [n_prompts]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from lenslab.models import ModelSession, hooknames
from lenslab.probes.shared_neurons.tasks import exact_arithmetic
from lenslab.probes.shared_neurons.units import (
    answer_scores,
    encode_items,
    unit_statistics,
)

torch.set_num_threads(2)
OUT = Path(__file__).parent / "results" / "shared_neurons.md"


def naive_scores(session: ModelSession, items) -> torch.Tensor:
    """Per-prompt run_with_cache of all MLP hiddens and head outputs, reduced afterwards."""
    names = [hooknames.mlp_hidden(layer) for layer in range(session.n_layers)]
    names += [hooknames.attn_heads(layer) for layer in range(session.n_layers)]
    total = torch.zeros(session.n_layers, int(session.cfg.d_mlp), dtype=torch.float64)
    for item in items:
        run = session.run(item.prompt, names)
        for layer in range(session.n_layers):
            total[layer] += run.activations[hooknames.mlp_hidden(layer)][0, 1:].abs().sum(0).double().cpu()
    return total


def naive_answers(session: ModelSession, encoded) -> list[float]:
    """Full-logit teacher-forced log-probs, one prompt at a time."""
    out = []
    for enc in encoded:
        logits = session.run(torch.tensor([enc.ids], device=session.device)).logits[0].float().log_softmax(-1)
        positions = range(enc.prompt_len - 1, enc.prompt_len - 1 + enc.answer_len)
        out.append(sum(logits[p, enc.ids[p + 1]].item() for p in positions))
    return out


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Run the comparisons and write the markdown table."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    session = ModelSession.load()
    items = exact_arithmetic(n).items
    encoded = encode_items(session, items, with_answer=True)
    tokens = sum(e.prompt_len for e in encoded) / n
    unit_statistics(session, items[:2], batch_size=2)  # warm-up
    rows = []
    base = timed(lambda: naive_scores(session, items))
    rows.append(("scoring: run_with_cache per prompt (baseline)", base, 1.0))
    for batch in (1, 8):
        seconds = timed(lambda batch=batch: unit_statistics(session, items, batch_size=batch))
        rows.append((f"scoring: streamed, stop before unembed, batch {batch}", seconds, base / seconds))
    base_answers = timed(lambda: naive_answers(session, encoded))
    rows.append(("answer log-probs: full logits per prompt (baseline)", base_answers, 1.0))
    seconds = timed(lambda: answer_scores(session, encoded, batch_size=8))
    rows.append(("answer log-probs: answer positions only, batch 8", seconds, base_answers / seconds))
    lines = [
        "# Shared neurons: scoring throughput",
        "",
        f"Embedded {session.model_id} on {session.device} ({torch.get_num_threads()} threads), "
        f"{n} prompts of the exact-arithmetic set (mean {tokens:.0f} tokens); all 18 layers' MLP hiddens "
        "and head outputs scored. Wall times on a shared CPU: compare ratios within this run only.",
        "",
        "| pass | seconds | prompts/s | speed-up vs baseline |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {sec:.2f} | {n / sec:.2f} | {ratio:.2f}× |" for name, sec, ratio in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
