"""Jacobian lens (J-lens, Gurnee et al. 2026): states read through the corpus-average Jacobian.

For every layer ``l``, J̄_l is the mean over corpus prompts of the Jacobian of the final residual
stream (after the last block, before the final norm) with respect to the layer-``l`` residual
stream, with the reference implementation's per-prompt estimator. A state is read out as
``J̄_l @ h_l`` through the final norm and unembedding. Modules: ``estimator`` (exact per-prompt
and per-state Jacobians), ``fit`` (mergeable running mean, checkpoint/resume, stopping rule,
``fit_shard`` / ``merge`` for distributed fits), ``artefacts`` (the saved lens and its owner
check), ``evaluation`` (top-1 agreement with the model on held-out documents), ``probe``.
"""

from __future__ import annotations

from lenslab.models.session import ModelSession
from lenslab.probes.jacobian_lens.artefacts import JacobianLens, lens_path
from lenslab.probes.jacobian_lens.estimator import instance_jacobians, prompt_jacobians
from lenslab.probes.jacobian_lens.fit import FitSpec, FitState, fit, fit_shard, merge, training_documents
from lenslab.probes.jacobian_lens.probe import JacobianLensConfig, JacobianLensProbe, JacobianLensResult
from lenslab.progress import NO_PROGRESS, Progress

PREPARE_PROMPTS = 2
PREPARE_SPEC = FitSpec(seq_len=16, skip_first=4, min_prompts=PREPARE_PROMPTS, max_prompts=PREPARE_PROMPTS)
"""What ``lenslab prepare`` fits: :data:`PREPARE_PROMPTS` training prompts of 16 tokens (first 4 skipped).

The exact fit costs d_model backward rows per window token (about 640 × 16 per prompt here), so
on a CPU the reference specification (128-token windows, ≥ 100 prompts) takes hours. A fixed
prompt count (not a time budget) makes the prepared lens the same on every machine and under any
load; the count and the deviations are recorded with the lens."""


def prepare_default_artefacts(session: ModelSession, progress: Progress = NO_PROGRESS) -> dict[str, object]:
    """Fit and save a quick J-lens when the model has none (an existing lens is kept)."""
    path = lens_path(session.model_id)
    if path.is_file():
        lens = JacobianLens.load(session)
        progress(1.0, "J-lens already fitted")
        return {"path": str(path), "n_prompts": lens.provenance.get("n_prompts")}
    from lenslab.probes.sae.corpus import corpus_texts

    texts = corpus_texts(PREPARE_SPEC.corpus)
    state = fit_shard(
        session,
        training_documents(len(texts)),
        PREPARE_SPEC,
        texts=texts,
        stop_when_converged=True,
        progress=progress,
    )
    JacobianLens.from_state(state).save(path)
    return {"path": str(path), "n_prompts": state.n_prompts, "seconds": round(state.seconds, 1)}


__all__ = [
    "PREPARE_PROMPTS",
    "PREPARE_SPEC",
    "FitSpec",
    "FitState",
    "JacobianLens",
    "JacobianLensConfig",
    "JacobianLensProbe",
    "JacobianLensResult",
    "fit",
    "fit_shard",
    "instance_jacobians",
    "lens_path",
    "merge",
    "prepare_default_artefacts",
    "prompt_jacobians",
    "training_documents",
]
