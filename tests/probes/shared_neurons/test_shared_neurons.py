"""Shared-neuron probe on tiny random models: overlap maths, streaming scores, hooks, model checks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.models.tiny import tiny_session
from lenslab.probes import get_probe
from lenslab.probes.shared_neurons.figures import KIND_NAMES
from lenslab.probes.shared_neurons.probe import planned_forwards
from lenslab.probes.shared_neurons.result import (
    GAP_A,
    GAP_B,
    INTERACTION,
    RELATIVE,
    SPECIFIC_A,
    SPECIFIC_B,
    VS_CEILING,
    VS_FLOOR,
    SharedNeuronsConfig,
    SharedNeuronsResult,
)
from lenslab.probes.shared_neurons.stats import (
    GroupedScores,
    bootstrap_contrasts,
    bootstrap_overlaps,
    expected_overlap,
    format_p,
    magnitude_ranks,
    matched_sample,
    matched_samples,
    overlap_p_value,
    overlap_stats,
    percentile_interval,
    rank_ks,
    top_units,
    total_overlap_p_value,
)
from lenslab.probes.shared_neurons.tasks import (
    TaskItem,
    approximate_arithmetic,
    capitals,
    exact_arithmetic,
    load_task_set,
    opposites,
    parse_jsonl,
    parse_lines,
    round_to_ten,
    split_indices,
)
from lenslab.probes.shared_neurons.units import (
    UnitStats,
    answer_scores,
    check_same_architecture,
    encode_items,
    head_output_weight,
    intervention_hooks,
    perturbed_weights,
    unit_groups,
    unit_statistics,
)
from lenslab.probes.stats import Interval
from lenslab.progress import Cancelled

PROMPTS = [
    TaskItem("12 + 7 =", " 19"),
    TaskItem("3 + 4 =", " 7"),
    TaskItem("a", " b"),
    TaskItem("hello there!", " x"),
]
PROMPTS += [TaskItem("45 + 10 = 55, 2 + 2 =", " 4")]


# ------------------------------------------------------------------------------------ overlap maths
def test_overlap_hand_worked_case():
    stats = overlap_stats([[0, 1, 2]], [[1, 2, 3]], n=10)
    assert stats.count.tolist() == [2]
    assert stats.fraction[0] == pytest.approx(2 / 3)
    assert stats.jaccard[0] == pytest.approx(2 / 4)
    assert stats.expected[0] == pytest.approx(0.9)  # k²/n = 9/10
    # P(X ≥ 2) for X ~ Hypergeom(N=10, K=3, n=3): (C(3,2)C(7,1) + C(3,3)) / C(10,3) = 22/120
    assert stats.p_value[0] == pytest.approx(22 / 120)
    assert stats.total_p_value == pytest.approx(22 / 120)
    identical = overlap_stats([[4, 5]], [[5, 4]], n=6)
    assert identical.fraction[0] == 1.0 and identical.jaccard[0] == 1.0
    assert identical.p_value[0] == pytest.approx(1 / math.comb(6, 2))
    disjoint = overlap_stats([[0, 1]], [[2, 3]], n=6)
    assert disjoint.count[0] == 0 and disjoint.p_value[0] == pytest.approx(1.0)


def test_total_p_value_matches_enumeration():
    """The convolved per-layer laws equal brute-force enumeration of all subset pairs."""
    n, k = 6, 2
    subsets = list(itertools.combinations(range(n), k))
    per_layer = [len(set(a) & set(b)) for a in subsets for b in subsets]
    totals = [x + y for x in per_layer for y in per_layer]
    for observed in range(0, 5):
        brute = sum(t >= observed for t in totals) / len(totals)
        assert total_overlap_p_value(n, [k, k], [k, k], observed) == pytest.approx(brute)
    assert expected_overlap(n, k, k) == pytest.approx(np.mean(per_layer))
    assert overlap_p_value(n, k, k, 1) == pytest.approx(np.mean([x >= 1 for x in per_layer]))


def test_overlap_rejects_bad_input():
    with pytest.raises(ValueError, match="same"):
        overlap_stats([[0]], [[0], [1]], n=4)
    with pytest.raises(ValueError, match="out of range"):
        overlap_stats([[0, 9]], [[0, 1]], n=4)
    with pytest.raises(ValueError, match="k="):
        top_units(np.zeros((2, 4)), 5)


def test_top_units_order_and_ties():
    scores = np.asarray([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_units(scores, 2).tolist() == [[1, 3], [0, 1]]


def test_unit_groups_partition_and_control():
    top_a, top_b = np.asarray([[0, 1, 2, 3]]), np.asarray([[2, 3, 4, 5]])
    magnitude = -np.arange(20, dtype=float)[None]  # unit u has rank u
    groups = unit_groups(top_a, top_b, magnitude, seed=0)
    assert groups["shared"][0] == [2, 3]
    assert groups["A-only"][0] == [0, 1] and groups["B-only"][0] == [4, 5]
    # Ranks 0-5 are taken, so both controls share the four nearest free ranks 6-9, one unit each per
    # selected unit, disjoint from each other and from A∪B.
    assert sorted(groups["random-A"][0] + groups["random-B"][0]) == [6, 7, 8, 9]
    assert len(groups["random-A"][0]) == len(groups["random-B"][0]) == 2
    assert unit_groups(top_a, top_b, magnitude, seed=0) == groups


def test_joint_controls_leave_neither_control_the_leftover_ranks():
    """Drawn jointly, both controls are as close to their units; drawn one after the other, B lost.

    A-only and B-only units sit at the same crowded ranks, so a control drawn second finds the
    nearest free ranks taken. Over many layers the joint draw gives both controls the same mean
    rank gap; the old sequential draw (A first) gives B a gap several ranks larger.
    """
    rng = np.random.default_rng(1)
    n_layers, n_units, k = 40, 200, 10
    gaps = {"joint": {"random-A": [], "random-B": []}, "sequential": {"random-A": [], "random-B": []}}
    for layer in range(n_layers):
        magnitude = rng.normal(size=n_units)
        order = np.argsort(-magnitude)  # order[r] has rank r
        a_only = order[rng.choice(np.arange(0, 40, 2), k, replace=False)].tolist()
        b_only = order[rng.choice(np.arange(1, 40, 2), k, replace=False)].tolist()
        ranks = magnitude_ranks(magnitude)
        selected = {"random-A": a_only, "random-B": b_only}
        joint = matched_samples(selected, set(a_only) | set(b_only), magnitude, np.random.default_rng(layer))
        first = matched_sample(a_only, set(a_only) | set(b_only), magnitude, np.random.default_rng(layer))
        taken = set(a_only) | set(b_only) | set(first)
        second = matched_sample(b_only, taken, magnitude, np.random.default_rng(layer))
        for name, drawn in (("joint", joint), ("sequential", {"random-A": first, "random-B": second})):
            assert not set(drawn["random-A"]) & set(drawn["random-B"])
            for control, units in selected.items():
                gaps[name][control].append(np.mean(ranks[drawn[control]]) - np.mean(ranks[units]))
    mean = {name: {c: float(np.mean(v)) for c, v in g.items()} for name, g in gaps.items()}
    assert abs(mean["joint"]["random-A"] - mean["joint"]["random-B"]) < 1.5
    assert mean["sequential"]["random-B"] - mean["sequential"]["random-A"] > 2.5


def test_matched_control_has_the_rank_distribution_of_the_selected_units():
    """KS test on within-layer ranks: the matched control passes, the old uniform draw outside A∪B fails."""
    rng = np.random.default_rng(0)
    n_layers, n_units = 12, 2048
    magnitude = rng.lognormal(size=(n_layers, n_units))
    ranks = np.argsort(np.argsort(-magnitude, axis=-1), axis=-1)
    selected, excluded, old = {}, {}, {}
    for layer in range(n_layers):
        by_rank = np.argsort(ranks[layer])
        top = rng.choice(by_rank[:200], size=20, replace=False)  # strongly active, task-selected units
        other = rng.choice(by_rank[:400], size=20, replace=False)
        selected[layer] = sorted(int(u) for u in top)
        excluded[layer] = set(selected[layer]) | {int(u) for u in other}
        outside = np.setdiff1d(np.arange(n_units), sorted(excluded[layer]))
        old[layer] = sorted(int(u) for u in rng.choice(outside, size=20, replace=False))
    matched = {
        layer: matched_sample(
            selected[layer], excluded[layer], magnitude[layer], np.random.default_rng(layer)
        )
        for layer in range(n_layers)
    }
    for layer in range(n_layers):
        assert len(matched[layer]) == 20 and not set(matched[layer]) & excluded[layer]
    _, p_matched = rank_ks(matched, selected, magnitude)
    _, p_old = rank_ks(old, selected, magnitude)
    assert p_matched > 0.5
    assert p_old < 1e-10
    # Independent check: the mean rank of the matched units is within a few ranks of the selected ones.
    mean_rank = lambda groups: np.mean([ranks[layer][u] for layer, units in groups.items() for u in units])  # noqa: E731
    assert abs(mean_rank(matched) - mean_rank(selected)) < 5 < abs(mean_rank(old) - mean_rank(selected))


def test_probe_controls_are_rank_matched_on_the_control_task(tiny_gemma, lenslab_home):
    """On the tiny model the random controls pass the KS check on the statistic they are matched on.

    The statistic is the control task's activation, which selected no unit. The old protocol
    (matched on the pooled selection score, whose top ranks *are* the selected units) fails the
    same check on the same run: that is what the probe no longer does.
    """
    config = SharedNeuronsConfig(n_prompts=8, top_k=12, batch_size=4, resamples=100)
    result = get_probe("shared_neurons").run(tiny_gemma, "", config)
    assert "capitals" in result.control_match
    assert result.match_scores.shape == result.mlp_scores_a.shape
    assert not np.allclose(result.match_scores, (result.mlp_scores_a + result.mlp_scores_b) / 2)
    groups = unit_groups(result.top_a, result.top_b, result.match_scores, config.seed)
    for control, selected in (("random-A", "A-only"), ("random-B", "B-only")):
        d, p = rank_ks(groups[control], groups[selected], result.match_scores)
        assert (d, p) == pytest.approx(result.control_ks[control])  # the stored check is this one
        assert p > 0.05, (control, d, p)
        for layer, units in groups[control].items():  # disjoint from every selected unit
            assert not set(units) & (set(result.top_a[layer]) | set(result.top_b[layer]))
    pooled = (result.mlp_scores_a.astype(np.float64) + result.mlp_scores_b) / 2
    old = unit_groups(result.top_a, result.top_b, pooled, config.seed)
    _, p_old = rank_ks(old["random-A"], old["A-only"], pooled)
    assert p_old < 0.05  # matched on the selection score itself, the control cannot match
    assert result.selection_ks["random-A"][1] < 0.05  # and the probe says so, on its own controls


# ---------------------------------------------------------------------------- control pairs, bootstrap
def _task_scores(rng, generic, specific, n_prompts, key, noise=0.6):
    """Per-prompt unit scores: generic always-on units + this task's own units + per-prompt noise."""
    sums = generic[None] + specific[None] + noise * rng.gamma(2.0, 0.5, (n_prompts, *generic.shape))
    return GroupedScores(sums, np.ones(n_prompts), key)


