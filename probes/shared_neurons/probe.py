"""Shared-neuron analysis: which MLP units two tasks (or two models) share, and what they do.

Method (after "Do LLMs and VLMs Share Neurons for Inference?" and StreetMath, see
``shared/papers/README.md`` §4), defined cleanly and read against matched controls:

1. **Unit** = one hidden activation of a block's MLP, the input of the down projection: for gated
   MLPs (Gemma, Llama) the product ``act(gate(x)) · up(x)``, for GPT-2 the post-GELU hidden.
   The TransformerBridge exposes it as ``blocks.{l}.mlp.out.hook_in`` for all three families.
   Attention heads are a second unit type, scored by the norm of their output ``z_h W_O^h``.
2. **Split**: each set's prompts are split (seeded) into a selection half and a held-out half.
   Units are chosen on the selection half only; the causal test runs on the held-out half.
3. **Score** per set: mean |activation| at the answer position (the last prompt token, which
   predicts the answer; the default) or, labelled ``all``, over every prompt token (BOS
   excluded). Optionally weighted by the unit's mean |output weight| (StreetMath's importance).
   Sums are streamed over right-padded batches with padding masked out, kept per prompt so the
   overlap can be bootstrapped, and the forward stops before the 262k-token unembedding.
4. **Overlap against control pairs**: top-k units per layer; the task pair's shared fraction is
   shown with a *ceiling* (the selection half against the held-out half of the same task) and
   a *floor* (each task against an unrelated control task, e.g. capitals), every one with a 95%
   bootstrap interval over prompts from the same resamples; the random k-subset chance level
   and its hypergeometric p-value are kept as the weakest null.
5. **Causal check** on held-out prompts: intervene on unit groups (shared, A-only, B-only, and
   random controls matched to A-only and B-only in activation rank on the control task) by
   zeroing, mean-ablating or amplifying (×α), and measure the teacher-forced log-prob of the
   expected answer and greedy accuracy, paired per prompt against the unmodified run. The
   dissociation is the contrast of mean effects (ΔA − ΔB under A-only ablation, ΔB − ΔA under
   B-only ablation, and their sum, the interaction) with 95% bootstrap intervals over prompts.

Two-model mode compares one prompt set on two models of the same architecture (refusing
mismatches); the offline demo perturbs this model's block weights with seeded noise inside a
context manager that restores them bit-exactly (see :func:`perturbed_weights`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.base import Probe, register, to_numpy
from lenslab.probes.shared_neurons.result import (
    CONDITIONS,
    GAP_A,
    GAP_B,
    INTERACTION,
    MODEL_CONDITIONS,
    PERTURBED,
    RELATIVE,
    SPECIFIC_A,
    SPECIFIC_B,
    VS_CEILING,
    VS_FLOOR,
    PairOverlap,
    SharedNeuronsConfig,
    SharedNeuronsResult,
)
from lenslab.probes.shared_neurons.stats import (
    GroupedScores,
    bootstrap_contrasts,
    bootstrap_overlaps,
    expected_overlap,
    overlap_p_value,
    overlap_stats,
    percentile_interval,
    rank_ks,
    top_units,
)
from lenslab.probes.shared_neurons.tasks import TaskSet, load_task_set, split_indices
from lenslab.probes.shared_neurons.units import (
    UnitStats,
    answer_scores,
    check_same_architecture,
    encode_items,
    intervention_hooks,
    mlp_width,
    perturbed_weights,
    unit_groups,
    unit_statistics,
    unit_weights,
)
from lenslab.progress import NO_PROGRESS, Progress, show_partial, wants_partial


# ------------------------------------------------------------------------------------------- probe
def resolve_sets(config: SharedNeuronsConfig) -> tuple[TaskSet, TaskSet | None]:
    """Load set A and (in tasks mode) set B from the config."""
    set_a = load_task_set(config.set_a, n=config.n_prompts, seed=config.seed)
    set_b = (
        None if config.mode == "models" else load_task_set(config.set_b, n=config.n_prompts, seed=config.seed)
    )
    return set_a, set_b


def resolve_control(config: SharedNeuronsConfig, n_select: int) -> TaskSet | None:
    """The control task's first ``n_select`` prompts (as many as a selection half), or None."""
    if not config.control.strip():
        return None
    return load_task_set(config.control, n=n_select, seed=config.seed)


