"""Floor of the replications page (``replications``): the sum of its families' unavoidable work.

Each family re-measures its paper's claim with its own probe or reads numbers stored with an
artefact; the floor adds, family by family, the bare tensor work those measurements need:

- ``jacobian``: for each of the quick mode's phrases, the detached Jacobian's frozen linear map
  in float64 on a float64 copy of the plain HF model (``floor_jacobian_tight.py``: the recording
  forward, the contribution replay, the detach check, the SVD's products in the probe's own block
  schedule, the Hutchinson sketch of the stable rank, the decodes), sized from a warm-up run of
  the ``jacobian`` probe on that phrase at the family's config;
- ``shared_neurons``: the shared-neurons page's floor at the family's config (one batched forward
  of every scored prompt, then per ablation condition one batched forward of the held-out prompts);
- ``sae`` and ``neurosymbolic``: they read the held-out evaluations stored with the prepared
  artefacts; no model work, so nothing in the floor;
- ``future_lens``: its evaluation runs the fixed-prompt intervention, which has no floor here
  (``floor_future_lens_eval.py`` covers direct + linear only). The ``replications[floored]`` row
  therefore runs the other four families; the plain ``replications`` row (all five) gets the same
  floor marked not tight.

The check compares the probe's result with what the floor covered: the same phrases (n) for the
Jacobian claims, and the tight floor's own operator checks on every phrase.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.floor_jacobian_tight import tight_jacobian_floor
from lenslab.models import ModelSession
from lenslab.probes import get_probe

FLOORED = ("jacobian", "sae", "shared_neurons", "neurosymbolic")
"""The families the floor covers (``sae`` and ``neurosymbolic`` with no work: they read stored numbers)."""


def replications_floor(
    session: ModelSession,
    hf: torch.nn.Module,
    config: Any,
    shared_neurons_floor: Callable[[Any], Any],
) -> tuple[str, Callable[[], None], Callable[[Any], None], bool]:
    """(kind, run, check, tight) of the replications floor at the probe's ``config``."""
    from lenslab.probes.replications import jacobian, shared_neurons

    families = config.family_list()
    runs: list[Callable[[], None]] = []
    checks: list[Callable[[Any], None]] = []
    parts: list[str] = []
    if "jacobian" in families:
        hf64 = copy.deepcopy(hf).to(torch.float64)
        session64 = session.converted(torch.float64)
        probe, cfg = get_probe("jacobian"), jacobian.config()
        texts = jacobian.phrases(jacobian.PHRASES[config.mode])
        products = []
        for text in texts:
            tokens: Tensor = session.tokenize(text)
            result = probe.run(session64, text, cfg)  # sizes the SVD schedule, as on the Jacobian page
            _kind, run, check = tight_jacobian_floor(session64, hf64, tokens, result, cfg)
            runs.append(run)
            checks.append(check)
            products.append(result.svd_products)
        parts.append(f"jacobian: {len(texts)} phrases, float64 frozen map (SVD products {products})")

        def same_phrases(result: Any) -> None:
            pairs = zip(result.claims, result.outcomes, strict=True)
            counts = [o.n for c, o in pairs if c.family == "jacobian"]
            if not counts or any(n != len(texts) for n in counts):
                raise AssertionError(f"replications floor: the probe measured {counts} phrases")

        checks.append(same_phrases)
    if "shared_neurons" in families:
        floor = shared_neurons_floor(shared_neurons.config(config.mode))
        runs.append(floor.run)
        parts.append(f"shared_neurons: {floor.kind}")
    stored = [f for f in ("sae", "neurosymbolic") if f in families]
    if stored:
        parts.append(f"{' + '.join(stored)}: stored numbers, no model work")
    missing = [f for f in families if f not in FLOORED]
    if missing:
        parts.append(f"no floor: {', '.join(missing)}")

    def run_all() -> None:
        for run in runs:
            run()

    def check_all(result: Any) -> None:
        for check in checks:
            check(result)

    return "; ".join(parts), run_all, check_all, not missing
