"""Detached-Jacobian (Golden 2025) claims, measured with the ``jacobian`` probe in float64.

The probe freezes every nonlinear coefficient on the input, builds J_i = ∂y/∂x_i of the
final-norm state y at the last position and checks y = Σ_i J_i x_i (+ b). The paper reports the
relative error below 1e-13 in float64 over 100 phrases; here the phrases are the opening words
of Python's documentation topics (offline), and the value is the largest error over them.
"""

from __future__ import annotations

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.base import get_probe
from lenslab.probes.future_lens.data import load_documents
from lenslab.probes.jacobian.result import JacobianConfig, JacobianResult
from lenslab.probes.replications.claims import Claim, ClaimOutcome, measured, not_measured
from lenslab.progress import NO_PROGRESS, Progress

PAPER = "Detached Jacobian (Golden 2025)"
MODELS = "several open models (Llama 3, Gemma, Qwen, ...), 100 phrases"
PHRASES = {"quick": 3, "full": 100}
WORDS = 10  # words per phrase
OVER_PHRASES = "largest over the phrases (the claim is for every phrase: no sampling interval; range shown)"

RECONSTRUCTION = Claim(
    key="jacobian.reconstruction",
    family="jacobian",
    paper=PAPER,
    claim="the detached Jacobian reconstructs the output exactly: ‖Σ J_i x_i − y‖/‖y‖ < 1e-13 in float64",
    paper_value="< 1e-13",
    paper_model=MODELS,
    measure=f"relative reconstruction error of the final-norm state, float64, {OVER_PHRASES}",
    threshold=1e-13,
    direction="<",
    log_scale=True,
)
UNCHANGED_LOGITS = Claim(
    key="jacobian.unchanged_logits",
    family="jacobian",
    paper=PAPER,
    claim="detaching the nonlinear coefficients leaves the model's logits unchanged",
    paper_value="unchanged (no number; lenslab's float64 tolerance 1e-12)",
    paper_model=MODELS,
    measure=f"max |detached − normal| / max |normal| over the logits, float64, {OVER_PHRASES}",
    threshold=1e-12,
    direction="<",
    log_scale=True,
)
CLAIMS = (RECONSTRUCTION, UNCHANGED_LOGITS)


def phrases(count: int) -> list[str]:
    """``count`` short phrases: the first words of Python's documentation topics (offline)."""
    docs = [" ".join(doc.split()[:WORDS]) for doc in load_documents("pydoc")]
    docs = [d for d in docs if len(d.split()) == WORDS]
    return docs[:count]


def config() -> JacobianConfig:
    """float64, matrix-free, no layer sweep: only the reconstruction and the logits are needed."""
    return JacobianConfig(
        dtype="float64", method="randomized", layer_sweep=False, n_components=1, max_tokens=128
    )


def run(session: ModelSession, mode: str, progress: Progress = NO_PROGRESS) -> list[JacobianResult]:
    """Run the jacobian probe on the mode's phrases (``progress`` may raise ``Cancelled``)."""
    probe, cfg = get_probe("jacobian"), config()
    texts = phrases(PHRASES[mode])
    results = []
    for i, text in enumerate(texts):
        progress(i / len(texts), f"Jacobian phrase {i + 1}/{len(texts)}")
        results.append(probe.run(session, text, cfg))
        progress((i + 1) / len(texts), f"Jacobian phrase {i + 1}/{len(texts)}")
    return results


def outcomes(results: list[JacobianResult]) -> list[ClaimOutcome]:
    """Measure both claims over the phrases' results."""
    if not results:
        return [not_measured(c, "no phrase was run") for c in CLAIMS]
    out = []
    for claim, name in ((RECONSTRUCTION, "reconstruction_error"), (UNCHANGED_LOGITS, "detach_error")):
        values = np.asarray([getattr(r, name) for r in results], dtype=np.float64)
        dtype = {r.dtype for r in results}
        note = (
            f"max over {len(values)} phrases, median {np.median(values):.2e}; dtype {'/'.join(sorted(dtype))}"
        )
        # low..high is the range over phrases: "holds" then means every phrase is below the bound
        out.append(measured(claim, values.max(), values.min(), values.max(), len(values), "phrases", note))
    return out
