"""Shared-neuron probe on the embedded Gemma 3 270M with the shipped task sets (kept small for CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.probes import get_probe
from lenslab.probes.shared_neurons.result import GAP_A, GAP_B, INTERACTION, SharedNeuronsConfig
from lenslab.probes.shared_neurons.stats import overlap_stats, rank_ks, top_units
from lenslab.probes.shared_neurons.tasks import approximate_arithmetic, capitals, exact_arithmetic
from lenslab.probes.shared_neurons.units import (
    answer_scores,
    encode_items,
    intervention_hooks,
    mlp_width,
    perturbed_weights,
    unit_groups,
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


@pytest.mark.timeout(1800)  # ~40 forwards of the embedded model, slow on a shared CPU
def test_exact_vs_approximate_arithmetic_end_to_end(embedded_session):
    """Held-out causal test, control pairs and dissociation statistics on the embedded model."""
    probe = get_probe("shared_neurons")
    config = SharedNeuronsConfig(n_prompts=4, top_k=20, batch_size=2, resamples=300)
    result = probe.run(embedded_session, "CI", config)
    assert result.k == 20 and result.n_units == 2048 and result.top_a.shape == (18, 20)
    assert np.isfinite(result.logprob).all() and result.logprob.shape == (6, 2, 2)
    # The unmodified condition is the plain teacher-forced score of each set's held-out prompts.
    for s, (items, held) in enumerate(
        ((exact_arithmetic(4).items, result.heldout_a), (approximate_arithmetic(4).items, result.heldout_b))
    ):
        assert not set(held) & set(result.select_a if s == 0 else result.select_b)
        chosen = [items[i] for i in held]
        plain = answer_scores(embedded_session, encode_items(embedded_session, chosen, with_answer=True))
        np.testing.assert_array_equal(result.logprob[0, s], plain.logprob)
        np.testing.assert_array_equal(result.correct[0, s], plain.correct)
    table = {(r["condition"], r["set"]): r for r in result.causal_table()}
    assert table["none", "exact_arithmetic"]["delta_logprob"] == 0.0
    assert table["A-only", "exact_arithmetic"]["delta_logprob"] != 0.0
    assert set(result.figures()) >= {
        "pairs",
        "overlap",
        "membership",
        "venn",
        "causal_logprob",
        "dissociation",
    }
    assert embedded_session.active_hook_count() == 0

    # Control pairs: two halves of exact arithmetic share more top units than exact arithmetic and
    # capitals (ceiling > floor), and the pair's estimate equals an independent recomputation from
    # separate prompt-only scoring passes over the same halves.
    pairs = {p.name: p for p in result.pairs}
    ceiling, floor = pairs["exact_arithmetic: two halves"], pairs["exact_arithmetic vs capitals"]
    assert ceiling.fraction.estimate > floor.fraction.estimate
    items = exact_arithmetic(4).items
    n = mlp_width(embedded_session)
    tops = [
        top_units(
            unit_scores(
                embedded_session,
                unit_statistics(embedded_session, [items[i] for i in half], 2),
                "answer",
                "activation",
            ),
            20,
        )
        for half in (result.select_a, result.heldout_a)
    ]
    recomputed = overlap_stats(tops[0], tops[1], n).total_fraction
    assert abs(recomputed - ceiling.fraction.estimate) <= 2 / (18 * 20)
    assert overlap_stats(tops[0], result.top_a, n).total_fraction >= 0.99  # same units (float ties aside)
    capitals_scores = unit_scores(
        embedded_session, unit_statistics(embedded_session, capitals(2).items, 2), "answer", "activation"
    )
    capitals_top = top_units(capitals_scores, 20)
    # The random controls are matched on the control task's scores: an independent scoring pass.
    np.testing.assert_allclose(result.match_scores, capitals_scores, rtol=1e-3, atol=1e-5)
    assert (
        abs(overlap_stats(result.top_a, capitals_top, n).total_fraction - floor.fraction.estimate) <= 2 / 360
    )
    for pair in result.pairs:
        assert pair.fraction.low <= pair.fraction.estimate <= pair.fraction.high
        assert pair.fraction.estimate > pair.chance  # every pair beats random subsets: that null is weak

    # Dissociation: the contrasts are the differences of the table's paired means, inside their intervals.
    gap_a = result.effects[GAP_A]
    direct = (
        table["A-only", "exact_arithmetic"]["delta_logprob"]
        - table["A-only", "approximate_arithmetic"]["delta_logprob"]
    )
    assert gap_a.estimate == pytest.approx(direct) and gap_a.low <= gap_a.estimate <= gap_a.high
    assert result.effects[INTERACTION].estimate == pytest.approx(
        gap_a.estimate + result.effects[GAP_B].estimate
    )
    assert result.verdict()[0] in ("holds", "partly", "does not hold")

    # The matched controls sit at their units' activation ranks on the control task (the statistic
    # they are matched on, measured on prompts that selected nothing), unlike a uniform draw outside A∪B.
    magnitude = result.match_scores
    groups = unit_groups(result.top_a, result.top_b, magnitude, config.seed)
    rng = np.random.default_rng(0)
    uniform = {
        layer: rng.choice(
            np.setdiff1d(np.arange(n), np.union1d(result.top_a[layer], result.top_b[layer])),
            len(groups["A-only"][layer]),
            replace=False,
        ).tolist()
        for layer in range(18)
    }
    matched_d, _ = rank_ks(groups["random-A"], groups["A-only"], magnitude)
    uniform_d, uniform_p = rank_ks(uniform, groups["A-only"], magnitude)
    # The A-only units are more active on the control task than a typical unit (uniform D ≈ 0.29):
    # a uniform draw is rejected, the matched draw (D ≈ 0.02) is not.
    assert matched_d < uniform_d / 5 and uniform_p < 1e-3
    assert result.control_ks["random-A"][0] == pytest.approx(matched_d)
    assert all(p > 0.05 for _, p in result.control_ks.values())  # both controls pass their KS check


def test_a_task_shares_every_top_unit_with_itself(embedded_session):
    same = SharedNeuronsConfig(
        set_b="exact_arithmetic", n_prompts=4, top_k=20, batch_size=2, causal=False, resamples=100
    )
    result = get_probe("shared_neurons").run(embedded_session, "self", same)
    np.testing.assert_array_equal(result.top_a, result.top_b)
    assert result.shared_fraction == 1.0 and (result.overlap_count == 20).all()
    assert result.pairs[0].fraction.estimate == 1.0


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