def test_same_task_halves_overlap_more_than_a_task_and_its_control():
    """On a constructed case the ceiling pair (two halves of a task) beats the floor pair (task vs control).

    Task A and control C share the same generic units but have their own specific units; the
    overlap of A's halves should therefore exceed that of A and C, with disjoint intervals, and
    both beat the random-subset chance level k/n (which is why that null is too weak).
    """
    rng = np.random.default_rng(1)
    n_layers, n_units, k = 6, 400, 20
    generic = np.zeros((n_layers, n_units))
    generic[:, :8] = 5.0  # always-on units, strong for every task
    specific_a, specific_c = np.zeros_like(generic), np.zeros_like(generic)
    specific_a[:, 100:120] = 3.0
    specific_c[:, 200:220] = 3.0
    sets = [
        _task_scores(rng, generic, specific_a, 12, "A selection"),
        _task_scores(rng, generic, specific_a, 12, "A held-out"),
        _task_scores(rng, generic, specific_c, 12, "control"),
    ]
    counts = bootstrap_overlaps(sets, [(0, 1), (0, 2)], k, resamples=300, seed=0)
    fractions = counts.sum(-1) / (n_layers * k)
    ceiling = percentile_interval(
        overlap_stats(top_units(sets[0].mean(), k), top_units(sets[1].mean(), k), n_units).total_fraction,
        fractions[:, 0],
        12,
        "prompts",
    )
    floor = percentile_interval(
        overlap_stats(top_units(sets[0].mean(), k), top_units(sets[2].mean(), k), n_units).total_fraction,
        fractions[:, 1],
        12,
        "prompts",
    )
    assert ceiling.low > floor.high
    assert floor.low > k / n_units  # generic units alone beat random subsets
    assert ceiling.low <= ceiling.estimate <= ceiling.high and floor.low <= floor.estimate <= floor.high