def planned_forwards(config: SharedNeuronsConfig) -> int:
    """Prompt forwards a run makes (selection and control scoring, then the held-out passes).

    Built-in and typed sets are resolved to count their prompts; the app multiplies this by a
    measured prompts-per-second rate to show a time estimate before a run.
    """
    set_a, set_b = resolve_sets(config)
    sizes = [len(set_a.items)] + ([] if set_b is None else [len(set_b.items)])
    selection = sum(n // 2 for n in sizes) + (len(set_a.items) // 2 if set_b is None else 0)
    control = resolve_control(config, len(set_a.items) // 2)
    held_out = sum(n - n // 2 for n in sizes)
    conditions = (len(CONDITIONS) if set_b is not None else len(MODEL_CONDITIONS)) if config.causal else 1
    return selection + (len(control.items) if control else 0) + conditions * held_out


def _grouped(stats: UnitStats, positions: str, weights: np.ndarray | None, key: str) -> GroupedScores:
    """Per-prompt-group MLP scores (× the output-weight multiplier when scoring is weighted)."""
    sums, counts = stats.grouped(positions)
    return GroupedScores(sums if weights is None else sums * weights[None], counts, key)


def _grouped_heads(stats: UnitStats, positions: str, key: str) -> GroupedScores:
    """Per-prompt-group head scores flattened to one 'layer' of all heads (heads are chosen globally)."""
    sums, counts = stats.grouped(positions, heads=True)
    return GroupedScores(sums.reshape(len(counts), 1, -1), counts, key)


def _show_early_overlap(
    progress: Progress,
    config: SharedNeuronsConfig,
    grouped: tuple[GroupedScores, GroupedScores],
    stats: tuple[UnitStats, UnitStats],
    stats_c: UnitStats | None,
    control: TaskSet | None,
    weights: np.ndarray | None,
    labels: tuple[str, str],
    sizes: tuple[int, int],
    overlap: Any,
    k: int,
    head_k: int,
) -> None:
    """The overlap figure from the selection halves, shown before the held-out ablations run.

    It has the task pair and the floor pairs (the control task) with their bootstrap intervals;
    the ceiling pairs need the held-out pass and join in the final figure.
    """
    from types import SimpleNamespace

    from lenslab.probes.shared_neurons.figures import overlap_figure

    units = list(grouped)
    heads = [_grouped_heads(s, config.positions, g.key) for s, g in zip(stats, grouped, strict=True)]
    pairs = [(f"{labels[0]} vs {labels[1]}", "test", 0, 1, labels[0], labels[1])]
    counts = list(sizes)
    if stats_c is not None and control is not None:
        units.append(_grouped(stats_c, config.positions, weights, "control"))
        heads.append(_grouped_heads(stats_c, config.positions, "control"))
        counts.append(len(control.items))
        pairs.append((f"{labels[0]} vs {control.name}", "floor", 0, 2, labels[0], control.name))
        if config.mode == "tasks":
            pairs.append((f"{labels[1]} vs {control.name}", "floor", 1, 2, labels[1], control.name))
    early_pairs, _ = _pair_overlaps(units, heads, pairs, counts, k, head_k, config)
    view = SimpleNamespace(
        n_layers=len(overlap.fraction),
        k=k,
        expected_count=overlap.expected,
        p_value=overlap.p_value,
        pairs=early_pairs,
        overlap_fraction=overlap.fraction,
        overlap_count=overlap.count,
        jaccard=overlap.jaccard,
        label_a=labels[0],
        label_b=labels[1],
    )
    figure = overlap_figure(view)  # type: ignore[arg-type]  # the fields the figure reads
    figure.update_layout(title=f"{figure.layout.title.text}<br>selection halves; the ceiling pairs follow")
    show_partial(progress, "overlap", figure)


def _pair_overlaps(
    units: list[GroupedScores],
    heads: list[GroupedScores],
    pairs: list[tuple[str, str, int, int, str, str]],
    sizes: list[int],
    k: int,
    head_k: int,
    config: SharedNeuronsConfig,
) -> tuple[list[PairOverlap], dict[str, Any]]:
    """Point estimates and joint bootstrap intervals of every pair's overlap, and the comparisons.

    ``pairs`` rows are (name, kind, index, index, first label, second label); ``sizes`` the
    prompts behind each set. All pairs share the bootstrap draws, so the task pair minus the
    control pairs has a joint interval.
    """
    index_pairs = [(i, j) for _, _, i, j, _, _ in pairs]
    counts = bootstrap_overlaps(units, index_pairs, k, resamples=config.resamples, seed=config.seed)
    head_counts = bootstrap_overlaps(heads, index_pairs, head_k, resamples=config.resamples, seed=config.seed)
    n_layers, n_units = units[0].sums.shape[1:]
    n_heads = heads[0].sums.shape[-1]
    tops = [top_units(u.mean(), k) for u in units]
    head_tops = [top_units(h.mean(), head_k) for h in heads]
    draws = counts.sum(-1) / (n_layers * k)  # [resample, pair]
    out = []
    for p, (name, kind, i, j, first, second) in enumerate(pairs):
        overlap = overlap_stats(tops[i], tops[j], n_units)
        head_overlap = overlap_stats(head_tops[i], head_tops[j], n_heads)
        by_layer = np.stack(
            [overlap.fraction, *np.quantile(counts[:, p] / k, [0.025, 0.975], axis=0)], axis=-1
        ).astype(np.float64)
        n = min(len(units[i].counts), len(units[j].counts))
        out.append(
            PairOverlap(
                name=name,
                kind=kind,
                first=first,
                second=second,
                n_first=sizes[i],
                n_second=sizes[j],
                fraction=percentile_interval(overlap.total_fraction, draws[:, p], n, "prompts"),
                by_layer=by_layer,
                chance=overlap.total_expected_fraction,
                p_value=overlap.total_p_value,
                heads=percentile_interval(
                    head_overlap.total_fraction, head_counts[:, p, 0] / head_k, n, "prompts"
                ),
            )
        )
    comparisons: dict[str, Any] = {}
    kinds = np.asarray([kind for _, kind, *_ in pairs])
    test = kinds == "test"
    point = np.asarray([o.fraction.estimate for o in out])
    n = min(len(u.counts) for u in units)
    for kind, name in (("ceiling", VS_CEILING), ("floor", VS_FLOOR)):
        chosen = kinds == kind
        if test.any() and chosen.any():
            comparisons[name] = percentile_interval(
                float(point[test].mean() - point[chosen].mean()),
                draws[:, test].mean(-1) - draws[:, chosen].mean(-1),
                n,
                "prompts",
            )
    if test.any() and (kinds == "ceiling").any() and (kinds == "floor").any():

        def relative(values: np.ndarray) -> np.ndarray:
            floor, ceiling = values[..., kinds == "floor"].mean(-1), values[..., kinds == "ceiling"].mean(-1)
            span = ceiling - floor
            return np.where(
                span > 0, (values[..., test].mean(-1) - floor) / np.where(span > 0, span, 1), np.nan
            )

        estimate = float(relative(point))
        if np.isfinite(estimate):  # undefined when the ceiling does not exceed the floor: left out
            comparisons[RELATIVE] = percentile_interval(estimate, relative(draws), n, "prompts")
    return out, comparisons


def load_model_b(session: ModelSession, spec: str) -> ModelSession:
    """The second model named by ``spec`` (loaded with the same device and dtype), checked to match."""
    other = ModelSession.load(spec, device=session.device, dtype=session.dtype)
    check_same_architecture(session, other)
    return other


@register
class SharedNeurons(Probe[SharedNeuronsConfig, SharedNeuronsResult]):
    """Which MLP units two prompt sets (or two models) share, versus chance, and what they do."""

    name = "shared_neurons"
    title = "Shared neurons"
    description = (
        "Top MLP units per layer for two prompt sets (or two models), their overlap against the "
        "chance level, and an ablation test of shared vs set-specific units."
    )
    config_cls = SharedNeuronsConfig
    result_cls = SharedNeuronsResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
    ) -> SharedNeuronsResult:
        """Run the analysis; ``prompt`` is only a description (the sets come from ``config``).

        In two-model mode ``config.model_b`` names the second model: ``'perturbed'`` builds the
        noise copy in place (see :func:`perturbed_weights`), anything else is loaded.
        """
        config.validate(session)
        if config.mode == "models" and config.model_b.strip() != PERTURBED:
            progress(0.0, f"loading {config.model_b}")
            return self.compare(
                session, load_model_b(session, config.model_b.strip()), config, progress, prompt
            )
        return self.compare(session, None, config, progress, prompt)

    def compare(
        self,
        session: ModelSession,
        session_b: ModelSession | None,
        config: SharedNeuronsConfig,
        progress: Progress = NO_PROGRESS,
        description: str = "",
    ) -> SharedNeuronsResult:
        """The analysis with an explicit second model (``None``: set B, or the perturbed copy)."""
        config.validate(session)
        if session_b is not None:
            check_same_architecture(session, session_b)
        set_a, set_b = resolve_sets(config)
        eval_sets = [set_a] if set_b is None else [set_a, set_b]
        missing = [s.name for s in eval_sets if not s.has_answers]
        if config.causal and missing:
            raise ValueError(
                f"the causal check needs an expected answer for every prompt; {missing} has prompts "
                "without one (use 'prompt => answer' lines) or switch the causal check off"
            )
        select_a, heldout_a = split_indices(len(set_a.items), config.seed)
        select_b, heldout_b = split_indices(len(set_b.items), config.seed) if set_b is not None else ([], [])
        control = resolve_control(config, len(select_a))
        sel_a = set_a.subset(select_a, "selection")
        sel_b = set_b.subset(select_b, "selection") if set_b is not None else sel_a
        held = [set_a.subset(heldout_a, "held-out")]
        if set_b is not None:
            held.append(set_b.subset(heldout_b, "held-out"))
        perturbed = config.mode == "models" and session_b is None
        positions, bs = config.positions, config.batch_size
        started = time.perf_counter()
        with session.lock:
            # 1. Selection: score each set's selection half (and the control task) on its model.
            stats_a = unit_statistics(session, sel_a.items, bs, progress, (0.0, 0.1))
            weights_a = unit_weights(session, config.score)
            if config.mode == "tasks":
                assert set_b is not None
                stats_b = unit_statistics(session, sel_b.items, bs, progress, (0.1, 0.2))
                label_a, label_b, weights_b = set_a.name, set_b.name, weights_a
            elif perturbed:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    stats_b = unit_statistics(session, sel_a.items, bs, progress, (0.1, 0.2))
                    weights_b = unit_weights(session, config.score)
                label_a = session.model_id
                label_b = f"{session.model_id} + noise {config.noise_scale:g}"
            else:
                assert session_b is not None
                with session_b.lock:
                    stats_b = unit_statistics(session_b, sel_a.items, bs, progress, (0.1, 0.2))
                    weights_b = unit_weights(session_b, config.score)
                label_a, label_b = session.model_id, session_b.model_id
            stats_c = (
                unit_statistics(session, control.items, bs, progress, (0.2, 0.25))
                if control is not None
                else None
            )
            scoring_seconds = stats_a.seconds + stats_b.seconds + (stats_c.seconds if stats_c else 0.0)
            n_scored = 2 * len(sel_a.items) + (len(control.items) if control else 0)

            n_units = mlp_width(session)
            k = config.units_per_layer(n_units)
            grouped_a = _grouped(stats_a, positions, weights_a, "A selection")
            grouped_b = _grouped(
                stats_b, positions, weights_b, "A selection" if set_b is None else "B selection"
            )
            scores_a = grouped_a.mean().astype(np.float32)
            scores_b = grouped_b.mean().astype(np.float32)
            top_a, top_b = top_units(scores_a, k), top_units(scores_b, k)
            overlap = overlap_stats(top_a, top_b, n_units)

            heads_a = to_numpy(stats_a.head_mean(positions)).astype(np.float32)
            heads_b = to_numpy(stats_b.head_mean(positions)).astype(np.float32)
            n_all_heads = heads_a.size
            head_k = max(1, round(config.head_fraction * n_all_heads))
            head_top_a = np.argsort(-heads_a.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_top_b = np.argsort(-heads_b.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_shared = len(set(head_top_a.tolist()) & set(head_top_b.tolist()))
            if config.causal and wants_partial(progress):
                _show_early_overlap(
                    progress, config, (grouped_a, grouped_b), (stats_a, stats_b), stats_c, control,
                    weights_a, (label_a, label_b), (len(sel_a.items), len(sel_b.items)), overlap, k, head_k,
                )  # fmt: skip

            # 2. Held-out prompts: the causal test; its unmodified pass also scores them for the ceiling.
            conditions: list[str] = []
            group_sizes: list[int] = []
            logprob = np.zeros((0, len(eval_sets), 0))
            correct = np.zeros((0, len(eval_sets), 0))
            control_ks: dict[str, tuple[float, float]] = {}
            selection_ks: dict[str, tuple[float, float]] = {}
            pooled = (grouped_a.mean() + grouped_b.mean()) / 2
            control_match = ""
            match_scores = np.zeros((0, 0), dtype=np.float32)
            held_stats = [UnitStats.empty(session, len(h.items)) for h in held]
            if config.causal:
                tokens = stats_a.tokens_all.sum() + (stats_b.tokens_all.sum() if set_b is not None else 0)
                means = (stats_a.signed_all + (stats_b.signed_all if set_b is not None else 0)) / tokens
                # Controls are matched on activity measured on prompts that selected nothing (the
                # control task): ranked by the selection score, the top sets are the strongest ranks
                # by definition and no unselected unit of matching rank exists.
                if stats_c is not None and control is not None:
                    magnitude = _grouped(stats_c, positions, weights_a, "control").mean()
                    control_match = f"control task `{control.name}` ({len(control.items)} prompts)"
                else:
                    magnitude = pooled
                    control_match = "selection score (no control task)"
                match_scores = magnitude.astype(np.float32)
                groups = unit_groups(top_a, top_b, match_scores, config.seed)
                conditions = list(CONDITIONS) if set_b is not None else list(MODEL_CONDITIONS)
                for control_name, selected in (("random-A", "A-only"), ("random-B", "B-only")):
                    if control_name in conditions:
                        chosen_units = (groups[control_name], groups[selected])
                        control_ks[control_name] = rank_ks(*chosen_units, match_scores)
                        selection_ks[control_name] = rank_ks(*chosen_units, pooled)
                encoded = [encode_items(session, h.items, with_answer=True) for h in held]
                width = max(len(e) for e in encoded)
                logprob = np.full((len(conditions), len(held), width), np.nan)
                correct = np.full((len(conditions), len(held), width), np.nan)
                steps = len(conditions) * len(held)
                for c, condition in enumerate(conditions):
                    chosen = {} if condition == "none" else groups[condition]
                    group_sizes.append(sum(len(u) for u in chosen.values()))
                    hooks = intervention_hooks(chosen, config.intervention, alpha=config.alpha, means=means)
                    for s, items in enumerate(encoded):
                        step = c * len(held) + s
                        progress(
                            0.25 + 0.7 * step / steps, f"causal test: {condition} on {eval_sets[s].name}"
                        )
                        scores = answer_scores(
                            session, items, hooks, bs, collect=held_stats[s] if condition == "none" else None
                        )
                        logprob[c, s, : len(items)] = scores.logprob
                        correct[c, s, : len(items)] = scores.correct
            else:
                held_stats = [
                    unit_statistics(session, h.items, bs, progress, (0.25 + 0.35 * s, 0.6 + 0.35 * s))
                    for s, h in enumerate(held)
                ]

        # 3. Overlap of the task pair and the control pairs, with joint bootstrap intervals.
        progress(0.95, "bootstrap intervals")
        units = [grouped_a, grouped_b, _grouped(held_stats[0], positions, weights_a, "A held-out")]
        heads = [
            _grouped_heads(stats_a, positions, grouped_a.key),
            _grouped_heads(stats_b, positions, grouped_b.key),
            _grouped_heads(held_stats[0], positions, "A held-out"),
        ]
        sizes = [len(sel_a.items), len(sel_a.items), len(held[0].items)]
        if set_b is not None:
            pairs = [
                (f"{label_a} vs {label_b}", "test", 0, 1, label_a, label_b),
                (f"{label_a}: two halves", "ceiling", 0, 2, label_a, label_a),
            ]
            units.append(_grouped(held_stats[1], positions, weights_a, "B held-out"))
            heads.append(_grouped_heads(held_stats[1], positions, "B held-out"))
            sizes[1] = len(sel_b.items)
            sizes.append(len(held[1].items))
            pairs.append((f"{label_b}: two halves", "ceiling", 1, 3, label_b, label_b))
        else:
            pairs = [
                (f"{label_a} vs {label_b}", "test", 0, 1, label_a, label_b),
                (f"{label_a}: two halves of {set_a.name}", "ceiling", 0, 2, label_a, label_a),
            ]
        if stats_c is not None and control is not None:
            units.append(_grouped(stats_c, positions, weights_a, "control"))
            heads.append(_grouped_heads(stats_c, positions, "control"))
            sizes.append(len(control.items))
            c_index = len(units) - 1
            pairs.append((f"{set_a.name} vs {control.name}", "floor", 0, c_index, set_a.name, control.name))
            if set_b is not None:
                pairs.append(
                    (f"{set_b.name} vs {control.name}", "floor", 1, c_index, set_b.name, control.name)
                )
        pair_overlaps, comparisons = _pair_overlaps(units, heads, pairs, sizes, k, head_k, config)

        effects = {}
        if config.causal and set_b is not None:
            delta = logprob - logprob[:1]
            effects = bootstrap_contrasts(
                delta,
                conditions,
                {
                    GAP_A: {("A-only", 0): 1.0, ("A-only", 1): -1.0},
                    GAP_B: {("B-only", 1): 1.0, ("B-only", 0): -1.0},
                    INTERACTION: {
                        ("A-only", 0): 1.0,
                        ("A-only", 1): -1.0,
                        ("B-only", 1): 1.0,
                        ("B-only", 0): -1.0,
                    },
                    SPECIFIC_A: {("A-only", 0): 1.0, ("random-A", 0): -1.0},
                    SPECIFIC_B: {("B-only", 1): 1.0, ("random-B", 1): -1.0},
                },
                resamples=config.resamples,
                seed=config.seed,
            )
        progress(1.0, "done")
        return SharedNeuronsResult(
            model_id=session.model_id,
            prompt=description or f"{label_a} vs {label_b}",
            config=config,
            mode=config.mode,
            label_a=label_a,
            label_b=label_b,
            prompts_a=set_a.prompts,
            answers_a=[item.answer for item in set_a.items],
            prompts_b=[] if set_b is None else set_b.prompts,
            answers_b=[] if set_b is None else [item.answer for item in set_b.items],
            n_units=n_units,
            k=k,
            mlp_scores_a=scores_a,
            mlp_scores_b=scores_b,
            top_a=top_a,
            top_b=top_b,
            overlap_count=overlap.count,
            overlap_fraction=overlap.fraction,
            jaccard=overlap.jaccard,
            expected_count=overlap.expected,
            p_value=overlap.p_value,
            shared_fraction=overlap.total_fraction,
            chance_fraction=overlap.total_expected_fraction,
            total_p_value=overlap.total_p_value,
            head_scores_a=heads_a,
            head_scores_b=heads_b,
            head_top_a=head_top_a,
            head_top_b=head_top_b,
            head_overlap=head_shared,
            head_expected=expected_overlap(n_all_heads, head_k, head_k),
            head_p_value=overlap_p_value(n_all_heads, head_k, head_k, head_shared),
            conditions=conditions,
            eval_sets=[s.name for s in eval_sets],
            group_sizes=np.asarray(group_sizes, dtype=np.int64),
            logprob=logprob,
            correct=correct,
            prompts_per_second=n_scored / max(scoring_seconds, 1e-9),
            seconds=time.perf_counter() - started,
            control_label=control.name if control is not None else "",
            select_a=select_a,
            heldout_a=heldout_a,
            select_b=select_b,
            heldout_b=heldout_b,
            pairs=pair_overlaps,
            comparisons=comparisons,
            effects=effects,
            control_ks=control_ks,
            control_match=control_match,
            selection_ks=selection_ks,
            match_scores=match_scores,
        )
