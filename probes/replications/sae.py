"""SAE quality, read from the held-out evaluation stored with a lenslab-trained SAE.

``lenslab prepare`` (or the SAE page) trains a TopK SAE with sae-lens and evaluates it on
held-out documents: L0, explained variance and CE loss recovered, each with a 95% interval from
resampling documents, saved in the SAE folder's ``lenslab.json``. The project's paper notes state
no target numbers for these, so they are reported without a verdict.
"""

from __future__ import annotations

from lenslab.models.session import ModelSession
from lenslab.probes.replications.claims import Claim, ClaimOutcome, measured, not_measured
from lenslab.probes.sae.evaluation import HeldOutEvaluation
from lenslab.probes.sae.loading import list_trained, read_info, trained_dir

PAPER = "SAE features (sae-lens)"
NO_NUMBER = "— (no paper number)"
MEASURE = "held-out documents, 95% bootstrap over documents (stored by lenslab prepare)"


def _claim(key: str, text: str, unit: str = "") -> Claim:
    return Claim(
        key=f"sae.{key}",
        family="sae",
        paper=PAPER,
        claim=text,
        paper_value=NO_NUMBER,
        paper_model="—",
        measure=MEASURE,
        unit=unit,
    )


CLAIMS = (
    _claim("l0", "report L0 (active features per token)"),
    _claim("explained_variance", "report reconstruction quality (explained variance)", "%"),
    _claim("ce_recovered", "report CE loss recovered when the SAE is spliced in (vs zero-ablation)", "%"),
)


def outcomes(session: ModelSession) -> list[ClaimOutcome]:
    """Read the first trained SAE's held-out figures (``default`` first); not measured if none."""
    names = list_trained(session)
    if not names:
        why = f"no lenslab-trained SAE for {session.model_id} (run `lenslab prepare` or train one)"
        return [not_measured(c, why) for c in CLAIMS]
    name = names[0]
    evaluation = HeldOutEvaluation.from_info(read_info(trained_dir(session, name)))
    if evaluation is None:
        why = f"SAE {name!r} was saved before held-out evaluation (retrain it)"
        return [not_measured(c, why) for c in CLAIMS]
    out = []
    for claim in CLAIMS:
        metric = claim.key.removeprefix("sae.")
        if metric not in evaluation.estimates:
            out.append(not_measured(claim, f"{metric} not stored for SAE {name!r}"))
            continue
        interval = evaluation.interval(metric)
        n_units = evaluation.n_ce_positions if metric.startswith("ce_") else evaluation.n_tokens
        note = f"SAE {name!r}; {n_units} tokens from {evaluation.n_documents} held-out documents"
        out.append(
            measured(claim, interval.estimate, interval.low, interval.high, interval.n, "documents", note)
        )
    return out