def test_bootstrap_overlaps_equal_a_brute_force_resampling():
    """The pruned, vectorised bootstrap equals recomputing every resample's top-k from scratch."""
    rng = np.random.default_rng(2)
    sets = [
        GroupedScores(
            rng.integers(0, 1000, (7, 3, 50)).astype(float), rng.integers(1, 4, 7).astype(float), key
        )
        for key in ("x", "y", "x")  # the first and last share prompts: one draw for both
    ]
    pairs, k, resamples = [(0, 1), (0, 2), (1, 2)], 6, 40
    fast = bootstrap_overlaps(sets, pairs, k, resamples=resamples, seed=3)
    draw = np.random.default_rng(3)
    weights = {key: draw.multinomial(7, np.full(7, 1 / 7), size=resamples) for key in ("x", "y")}
    for r in range(resamples):
        tops = []
        for scores in sets:
            w = weights[scores.key][r]
            means = np.einsum("g,glu->lu", w, scores.sums) / (w @ scores.counts)
            tops.append([set(np.argsort(-row, kind="stable")[:k].tolist()) for row in means])
        for p, (i, j) in enumerate(pairs):
            assert fast[r, p].tolist() == [len(a & b) for a, b in zip(tops[i], tops[j], strict=True)]
    with pytest.raises(ValueError, match="different numbers of groups"):
        bootstrap_overlaps([sets[0], GroupedScores(sets[0].sums[:3], sets[0].counts[:3], "x")], [(0, 1)], k)


def _synthetic_effects(rng, n):
    """Per-prompt ablation effects with known means: A-only hurts A most, B-only hurts B most."""
    conditions = ["none", "A-only", "B-only"]
    true = {("A-only", 0): -2.0, ("A-only", 1): -0.5, ("B-only", 1): -1.5, ("B-only", 0): -0.2}
    delta = np.zeros((3, 2, n))
    for (condition, s), mean in true.items():
        delta[conditions.index(condition), s] = mean + rng.normal(0, 1.0, n)
    return delta, conditions


DISSOCIATION = {
    "gap A": {("A-only", 0): 1.0, ("A-only", 1): -1.0},
    "gap B": {("B-only", 1): 1.0, ("B-only", 0): -1.0},
    "interaction": {("A-only", 0): 1.0, ("A-only", 1): -1.0, ("B-only", 1): 1.0, ("B-only", 0): -1.0},
    "null": {("none", 0): 1.0, ("none", 1): -1.0},
}
TRUE_CONTRASTS = {"gap A": -1.5, "gap B": -1.3, "interaction": -2.8, "null": 0.0}


