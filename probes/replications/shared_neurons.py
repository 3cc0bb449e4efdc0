"""Shared-neuron claims, measured from a ``shared_neurons`` result on two arithmetic tasks.

The probe selects each task's top MLP units (mean |activation| at the answer position) on one
half of the prompts, reports their overlap with 95% intervals, compares it with a control task
(the matched null) and, with ``causal``, ablates units specific to one task on the held-out half.
Deviation: the overlap paper compared a language model with its vision-language sibling; here
the two sets are exact and approximate arithmetic on one model (StreetMath's pair).
"""

from __future__ import annotations

from lenslab.probes.replications.claims import Claim, ClaimOutcome, measured, not_measured
from lenslab.probes.shared_neurons.result import (
    INTERACTION,
    VS_FLOOR,
    SharedNeuronsConfig,
    SharedNeuronsResult,
)

OVERLAP_PAPER = "Do LLMs and VLMs share neurons (2026)"
STREETMATH = "StreetMath (2025)"

MAJORITY = Claim(
    key="shared_neurons.majority_shared",
    family="shared_neurons",
    paper=OVERLAP_PAPER,
    claim="more than 50% of the top units are shared",
    paper_value="> 50%",
    paper_model="LLM / VLM pairs of one architecture",
    measure="overlap |A∩B|/k of exact vs approximate arithmetic, all layers "
    "(deviation: two tasks, one model)",
    threshold=0.5,
    direction=">",
    unit="%",
)
ABOVE_NULL = Claim(
    key="shared_neurons.above_null",
    family="shared_neurons",
    paper=OVERLAP_PAPER,
    claim="the shared units are more than chance would share",
    paper_value="shared > chance (no null in the paper)",
    paper_model="LLM / VLM pairs of one architecture",
    measure="overlap of the task pair − overlap of a task with the control task (matched null), "
    "95% bootstrap",
    threshold=0.0,
    direction=">",
    unit="%",
)
DISSOCIATION = Claim(
    key="shared_neurons.dissociation",
    family="shared_neurons",
    paper=STREETMATH,
    claim="exact and approximate arithmetic use separate units: ablating one task's units hurts "
    "that task more",
    paper_value="dissociation (< 0: no number)",
    paper_model="the paper's models (see StreetMath)",
    measure="interaction (ΔA − ΔB | A-only ablated) + (ΔB − ΔA | B-only ablated) of log p(answer), "
    "held-out prompts, 95% bootstrap; < 0 is a dissociation",
    threshold=0.0,
    direction="<",
)
CLAIMS = (MAJORITY, ABOVE_NULL, DISSOCIATION)


def config(mode: str) -> SharedNeuronsConfig:
    """Exact vs approximate arithmetic with the causal test (16 prompts a set; full: 64)."""
    return SharedNeuronsConfig(n_prompts=64 if mode == "full" else 16, causal=True)


def outcomes(result: SharedNeuronsResult) -> list[ClaimOutcome]:
    """Measure the overlap, its excess over the null and the dissociation from one result."""
    pairs = [p for p in getattr(result, "pairs", []) if p.kind == "test"]
    out = []
    if pairs:
        pair = pairs[0]
        f = pair.fraction
        note = f"{pair.name}: k={result.k} units/layer; chance k/n = {100 * pair.chance:.2f}%"
        out.append(measured(MAJORITY, f.estimate, f.low, f.high, f.n, "prompts", note))
    else:
        out.append(not_measured(MAJORITY, "the result holds no task-pair overlap (mode 'models'?)"))
    null = getattr(result, "comparisons", {}).get(VS_FLOOR)
    if null is None:
        out.append(not_measured(ABOVE_NULL, "no control-pair comparison in this result"))
    else:
        note = f"{VS_FLOOR}; control task {result.config.control!r}"
        out.append(measured(ABOVE_NULL, null.estimate, null.low, null.high, null.n, "prompts", note))
    effect = getattr(result, "effects", {}).get(INTERACTION)
    if effect is None:
        out.append(not_measured(DISSOCIATION, "the causal test was not run (causal=False)"))
    else:
        note = f"{INTERACTION}; Δ = change of log p(answer) under zero-ablation, per held-out prompt"
        out.append(
            measured(DISSOCIATION, effect.estimate, effect.low, effect.high, effect.n, "prompts", note)
        )
    return out
