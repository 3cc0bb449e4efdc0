"""Shared-neuron probe on the embedded Gemma 3 270M with the shipped task sets (kept small for CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.probes import get_probe
from lenslab.probes.shared_neurons.result import SharedNeuronsConfig
from lenslab.probes.shared_neurons.tasks import capitals, exact_arithmetic
from lenslab.probes.shared_neurons.units import answer_scores, encode_items, perturbed_weights

pytestmark = pytest.mark.slow


def test_answer_positions_decode_like_full_logits(embedded_session):
    item = exact_arithmetic(1).items[0]
    (encoded,) = encode_items(embedded_session, [item], with_answer=True)
    assert encoded.answer_len == len(item.answer)  # Gemma splits " 85" into " ", "8", "5"
    scores = answer_scores(embedded_session, [encoded])
    logits = embedded_session.run(torch.tensor([encoded.ids])).logits[0].double().log_softmax(-1)
    positions = range(encoded.prompt_len - 1, len(encoded.ids) - 1)
    reference = sum(logits[p, encoded.ids[p + 1]].item() for p in positions)
    assert scores.logprob[0] == pytest.approx(reference, abs=1e-3)


def test_exact_vs_approximate_arithmetic_end_to_end(embedded_session):
    probe = get_probe("shared_neurons")
    config = SharedNeuronsConfig(n_prompts=3, top_k=20, batch_size=3)
    result = probe.run(embedded_session, "CI", config)
    assert result.k == 20 and result.n_units == 2048 and result.top_a.shape == (18, 20)
    # Two arithmetic tasks with the same operands share far more top units than random sets would.
    assert result.shared_fraction > 5 * result.chance_fraction
    assert result.total_p_value < 1e-10
    assert np.isfinite(result.logprob).all() and result.logprob.shape == (5, 2, 3)
    table = {(r["condition"], r["set"]): r for r in result.causal_table()}
    assert table["A-only", "exact_arithmetic"]["delta_logprob"] != 0.0
    assert set(result.figures()) >= {"overlap", "membership", "venn", "causal_logprob"}
    assert embedded_session.active_hook_count() == 0

    # A factual control shares fewer top units with exact arithmetic than approximate arithmetic does.
    control = probe.run(
        embedded_session,
        "CI control",
        SharedNeuronsConfig(
            set_b="capitals", n_prompts=3, top_k=20, batch_size=3, causal=False, positions="answer"
        ),
    )
    arithmetic = probe.run(
        embedded_session,
        "CI",
        SharedNeuronsConfig(n_prompts=3, top_k=20, batch_size=3, causal=False, positions="answer"),
    )
    assert control.shared_fraction < arithmetic.shared_fraction
    assert capitals(3).prompts == control.prompts_b


def test_perturbed_copy_on_embedded_model_restores_it(embedded_session):
    logits = embedded_session.run("The capital of France is").logits
    with perturbed_weights(embedded_session, 0.05, seed=0):
        assert not torch.equal(embedded_session.run("The capital of France is").logits, logits)
    assert torch.equal(embedded_session.run("The capital of France is").logits, logits)