def test_dissociation_interval_covers_a_known_difference_and_excludes_zero():
    """Over repeated synthetic experiments the 95% intervals cover the true contrasts ~95% of the time."""
    rng = np.random.default_rng(4)
    covered = {name: 0 for name in TRUE_CONTRASTS}
    repeats, n = 60, 120
    for _ in range(repeats):
        delta, conditions = _synthetic_effects(rng, n)
        out = bootstrap_contrasts(delta, conditions, DISSOCIATION, resamples=400, seed=int(rng.integers(1e6)))
        for name, value in TRUE_CONTRASTS.items():
            covered[name] += out[name].low <= value <= out[name].high
        assert out["interaction"].high < 0  # the effect (−2.8, SE ≈ 0.26) is far from 0 every time
        assert out["gap A"].n == n
    for name, hits in covered.items():
        assert hits / repeats >= 0.85, (name, hits)  # nominal 0.95; binomial sd ≈ 0.03
    delta, conditions = _synthetic_effects(np.random.default_rng(5), 300)
    out = bootstrap_contrasts(delta, conditions, DISSOCIATION, resamples=1000, seed=0)
    # The interval width matches the analytic standard error of a difference of two means (±25%).
    width = out["gap A"].high - out["gap A"].low
    assert width == pytest.approx(2 * 1.96 * np.sqrt(2 / 300), rel=0.25)
    with pytest.raises(ValueError, match="names no measured effect"):
        bootstrap_contrasts(delta, conditions, {"bad": {("random-A", 0): 1.0}})


def test_p_values_print_without_zero_or_long_floats():
    assert format_p(0.0) == "< 1e-300"
    assert format_p(1e-320) == "< 1e-300"
    assert format_p(3.14159e-12) == "3.1e-12"
    assert format_p(0.0312345) == "0.031"
    assert format_p(float("nan")) == "—"


# ---------------------------------------------------------------------------------------- task sets
def test_split_is_disjoint_covering_and_seeded():
    select, held = split_indices(9, seed=0)
    assert not set(select) & set(held) and sorted(select + held) == list(range(9))
    assert len(select) == 4 and len(held) == 5
    assert split_indices(9, seed=0) == (select, held) and split_indices(9, seed=1) != (select, held)
    task = exact_arithmetic(12)
    select, held = split_indices(12, seed=0)
    assert not set(task.subset(select, "s").prompts) & set(task.subset(held, "h").prompts)
    with pytest.raises(ValueError, match="at least 4"):
        split_indices(3, seed=0)


def test_builtin_sets_have_correct_answers():
    exact, approx = exact_arithmetic(10, seed=3), approximate_arithmetic(10, seed=3)
    operands = {}
    for name, task, sign in (("exact", exact, "="), ("approx", approx, "≈")):
        operands[name] = []
        for item in task.items:
            x, y = map(int, item.prompt.rsplit("\n", 1)[-1].rstrip(f" {sign}").split(" + "))
            operands[name].append((x, y))
            assert item.answer == (f" {x + y}" if sign == "=" else f" {round_to_ten(x + y)}")
    # Distinct problems within a set, and no operand pair shared between the two sets.
    assert len(set(operands["exact"])) == 10 and len(set(operands["approx"])) == 10
    assert not set(operands["exact"]) & set(operands["approx"])
    assert exact_arithmetic(25, seed=3).items[:10] == exact.items  # growing n keeps the first items
    assert round_to_ten(85) == 90 and round_to_ten(84) == 80 and round_to_ten(5) == 10
    assert exact_arithmetic(5, seed=1).items != exact_arithmetic(5, seed=2).items
    for task in (capitals(), opposites()):
        assert task.has_answers and len(task.items) >= 20
        assert len(set(task.prompts)) == len(task.items)


def test_parse_typed_and_jsonl(tmp_path):
    typed = parse_lines("# comment\n2 + 2 => 4\n\nFrance:\\nParis is in =>France\nno answer here")
    assert typed.items == (
        TaskItem("2 + 2", " 4"),
        TaskItem("France:\nParis is in", " France"),
        TaskItem("no answer here"),
    )
    assert not typed.has_answers
    lines = [json.dumps({"prompt": "a b", "answer": " c"}), "", json.dumps({"prompt": "d"})]
    loaded = parse_jsonl("\n".join(lines))
    assert loaded.items == (TaskItem("a b", " c"), TaskItem("d", ""))
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    assert load_task_set(str(path), n=1).items == (TaskItem("a b", " c"),)
    text_path = tmp_path / "set.txt"
    text_path.write_text("x => y\n", encoding="utf-8")
    assert load_task_set(str(text_path)).items == (TaskItem("x", " y"),)
    assert load_task_set("q => r\ns => t").name == "typed"


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("", ValueError, "choose a prompt set"),
        ("/no/such/file.jsonl", FileNotFoundError, "neither a built-in"),
        (" => answer", ValueError, "prompt before"),
        ("# only a comment\n", ValueError, "no prompts"),
    ],
)
def test_bad_sets_raise_clear_errors(spec, error, match):
    with pytest.raises(error, match=match):
        load_task_set(spec)


