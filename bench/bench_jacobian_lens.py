"""J-lens benchmark on the embedded model: fit cost per prompt, convergence, held-out agreement.

1. Cost: the forward pass of one window (the floor, measured in the same run) against the mean
   time of one prompt's exact J̄ estimate during the fit (one forward with graph +
   d_model/dim_batch vmapped backwards).
2. Fit: :func:`lenslab.probes.jacobian_lens.fit` on the training documents with windows of
   ``JL_SEQ`` tokens (``JL_SKIP`` skipped), checkpointed to ``JL_CHECKPOINT`` (resumed when it
   exists) and stopped after ``JL_SECONDS`` of fitting or by the reference stopping rule.
3. Agreement: J-lens vs logit-lens top-1 agreement with the model's prediction per layer on
   ``JL_EVAL_DOCS`` held-out documents, 95% bootstrap intervals over documents.

Run: ``.venv/bin/python bench/bench_jacobian_lens.py`` (writes bench/results/jacobian_lens.md and
the convergence and agreement figures as JSON beside it).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("LENSLAB_THREADS", "2")))

SEQ = int(os.environ.get("JL_SEQ", "16"))
SKIP = int(os.environ.get("JL_SKIP", "4"))
SECONDS = float(os.environ.get("JL_SECONDS", "600"))
EVAL_DOCS = int(os.environ.get("JL_EVAL_DOCS", "12"))
CHECKPOINT = Path(os.environ.get("JL_CHECKPOINT", "/tmp/lenslab_jlens_bench_state.pt"))


def main() -> None:
    """Measure, fit (or resume), evaluate, write the results."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module
    from bench.common import RESULTS, machine, write
    from lenslab.models import ModelSession
    from lenslab.probes.jacobian_lens import FitSpec, JacobianLens, fit_shard, training_documents
    from lenslab.probes.jacobian_lens.evaluation import evaluate_agreement
    from lenslab.probes.jacobian_lens.fit import FitState
    from lenslab.probes.jacobian_lens.probe import convergence_figure
    from lenslab.probes.sae.corpus import corpus_texts, split_documents

    session = ModelSession.load()
    texts = corpus_texts("python-docs")
    spec = FitSpec(seq_len=SEQ, skip_first=SKIP, min_prompts=100, max_prompts=1000)
    lines = ["## Jacobian lens (J-lens)", "", f"Measured on {machine()}. Embedded Gemma 3 270M, float32.", ""]

    tokens = session.tokenize(texts[training_documents(len(texts))[0]])[:, :SEQ]
    session.capture(tokens, [session.resid_name(session.n_layers - 1)])  # warm-up
    started = time.perf_counter()
    session.capture(tokens, [session.resid_name(session.n_layers - 1)])
    forward = time.perf_counter() - started

    state = FitState.load(CHECKPOINT) if CHECKPOINT.is_file() else None
    if state is not None and state.spec != spec:  # a checkpoint of another stopping rule: keep its sums
        spec = replace(state.spec)
    state = fit_shard(
        session,
        training_documents(len(texts)),
        spec,
        texts=texts,
        checkpoint=CHECKPOINT,
        checkpoint_every=1,
        stop_when_converged=True,
        max_seconds=SECONDS,
    )
    lens = JacobianLens.from_state(state)
    per = state.seconds / max(state.n_prompts, 1)
    lines += [
        f"Cost: the forward pass of one {SEQ}-token window takes {forward:.2f} s (the floor); one prompt's "
        f"exact J̄ estimate took {per:.0f} s on average = {per / forward:.0f}× the forward "
        f"(d_model = {session.d_model} cotangent rows, {spec.dim_batch} per vmapped backward).",
        "",
        f"Fit: {state.n_prompts} prompts, {state.n_positions} positions, {state.seconds:.0f} s of fitting "
        f"({per:.0f} s per prompt); smoothed relative change {state.smoothed_change():.2e} "
        f"(stopping tolerance {spec.tol:g}); converged: {state.converged}.",
        f"Relative change per prompt: {', '.join(f'{c:.2e}' for c in state.rel_change)}.",
        "",
    ]
    _, held = split_documents(len(texts))
    agreement = evaluate_agreement(
        session, lens, held[:EVAL_DOCS], texts, seq_len=spec.seq_len, skip_first=SKIP
    )
    lines += [
        f"Held-out agreement ({agreement.n_documents} documents, {agreement.n_positions} positions, "
        f"windows of {spec.seq_len} tokens, positions {SKIP}…{spec.seq_len - 2}; "
        "95% bootstrap over documents). "
        f"Lens: {lens.describe()}.",
        "",
        agreement.table_markdown(),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jacobian_lens_convergence.json").write_text(
        convergence_figure(lens.rel_change, spec.tol).to_json()
    )
    (RESULTS / "jacobian_lens_agreement.json").write_text(agreement.figure().to_json())
    write("jacobian_lens", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
