"""Future Lens (Pal et al. 2023) claims, measured from a ``future_lens_eval`` result.

Every number is top-1 accuracy at N=1 (the token after next, the paper's headline horizon)
against the model's own greedy continuation, with 95% intervals from resampling test documents.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, FutureLensEvalResult
from lenslab.probes.replications.claims import Claim, ClaimOutcome, measured, not_measured
from lenslab.probes.stats import bootstrap_by_group

PAPER = "Future Lens (Pal et al. 2023)"
GPTJ = "GPT-J-6B"
HORIZON = 1  # N=1: the token at t+2
ORDER = ("learned", "fixed", "linear", "direct")  # the paper's ranking, strongest first
BEST_LAYER = "best layer of each method at N=1 (chosen on the test split, so each value is optimistic)"

ORDERING = tuple(
    Claim(
        key=f"future_lens.{a}_gt_{b}",
        family="future_lens_eval",
        paper=PAPER,
        claim=f"{a} beats {b} (learned prompt > fixed prompt > linear > direct projection)",
        paper_value=f"{a} > {b}",
        paper_model=GPTJ,
        measure=f"top-1 at N=1, {a} − {b}, {BEST_LAYER}",
        threshold=0.0,
        direction=">",
        unit="%",
    )
    for a, b in itertools.pairwise(ORDER)
)
BEST_TOP1 = Claim(
    key="future_lens.best_top1",
    family="future_lens_eval",
    paper=PAPER,
    claim="the best method and layer reach > 48% top-1 for N=1",
    paper_value="> 48%",
    paper_model=GPTJ,
    measure="top-1 at N=1, the best (method, layer) cell (chosen on the test split: optimistic)",
    threshold=0.48,
    direction=">",
    unit="%",
)
BEATS_BIGRAM = Claim(
    key="future_lens.beats_bigram",
    family="future_lens_eval",
    paper=PAPER,
    claim="a bigram baseline reaches 20.1% at N=1, well below the hidden-state methods",
    paper_value="20.1% (bigram) vs > 48%",
    paper_model=GPTJ,
    measure="top-1 at N=1, best (method, layer) cell − the bigram baseline of the training documents",
    threshold=0.0,
    direction=">",
    unit="%",
)
CLAIMS = (*ORDERING, BEST_TOP1, BEATS_BIGRAM)


def config(mode: str) -> FutureLensEvalConfig:
    """Quick: a few hundred examples on 7 layers; full: the paper's 10k train / 1k test prefixes."""
    if mode == "full":
        return FutureLensEvalConfig(n_examples=11000, test_fraction=1 / 11, layers=None)
    return FutureLensEvalConfig(n_examples=96, prefix_tokens=12)


def outcomes(result: FutureLensEvalResult) -> list[ClaimOutcome]:
    """Measure every Future Lens claim from one evaluation result."""
    top1 = result.precision[:, :, HORIZON, 0]  # [method, layer]
    top1_ci = result.precision_ci[:, :, HORIZON, 0]  # type: ignore[index]
    n_docs = int(result.n_documents)
    out = [_ordering(claim, result, top1, top1_ci) for claim in ORDERING]
    if not np.isfinite(top1).any():
        why = "no method was evaluated at N=1"
        return [*out, not_measured(BEST_TOP1, why), not_measured(BEATS_BIGRAM, why)]
    m, i = np.unravel_index(np.nanargmax(top1), top1.shape)
    cell = f"{result.methods[m]} at layer {int(result.layers[i])}"
    out.append(
        measured(BEST_TOP1, top1[m, i], *top1_ci[m, i], n_docs, "documents", f"{cell}; {result.split_text()}")
    )
    bigram, bigram_ci = float(result.bigram[HORIZON, 0]), result.bigram_ci[HORIZON, 0]  # type: ignore[index]
    diff, low, high, how = _difference(result, (m, i), None, top1, top1_ci, bigram, bigram_ci)
    note = f"{cell} − bigram {100 * bigram:.1f}% [{100 * bigram_ci[0]:.1f}, {100 * bigram_ci[1]:.1f}]; {how}"
    out.append(measured(BEATS_BIGRAM, diff, low, high, n_docs, "documents", note))
    return out


def _ordering(
    claim: Claim, result: FutureLensEvalResult, top1: np.ndarray, top1_ci: np.ndarray
) -> ClaimOutcome:
    a, b = claim.key.removeprefix("future_lens.").split("_gt_")
    for name in (a, b):
        if name not in result.methods or not np.isfinite(top1[result.methods.index(name)]).any():
            why = (
                "no learned prompt is saved for this model (train one on the Future Lens page)"
                if name == "learned"
                else f"method {name!r} was not evaluated"
            )
            return not_measured(claim, why)
    ma, mb = result.methods.index(a), result.methods.index(b)
    la, lb = int(np.nanargmax(top1[ma])), int(np.nanargmax(top1[mb]))
    diff, low, high, how = _difference(result, (ma, la), (mb, lb), top1, top1_ci)
    note = (
        f"{a} L{int(result.layers[la])} {100 * top1[ma, la]:.1f}% vs {b} L{int(result.layers[lb])} "
        f"{100 * top1[mb, lb]:.1f}%; {how}"
    )
    return measured(claim, diff, low, high, int(result.n_documents), "documents", note)


def _difference(
    result: FutureLensEvalResult,
    first: tuple[int, int],
    second: tuple[int, int] | None,
    top1: np.ndarray,
    top1_ci: np.ndarray,
    bigram: float = math.nan,
    bigram_ci: np.ndarray | None = None,
) -> tuple[float, float, float, str]:
    """Difference of two top-1 cells (``second`` None: the bigram) and its 95% interval.

    With per-example hits on the result (``hits`` [method, layer, example, N, k], ``bigram_hits``,
    ``doc_ids``) the interval is a paired bootstrap over test documents. Without them (this
    version's result keeps only each cell's own interval) it combines the two intervals' half
    widths in quadrature, which treats the cells as independent: wider than the paired interval
    when, as here, both are scored on the same examples.
    """
    hits, docs = getattr(result, "hits", None), getattr(result, "doc_ids", None)
    b_hits = getattr(result, "bigram_hits", None)
    if hits is not None and docs is not None and (second is not None or b_hits is not None):
        a = np.asarray(hits[first[0], first[1], :, HORIZON, 0], dtype=np.float64)
        b = (
            np.asarray(hits[second[0], second[1], :, HORIZON, 0], dtype=np.float64)
            if second is not None
            else np.asarray(b_hits[:, HORIZON, 0], dtype=np.float64)  # type: ignore[index]
        )
        interval = bootstrap_by_group(a - b, np.asarray(docs), unit="documents")
        return interval.estimate, interval.low, interval.high, "paired bootstrap over test documents"
    va, (la, ha) = float(top1[first]), top1_ci[first]
    if second is not None:
        vb, (lb, hb) = float(top1[second]), top1_ci[second]
    else:
        vb, (lb, hb) = bigram, bigram_ci  # type: ignore[misc]
    half = math.hypot((ha - la) / 2, (hb - lb) / 2)
    diff = va - vb
    return (
        diff,
        diff - half,
        diff + half,
        "interval from the two cells' intervals in quadrature (independence assumed; the result "
        "holds no per-example hits for a paired bootstrap)",
    )