def test_bad_jsonl_raises():
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_jsonl("{oops")
    with pytest.raises(ValueError, match='"prompt"'):
        parse_jsonl(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="answer"):
        parse_jsonl(json.dumps({"prompt": "x", "answer": 3}))


# ------------------------------------------------------------------------------- streaming scores
def _reference_stats(session, items):
    """Per-prompt, unbatched means computed from full activations (the slow way)."""
    n_heads = int(session.cfg.n_heads)
    sums = torch.zeros(session.n_layers, int(session.cfg.d_mlp), dtype=torch.float64)
    answer = torch.zeros_like(sums)
    heads = torch.zeros(session.n_layers, n_heads, dtype=torch.float64)
    count = 0
    for item in items:
        names = [hooknames.mlp_hidden(layer) for layer in range(session.n_layers)]
        names += [hooknames.attn_heads(layer) for layer in range(session.n_layers)]
        run = session.run(item.prompt, names)
        for layer in range(session.n_layers):
            act = run.activations[hooknames.mlp_hidden(layer)][0].double()
            sums[layer] += act[1:].abs().sum(0)
            answer[layer] += act[-1].abs()
            z = run.activations[hooknames.attn_heads(layer)][0].double().reshape(act.shape[0], n_heads, -1)
            w_o = head_output_weight(session, layer).double()
            heads[layer] += torch.einsum("shd,hdm->shm", z[1:], w_o).norm(dim=-1).sum(0)
        count += run.tokens.shape[1] - 1
    return sums / count, answer / len(items), heads / count


def test_streamed_batched_scores_equal_unbatched_reference(tiny_any):
    stats = unit_statistics(tiny_any, PROMPTS, batch_size=3)  # ragged batches: padding must not count
    mean_abs, answer_abs, heads = _reference_stats(tiny_any, PROMPTS)
    torch.testing.assert_close(stats.mean_abs("all").cpu(), mean_abs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.mean_abs("answer").cpu(), answer_abs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.head_mean("all").cpu(), heads, rtol=1e-4, atol=1e-5)
    assert stats.tokens_answer.tolist() == [1.0] * len(PROMPTS)  # one group per prompt
    first = _reference_stats(tiny_any, PROMPTS[:1])
    torch.testing.assert_close(
        torch.as_tensor(stats.grouped("all")[0][0]) / stats.tokens_all[0].cpu(), first[0]
    )
    assert tiny_any.active_hook_count() == 0


def test_head_split_sums_to_attention_output(tiny_gemma):
    """Per-head outputs z_h W_O^h add up to the attention output projection (no bias in Gemma)."""
    run = tiny_gemma.run("abc def", [hooknames.attn_heads(1), hooknames.attn_out(1)])
    z = run.activations[hooknames.attn_heads(1)][0]
    z = z.reshape(z.shape[0], int(tiny_gemma.cfg.n_heads), -1)
    summed = torch.einsum("shd,hdm->sm", z, head_output_weight(tiny_gemma, 1))
    torch.testing.assert_close(summed, run.activations[hooknames.attn_out(1)][0], rtol=1e-5, atol=1e-5)


def test_planted_shared_unit_is_found():
    """A GPT-2 unit whose input bias is huge fires on every token: it must top both sets and be shared."""
    session = tiny_session("gpt2", seed=3)
    planted_layer, planted_unit = 1, 37
    with torch.no_grad():
        session.block_component(planted_layer, "mlp.in").bias[planted_unit] = 40.0  # GPT-2's c_fc
    config = SharedNeuronsConfig(n_prompts=4, top_k=3, causal=False, batch_size=2)
    result = get_probe("shared_neurons").run(session, "planted", config)
    assert result.top_a[planted_layer, 0] == planted_unit
    assert result.top_b[planted_layer, 0] == planted_unit
    assert planted_unit in set(result.top_a[planted_layer]) & set(result.top_b[planted_layer])
    assert (
        result.mlp_scores_a[planted_layer, planted_unit]
        > 10 * np.delete(result.mlp_scores_a[planted_layer], planted_unit).max()
    )


# ----------------------------------------------------------------------------------- interventions
@pytest.mark.parametrize("mode", ["zero", "mean", "amplify"])
def test_intervention_changes_exactly_the_chosen_units(tiny_any, mode):
    layer, units = 1, [3, 5, 7]
    name = hooknames.mlp_hidden(layer)
    baseline = tiny_any.run("12 + 30 =", [name, hooknames.mlp_out(layer)])
    means = torch.randn(tiny_any.n_layers, int(tiny_any.cfg.d_mlp))
    captured = {}

    def capture(tensor, *, hook):
        captured[hook.name] = tensor.detach().clone()

    hooks = intervention_hooks({layer: units}, mode, alpha=3.0, means=means)
    with tiny_any.hooks([*hooks, (name, capture)]) as model, torch.inference_mode():
        model(baseline.tokens)
    edited, original = captured[name][0], baseline.activations[name][0]
    others = [u for u in range(original.shape[-1]) if u not in units]
    torch.testing.assert_close(edited[:, others], original[:, others])
    expected = {
        "zero": torch.zeros_like(original[:, units]),
        "mean": means[layer, units].expand(original.shape[0], -1),
        "amplify": 3.0 * original[:, units],
    }[mode]
    torch.testing.assert_close(edited[:, units], expected)
    assert tiny_any.active_hook_count() == 0
    again = tiny_any.run("12 + 30 =", [name])
    torch.testing.assert_close(again.activations[name], baseline.activations[name])


