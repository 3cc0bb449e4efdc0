"""Neurosymbolic probe benchmarks on the embedded model: hidden-state collection and ridge fits.

1. Collection: ``collect`` (length-sorted right-padded batches, hooks on the residual streams only,
   forward stopped after the deepest needed layer, no unembedding) against the naive baseline of
   one ``session.run`` per prompt caching the same 18 residual streams (full logits).
2. Ridge: ``ridge_path`` (one eigendecomposition for five penalties) against five independent
   ``torch.linalg.solve`` fits, on collected hidden states; also the maximum weight difference.

Writes bench/results/neurosymbolic.md. Run: .venv/bin/python bench/bench_neurosymbolic.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lenslab.models import ModelSession  # noqa: E402
from lenslab.probes.neurosymbolic.fit import collect, ridge_path  # noqa: E402
from lenslab.probes.neurosymbolic.pipeline import ALPHAS  # noqa: E402
from lenslab.probes.neurosymbolic.readout import encode_prompts  # noqa: E402
from lenslab.probes.neurosymbolic.tasks import ALL_OPERATIONS, generate_tasks  # noqa: E402
from lenslab.probes.neurosymbolic.vsa import Codebook  # noqa: E402

N_PROMPTS = 48


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def main() -> None:
    session = ModelSession.load()
    tasks = generate_tasks(ALL_OPERATIONS, 100, N_PROMPTS // len(ALL_OPERATIONS) + 1, 2, shots=1, seed=0)
    prompts, problems = tasks.train_prompts[:N_PROMPTS], tasks.train[:N_PROMPTS]
    encoded = encode_prompts(session, prompts, problems)
    layers = list(range(session.n_layers))
    names = [session.resid_name(layer) for layer in layers]
    n_tokens = sum(len(s) for s in encoded.sequences)

    def naive():
        out = []
        for sequence in encoded.sequences:
            run = session.run(torch.tensor([sequence], device=session.device), names)
            out.append([run.activations[n][0, -1] for n in names])
        return out

    def batched():
        return collect(
            session, encoded.sequences, [[len(s) - 1] for s in encoded.sequences], layers, batch_size=16
        )

    naive_s, naive_states = timed(naive)
    batched_s, batched_states = timed(batched)
    # both read the same hidden states (last token, every layer)
    diff = max(
        float((batched_states.states[layer][i][0] - naive_states[i][layer]).abs().max())
        for i in range(len(prompts))
        for layer in layers
    )

    # ridge: collect the encoder inputs once, then compare solvers
    codebook = Codebook.build(2048, 0, 4, ALL_OPERATIONS, session.device)
    big = generate_tasks(ALL_OPERATIONS, 100, 30, 2, shots=1, seed=1)
    big_encoded = encode_prompts(session, big.train_prompts, big.train)
    states = collect(session, big_encoded.sequences, [[s] for s in big_encoded.starts], [6], batch_size=16)
    x = torch.stack([s[0] for s in states.states[6]])
    y = codebook.encode_problems(
        [p.first for p in big.train],
        [codebook.operation_index(p.operation) for p in big.train],
        [p.second for p in big.train],
    )

    def separate():
        xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
        gram = xc.T @ xc
        scale = float(gram.diagonal().sum()) / x.shape[1]
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        return [torch.linalg.solve(gram + a * scale * eye, xc.T @ yc) for a in ALPHAS]

    separate_s, separate_w = timed(separate, repeats=3)
    path_s, path_maps = timed(lambda: ridge_path(x, y, ALPHAS), repeats=3)
    ridge_diff = max(
        float((m.weight.double() - w).abs().max() / w.abs().max())
        for m, w in zip(path_maps, separate_w, strict=True)
    )

    lines = [
        "## Neurosymbolic probe",
        "",
        f"Embedded model {session.model_id} on {session.device}, {torch.get_num_threads()} threads; "
        f"{len(prompts)} one-shot prompts, {n_tokens} tokens in all.",
        "",
        "| what | baseline | lenslab | ratio |",
        "|---|---|---|---|",
        f"| collect 18 residual streams | one `session.run` per prompt: {naive_s:.2f} s | "
        f"batched `collect`, early stop: {batched_s:.2f} s | {naive_s / batched_s:.2f}× faster |",
        f"| ridge, {len(ALPHAS)} penalties, {x.shape[0]}×{x.shape[1]} → {y.shape[1]} | "
        f"{len(ALPHAS)} × `linalg.solve`: {separate_s * 1e3:.1f} ms | one `eigh` (`ridge_path`): "
        f"{path_s * 1e3:.1f} ms | {separate_s / path_s:.2f}× faster |",
        "",
        f"Same hidden states: max |Δ| = {diff:.2e}; same ridge weights: max relative |Δ| = {ridge_diff:.2e}. "
        f"Collection throughput: {n_tokens / batched_s:.0f} tokens/s batched vs {n_tokens / naive_s:.0f} "
        "tokens/s one by one.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "neurosymbolic.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
