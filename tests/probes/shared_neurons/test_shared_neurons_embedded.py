"""Shared-neuron probe on the embedded Gemma 3 270M with the shipped task sets (kept small for CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.probes import get_probe
from lenslab.probes.shared_neurons.result import SharedNeuronsConfig
from lenslab.probes.shared_neurons.stats import overlap_stats, top_units
from lenslab.probes.shared_neurons.tasks import (
    approximate_arithmetic,
    builtin_names,
    capitals,
    exact_arithmetic,
)
from lenslab.probes.shared_neurons.units import (
    answer_scores,
    encode_items,
    intervention_hooks,
    mlp_width,
    perturbed_weights,
    unit_scores,
    unit_statistics,
)

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
    assert np.isfinite(result.logprob).all() and result.logprob.shape == (5, 2, 3)
    # The unmodified condition is the plain teacher-forced score of each set, prompt by prompt.
    for s, items in enumerate((exact_arithmetic(3).items, approximate_arithmetic(3).items)):
        plain = answer_scores(embedded_session, encode_items(embedded_session, items, with_answer=True))
        np.testing.assert_array_equal(result.logprob[0, s], plain.logprob)
        np.testing.assert_array_equal(result.correct[0, s], plain.correct)
    table = {(r["condition"], r["set"]): r for r in result.causal_table()}
    assert table["none", "exact_arithmetic"]["delta_logprob"] == 0.0
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


def test_a_task_shares_every_top_unit_with_itself(embedded_session):
    same = SharedNeuronsConfig(set_b="exact_arithmetic", n_prompts=3, top_k=20, batch_size=3, causal=False)
    result = get_probe("shared_neurons").run(embedded_session, "self", same)
    np.testing.assert_array_equal(result.top_a, result.top_b)
    assert result.shared_fraction == 1.0 and (result.overlap_count == 20).all()


def test_halves_of_one_task_share_more_than_a_control_task(embedded_session):
    """Two disjoint halves of exact arithmetic overlap more than arithmetic and capitals."""
    assert "capitals" in builtin_names()
    items = exact_arithmetic(6).items
    sets = {"first": items[:3], "second": items[3:], "capitals": capitals(3).items}
    assert not set(sets["first"]) & set(sets["second"])
    n = mlp_width(embedded_session)
    top = {
        name: top_units(
            unit_scores(embedded_session, unit_statistics(embedded_session, chosen, 3), "all", "activation"),
            20,
        )
        for name, chosen in sets.items()
    }
    within = overlap_stats(top["first"], top["second"], n).total_fraction
    across = overlap_stats(top["first"], top["capitals"], n).total_fraction
    assert within > across


def test_ablating_no_unit_or_scaling_by_one_leaves_log_probs_unchanged(embedded_session):
    encoded = encode_items(embedded_session, exact_arithmetic(3).items, with_answer=True)
    plain = answer_scores(embedded_session, encoded, batch_size=3)
    layers = range(embedded_session.n_layers)
    assert intervention_hooks({layer: [] for layer in layers}, "zero") == []
    every_unit = {layer: list(range(mlp_width(embedded_session))) for layer in layers}
    identity = intervention_hooks(every_unit, "amplify", alpha=1.0)
    assert len(identity) == embedded_session.n_layers  # the hooks are live, and change nothing
    np.testing.assert_array_equal(
        answer_scores(embedded_session, encoded, identity, 3).logprob, plain.logprob
    )
    zeroed = intervention_hooks({0: every_unit[0]}, "zero")
    assert not np.array_equal(answer_scores(embedded_session, encoded, zeroed, 3).logprob, plain.logprob)
    assert embedded_session.active_hook_count() == 0


def test_perturbed_copy_on_embedded_model_restores_it(embedded_session):
    logits = embedded_session.run("The capital of France is").logits
    with perturbed_weights(embedded_session, 0.05, seed=0):
        assert not torch.equal(embedded_session.run("The capital of France is").logits, logits)
    assert torch.equal(embedded_session.run("The capital of France is").logits, logits)