def test_ablation_reaches_the_mlp_output_and_hooks_go_after_errors(tiny_gemma):
    """Zeroing every unit of a bias-free gated MLP zeroes its output; an error still removes hooks."""
    width = int(tiny_gemma.cfg.d_mlp)
    captured = {}

    def capture(tensor, *, hook):
        captured["out"] = tensor.detach().clone()

    hooks = intervention_hooks({0: list(range(width))}, "zero")
    with tiny_gemma.hooks([*hooks, (hooknames.mlp_out(0), capture)]) as model, torch.inference_mode():
        model(tiny_gemma.tokenize("abc"))
    assert torch.count_nonzero(captured["out"]) == 0

    def boom(tensor, *, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), tiny_gemma.hooks([*hooks, (hooknames.mlp_out(1), boom)]) as model:
        model(tiny_gemma.tokenize("abc"))
    assert tiny_gemma.active_hook_count() == 0
    with pytest.raises(ValueError, match="intervention"):
        intervention_hooks({0: [1]}, "scale")
    with pytest.raises(ValueError, match="mean"):
        intervention_hooks({0: [1]}, "mean")


def test_answer_scores_match_full_logits(tiny_any):
    items = [TaskItem("12 + 7 =", " 19"), TaskItem("ab", " cd"), TaskItem("hello", "!")]
    encoded = encode_items(tiny_any, items, with_answer=True)
    scores = answer_scores(tiny_any, encoded, batch_size=2)
    for item, enc, logprob, correct in zip(items, encoded, scores.logprob, scores.correct, strict=True):
        tokens = torch.tensor([enc.ids])
        logits = tiny_any.run(tokens).logits[0].double().log_softmax(-1)
        positions = range(enc.prompt_len - 1, enc.prompt_len - 1 + enc.answer_len)
        targets = [enc.ids[p + 1] for p in positions]
        assert enc.answer_len == len(item.answer)  # character tokenizer
        assert logprob == pytest.approx(
            sum(logits[p, t].item() for p, t in zip(positions, targets, strict=True)), abs=1e-4
        )
        assert correct == float(
            all(logits[p].argmax().item() == t for p, t in zip(positions, targets, strict=True))
        )


# ------------------------------------------------------------------------------------ two models
def test_mismatched_models_are_refused(tiny_gemma):
    with pytest.raises(ValueError, match="architecture"):
        check_same_architecture(tiny_gemma, tiny_session("llama"))
    with pytest.raises(ValueError, match="3 layers"):
        check_same_architecture(tiny_gemma, tiny_session("gemma3", n_layers=3))
    probe = get_probe("shared_neurons")
    with pytest.raises(ValueError, match="architecture"):
        probe.compare(
            tiny_gemma, tiny_session("gpt2"), SharedNeuronsConfig(model_b="x", n_prompts=4, top_k=4)
        )
    check_same_architecture(tiny_gemma, tiny_session("gemma3", seed=5))  # same shapes: accepted


def test_two_model_comparison_same_model_is_identical(tiny_gemma):
    config = SharedNeuronsConfig(model_b="other", n_prompts=4, top_k=6, causal=False)
    twin = tiny_session("gemma3")  # same seed: same weights
    result = get_probe("shared_neurons").compare(tiny_gemma, twin, config)
    assert result.mode == "models" and result.overlap_fraction.tolist() == [1.0, 1.0]
    other = get_probe("shared_neurons").compare(tiny_gemma, tiny_session("gemma3", seed=9), config)
    assert other.shared_fraction < 1.0


def test_perturbed_copy_restores_weights_bit_exactly(tiny_gemma):
    before = {n: p.detach().clone() for n, p in tiny_gemma.named_weights()}
    logits = tiny_gemma.run("abc").logits
    with perturbed_weights(tiny_gemma, 0.5, seed=1):
        assert not torch.equal(tiny_gemma.run("abc").logits, logits)
        params = dict(tiny_gemma.named_weights())
        embed = next(name for name in params if "embed_tokens" in name)
        assert torch.equal(params[embed], before[embed])  # vocab matrices untouched
        changed = [name for name in params if not torch.equal(params[name], before[name])]
        assert any("mlp" in name for name in changed) and any("q_proj" in name for name in changed)
    with pytest.raises(RuntimeError), perturbed_weights(tiny_gemma, 0.5, seed=1):
        raise RuntimeError("interrupted")
    for name, param in tiny_gemma.named_weights():
        assert torch.equal(param, before[name]), name
    with pytest.raises(ValueError, match="noise scale"), perturbed_weights(tiny_gemma, -1.0):
        pass


def test_perturbed_mode_overlap_falls_with_noise(tiny_gemma):
    probe = get_probe("shared_neurons")
    small = probe.run(
        tiny_gemma,
        "",
        SharedNeuronsConfig(model_b="perturbed", noise_scale=0.01, n_prompts=8, top_k=8, causal=False),
    )
    large = probe.run(
        tiny_gemma,
        "",
        SharedNeuronsConfig(model_b="perturbed", noise_scale=2.0, n_prompts=8, top_k=8, causal=False),
    )
    assert small.shared_fraction > large.shared_fraction
    assert small.shared_fraction >= 0.9


