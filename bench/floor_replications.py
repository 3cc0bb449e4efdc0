"""Floor of the replications page (``replications``): the sum of its families' unavoidable work.

Each family re-measures its paper's claim with its own probe or reads numbers stored with an
artefact; the floor adds, family by family, the bare tensor work those measurements need:

- ``future_lens``: the Future Lens evaluation's floor (``floor_future_lens_eval.py``) at the
  family's config (``probes.replications.future_lens.config(mode)``; quick: 96 examples, 7 layers,
  direct + linear + the fixed prompt, free-running): the KV-cached greedy collection, the ridge
  selection and refit of the evaluated layers' maps, the batched decode of direct and linear, and
  the fixed prompt's intervention (the context's prefix once into a KV cache, every layer's test
  states transplanted in one batch, the cached greedy steps). The bench runs the probe in a home
  whose Future Lens artefacts start empty (``fresh_future_lens``), so the family collects and fits
  on every run, as on a first visit; with no saved learned prompt there, learned is skipped by
  the probe and by the floor alike;
- ``jacobian``: for each of the quick mode's phrases, the detached Jacobian's frozen linear map
  in float64 on a float64 copy of the plain HF model (``floor_jacobian_tight.py``: the recording
  forward, the contribution replay, the detach check, the SVD's products in the probe's own block
  schedule, the Hutchinson sketch of the stable rank, the decodes), sized from a warm-up run of
  the ``jacobian`` probe on that phrase at the family's config;
- ``shared_neurons``: the shared-neurons page's floor at the family's config (one batched forward
  of every scored prompt, then per ablation condition one batched forward of the held-out prompts);
- ``sae`` and ``neurosymbolic``: they read the held-out evaluations stored with the prepared
  artefacts; no model work, so nothing in the floor.

Every family has its floor, so the row is a tight floor over all five. The check compares the
probe's result with what the floor covered: the same phrases (n) for the Jacobian claims, the
tight floor's own operator checks on every phrase, and for Future Lens the evaluation floor's
check (``check_floor``: labels, states, maps, ridges and every cell's hits against a cold run of
the evaluation at the family's config).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.floor_future_lens_eval import EvalFloor, check_floor, fresh_future_lens
from bench.floor_jacobian_tight import tight_jacobian_floor
from lenslab.models import ModelSession
from lenslab.probes import get_probe

PROBE_HOME = fresh_future_lens
"""Where the bench runs the replications probe: Future Lens artefacts empty, the others stored."""


def replications_floor(
    session: ModelSession,
    hf: torch.nn.Module,
    config: Any,
    shared_neurons_floor: Callable[[Any], Any],
) -> tuple[str, Callable[[], None], Callable[[Any], None]]:
    """(kind, run, check) of the replications floor at the probe's ``config``."""
    from lenslab.probes.replications import future_lens, jacobian, shared_neurons

    families = config.family_list()
    runs: list[Callable[[], None]] = []
    checks: list[Callable[[Any], None]] = []
    parts: list[str] = []
    if "future_lens" in families:
        with fresh_future_lens():  # the learned prompts the floor loads are the probe's: none
            eval_floor = EvalFloor(session, hf, future_lens.config(config.mode))
        runs.append(eval_floor.run)
        parts.append(f"future_lens: {eval_floor.kind()}")

        def eval_check(_result: Any) -> None:
            print(f"future_lens family: {check_floor(eval_floor, get_probe('future_lens_eval'))}", flush=True)

        checks.append(eval_check)
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

    def run_all() -> None:
        for run in runs:
            run()

    def check_all(result: Any) -> None:
        for check in checks:
            check(result)

    return "; ".join(parts), run_all, check_all