# --------------------------------------------------------------------------------- probe contract
def test_full_run_result_round_trips_and_plots(tiny_gemma, lenslab_home):
    from lenslab.analyses.report import Report

    config = SharedNeuronsConfig(n_prompts=6, top_k=8, batch_size=3, intervention="mean", resamples=200)
    seen = []
    result = get_probe("shared_neurons").run(tiny_gemma, "", config, lambda f, m="": seen.append(f))
    assert seen and seen[-1] == 1.0 and all(b >= a for a, b in itertools.pairwise(seen))
    assert result.conditions == ["none", "shared", "A-only", "B-only", "random-A", "random-B"]
    assert result.logprob.shape == (6, 2, 3) and np.isfinite(result.logprob).all()
    # Units are chosen on one half and ablated on the other, disjoint halves of each set.
    assert not set(result.select_a) & set(result.heldout_a) and len(result.heldout_a) == 3
    assert sorted(result.select_b + result.heldout_b) == list(range(6))
    held_prompts = [result.prompts_a[i] for i in result.heldout_a]
    plain = answer_scores(
        tiny_gemma, encode_items(tiny_gemma, exact_arithmetic(6).subset(result.heldout_a, "h").items, True)
    )
    np.testing.assert_array_equal(result.logprob[0, 0], plain.logprob)  # the causal test ran on held-out
    assert not set(held_prompts) & {result.prompts_a[i] for i in result.select_a}
    sizes = dict(zip(result.conditions, result.group_sizes.tolist(), strict=True))
    assert sizes["shared"] + sizes["A-only"] == 8 * tiny_gemma.n_layers
    assert sizes["random-A"] == sizes["A-only"] and sizes["random-B"] == sizes["B-only"]
    assert set(result.control_ks) == {"random-A", "random-B"}
    # The task pair comes with two ceilings (halves of each task) and two floors (each task vs capitals).
    kinds = [p.kind for p in result.pairs]
    assert kinds == ["test", "ceiling", "ceiling", "floor", "floor"]
    assert result.control_label == "capitals"
    for pair in result.pairs:
        assert pair.fraction.low <= pair.fraction.estimate <= pair.fraction.high
        assert pair.by_layer.shape == (tiny_gemma.n_layers, 3)
    assert result.pairs[0].fraction.estimate == result.shared_fraction
    assert set(result.comparisons) == {VS_CEILING, VS_FLOOR, RELATIVE}
    assert set(result.effects) == {GAP_A, GAP_B, INTERACTION, SPECIFIC_A, SPECIFIC_B}
    gap_a = result.effects[GAP_A]
    table = result.causal_table()
    by = {(r["condition"], r["set"]): r for r in table}
    direct = (
        by["A-only", "exact_arithmetic"]["delta_logprob"]
        - by["A-only", "approximate_arithmetic"]["delta_logprob"]
    )
    assert gap_a.estimate == pytest.approx(direct) and gap_a.low <= gap_a.estimate <= gap_a.high
    assert all(r["delta_logprob"] == 0 for r in table if r["condition"] == "none")
    assert set(result.figures()) == {
        "pairs",
        "overlap",
        "membership",
        "venn",
        "heads",
        "causal_logprob",
        "causal_accuracy",
        "dissociation",
    }
    text = result.interpretation()
    assert "Dissociation" in text and "Verdict at 95%" in text and "Baseline accuracy" in text
    assert result.verdict()[0] in ("holds", "partly", "does not hold")
    assert all(isinstance(v, str | int) for v in result.summary().values())  # no raw floats shown
    restored = SharedNeuronsResult.from_dict(result.to_dict())
    np.testing.assert_array_equal(restored.logprob, result.logprob)
    assert restored.config == config and restored.causal_table() == table
    assert restored.effects == result.effects and restored.interpretation() == text
    np.testing.assert_array_equal(restored.pairs[1].by_layer, result.pairs[1].by_layer)
    path = Report([result], {"title": "t"}).save(lenslab_home / "r")
    loaded = Report.load(path).results[0]
    np.testing.assert_array_equal(loaded.top_b, result.top_b)
    assert loaded.pairs[0].fraction == result.pairs[0].fraction
    assert tiny_gemma.active_hook_count() == 0
    _check_verdict_rules(result)


def test_overlap_figure_is_handed_over_before_the_ablations(tiny_gemma):
    """The app shows the selection-half overlap (task pair and floor pairs) while the ablations still run."""
    config = SharedNeuronsConfig(n_prompts=6, top_k=8, batch_size=3, resamples=200)
    messages: list[str] = []
    early: list[tuple[int, str, object]] = []

    def progress(fraction: float, message: str = "") -> None:
        messages.append(message)

    progress.partial = lambda name, figure: early.append((len(messages), name, figure))
    result = get_probe("shared_neurons").run(tiny_gemma, "", config, progress)
    assert [name for _, name, _ in early] == ["overlap"]
    when, _, figure = early[0]
    first_ablation = next(i for i, m in enumerate(messages) if m.startswith("causal test"))
    assert when <= first_ablation  # shown before the first ablation pass started
    final = result.figures()["overlap"]
    np.testing.assert_array_equal(np.asarray(figure.data[0].y), np.asarray(final.data[0].y))
    lines = {t.name: np.asarray(t.y) for t in figure.data[1:]}
    final_lines = {t.name: np.asarray(t.y) for t in final.data[1:]}
    floors = [name for name in final_lines if name.startswith(KIND_NAMES["floor"])]
    assert floors and all(name in lines for name in floors)
    for name in floors:  # the same point estimates; the ceilings need the held-out pass
        np.testing.assert_array_equal(lines[name], final_lines[name])
    assert not any(name.startswith(KIND_NAMES["ceiling"]) for name in lines)
    assert tiny_gemma.active_hook_count() == 0


def _check_verdict_rules(result):
    """The verdict follows the intervals: below the ceiling and a double dissociation, both at 95%."""
    below, above = Interval(-0.3, -0.4, -0.2, 8, "b"), Interval(-0.1, -0.3, 0.1, 8, "b")
    neg, straddle = Interval(-1.0, -1.5, -0.5, 8, "b"), Interval(-0.2, -0.6, 0.3, 8, "b")

    def status(ceiling, gap_a, gap_b):
        effects = {**result.effects, GAP_A: gap_a, GAP_B: gap_b}
        changed = dataclasses.replace(
            result, comparisons={**result.comparisons, VS_CEILING: ceiling}, effects=effects
        )
        return changed.verdict()[0], changed

    assert status(below, neg, neg)[0] == "holds"
    assert status(below, neg, straddle)[0] == "partly"  # one direction only: no double dissociation
    assert status(above, neg, neg)[0] == "partly"
    verdict, changed = status(above, straddle, neg)
    assert verdict == "does not hold" and "does **not** hold" in changed.interpretation()
    assert dataclasses.replace(result, effects={}).verdict()[0] == "not tested"


def test_held_out_scores_from_the_causal_pass_equal_a_prompt_only_pass(tiny_any):
    """The unmodified answer pass also collects the prompt positions' statistics: they must equal
    a separate prompt-only scoring pass (the appended answer tokens cannot change earlier positions)."""
    items = PROMPTS
    collected = UnitStats.empty(tiny_any, len(items))
    answer_scores(tiny_any, encode_items(tiny_any, items, with_answer=True), batch_size=2, collect=collected)
    separate = unit_statistics(tiny_any, items, batch_size=3)
    for positions in ("all", "answer"):
        torch.testing.assert_close(collected.mean_abs(positions), separate.mean_abs(positions))
        torch.testing.assert_close(collected.head_mean(positions), separate.head_mean(positions))
        sums, counts = collected.grouped(positions)
        assert sums.shape[0] == len(items) and counts.tolist() == separate.grouped(positions)[1].tolist()
    with pytest.raises(ValueError, match="unmodified"):
        answer_scores(
            tiny_any, encode_items(tiny_any, items, True), [("x", lambda t, hook: t)], collect=collected
        )


def test_planned_forwards_counts_every_pass():
    config = SharedNeuronsConfig(n_prompts=10)
    # selection 5 + 5, control 5 (capitals), held-out 5 + 5 under 6 conditions
    assert planned_forwards(config) == 5 + 5 + 5 + 6 * 10
    assert planned_forwards(config.replace(causal=False)) == 5 + 5 + 5 + 10
    assert planned_forwards(config.replace(control="")) == 5 + 5 + 6 * 10


def test_config_validation_messages(tiny_gemma, tmp_path):
    probe = get_probe("shared_neurons")
    with pytest.raises(ValueError, match="smaller than the MLP width"):
        probe.run(tiny_gemma, "", SharedNeuronsConfig(top_k=64))
    with pytest.raises(ValueError, match="positions"):
        probe.run(tiny_gemma, "", SharedNeuronsConfig(positions="middle"))
    with pytest.raises(FileNotFoundError):
        probe.run(tiny_gemma, "", SharedNeuronsConfig(set_b=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="expected answer"):
        probe.run(
            tiny_gemma, "", SharedNeuronsConfig(set_b="just a prompt\nanother one => ", top_k=4, n_prompts=4)
        )
    no_causal = probe.run(
        tiny_gemma,
        "",
        SharedNeuronsConfig(
            set_b="just a prompt\nanother\na third\nand a fourth", top_k=4, causal=False, n_prompts=4
        ),
    )
    assert no_causal.conditions == [] and "causal_logprob" not in no_causal.figures()
    assert [p.kind for p in no_causal.pairs] == ["test", "ceiling", "ceiling", "floor", "floor"]
    with pytest.raises(ValueError, match="at least 4"):
        probe.run(tiny_gemma, "", SharedNeuronsConfig(set_b="a => b\nc => d\ne => f", top_k=4, n_prompts=4))
    with pytest.raises(ValueError, match="control"):
        probe.run(tiny_gemma, "", SharedNeuronsConfig(control="exact_arithmetic"))


def test_cancel_stops_and_leaves_no_hooks(tiny_gemma):
    def cancel(fraction, message=""):
        if fraction > 0.2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        get_probe("shared_neurons").run(
            tiny_gemma, "", SharedNeuronsConfig(n_prompts=6, top_k=4, batch_size=1), cancel
        )
    assert tiny_gemma.active_hook_count() == 0
