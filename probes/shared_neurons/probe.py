"""Shared-neuron analysis: which MLP units two tasks (or two models) share, and what they do.

Method (after "Do LLMs and VLMs Share Neurons for Inference?" and StreetMath, see
``shared/papers/README.md`` §4), defined cleanly:

1. **Unit** = one hidden activation of a block's MLP, the input of the down projection: for gated
   MLPs (Gemma, Llama) the product ``act(gate(x)) · up(x)``, for GPT-2 the post-GELU hidden.
   The TransformerBridge exposes it as ``blocks.{l}.mlp.out.hook_in`` for all three families.
   Attention heads are a second unit type, scored by the norm of their output ``z_h W_O^h``.
2. **Score** per set: mean |activation| over the prompt tokens (BOS excluded: its activations are
   outliers that would swamp every mean) or over the answer position only (the last prompt token,
   which predicts the answer). Optionally weighted by the mean |output weight| of the unit
   (StreetMath's importance: |W| column mean × activation). Means are streamed over right-padded
   batches with padding masked out, and the forward stops before the 262k-token unembedding;
   no activation cache is kept.
3. **Selection and overlap**: top-k units per layer per set; per layer |A∩B|/k, Jaccard, the
   count expected for two random k-subsets of n units, k²/n, and the hypergeometric p-value
   P(X ≥ observed). The overall p-value is exact: the per-layer hypergeometric laws convolved.
   Heads are selected globally (a layer has only a few).
4. **Causal check**: intervene on unit groups (shared, A-only, B-only, a random control of the
   A-only size drawn outside A∪B) by zeroing, mean-ablating (mean over both sets' tokens) or
   amplifying (×α), and measure the teacher-forced log-prob of the expected answer and greedy
   accuracy (every answer token is the argmax) on both sets, paired per prompt against the
   unmodified run.

Two-model mode compares one prompt set on two models of the same architecture (refusing
mismatches); the offline demo perturbs this model's block weights with seeded noise inside a
context manager that restores them bit-exactly (see :func:`perturbed_weights`).
"""

from __future__ import annotations

import time

import numpy as np

from lenslab.models.session import ModelSession
from lenslab.probes.base import Probe, register, to_numpy
from lenslab.probes.shared_neurons.result import (
    CONDITIONS,
    PERTURBED,
    SharedNeuronsConfig,
    SharedNeuronsResult,
)
from lenslab.probes.shared_neurons.stats import (
    expected_overlap,
    overlap_p_value,
    overlap_stats,
    top_units,
)
from lenslab.probes.shared_neurons.tasks import TaskSet, load_task_set
from lenslab.probes.shared_neurons.units import (
    answer_scores,
    check_same_architecture,
    encode_items,
    intervention_hooks,
    mlp_width,
    perturbed_weights,
    unit_groups,
    unit_scores,
    unit_statistics,
)
from lenslab.progress import NO_PROGRESS, Progress


# ------------------------------------------------------------------------------------------- probe
def resolve_sets(config: SharedNeuronsConfig) -> tuple[TaskSet, TaskSet | None]:
    """Load set A and (in tasks mode) set B from the config."""
    set_a = load_task_set(config.set_a, n=config.n_prompts, seed=config.seed)
    set_b = (
        None if config.mode == "models" else load_task_set(config.set_b, n=config.n_prompts, seed=config.seed)
    )
    return set_a, set_b


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
        started = time.perf_counter()
        with session.lock:
            stats_a = unit_statistics(session, set_a.items, config.batch_size, progress, (0.0, 0.3))
            if config.mode == "tasks":
                assert set_b is not None
                stats_b = unit_statistics(session, set_b.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = set_a.name, set_b.name, session
            elif session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    stats_b = unit_statistics(session, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a = session.model_id
                label_b = f"{session.model_id} + noise {config.noise_scale:g}"
                scorer_b = session
            else:
                with session_b.lock:
                    stats_b = unit_statistics(session_b, set_a.items, config.batch_size, progress, (0.3, 0.6))
                label_a, label_b, scorer_b = session.model_id, session_b.model_id, session_b
            scoring_seconds = stats_a.seconds + stats_b.seconds
            n_scored = len(set_a.items) + (len(set_a.items) if set_b is None else len(set_b.items))

            n_units = mlp_width(session)
            k = config.units_per_layer(n_units)
            scores_a = unit_scores(session, stats_a, config.positions, config.score)
            if config.mode == "models" and session_b is None:
                with perturbed_weights(session, config.noise_scale, config.seed):
                    scores_b = unit_scores(session, stats_b, config.positions, config.score)
            else:
                scores_b = unit_scores(scorer_b, stats_b, config.positions, config.score)
            top_a, top_b = top_units(scores_a, k), top_units(scores_b, k)
            overlap = overlap_stats(top_a, top_b, n_units)

            heads_a = to_numpy(stats_a.head_mean(config.positions)).astype(np.float32)
            heads_b = to_numpy(stats_b.head_mean(config.positions)).astype(np.float32)
            n_all_heads = heads_a.size
            head_k = max(1, round(config.head_fraction * n_all_heads))
            head_top_a = np.argsort(-heads_a.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_top_b = np.argsort(-heads_b.reshape(-1), kind="stable")[:head_k].astype(np.int64)
            head_shared = len(set(head_top_a.tolist()) & set(head_top_b.tolist()))

            conditions: list[str] = []
            group_sizes: list[int] = []
            logprob = np.zeros((0, len(eval_sets), 0))
            correct = np.zeros((0, len(eval_sets), 0))
            if config.causal:
                means = (stats_a.signed_all + (stats_b.signed_all if set_b is not None else 0)) / (
                    stats_a.tokens_all + (stats_b.tokens_all if set_b is not None else 0)
                )
                groups = unit_groups(top_a, top_b, n_units, config.seed)
                conditions = list(CONDITIONS) if set_b is not None else ["none", "shared", "A-only", "random"]
                encoded = [encode_items(session, s.items, with_answer=True) for s in eval_sets]
                width = max(len(e) for e in encoded)
                logprob = np.full((len(conditions), len(eval_sets), width), np.nan)
                correct = np.full((len(conditions), len(eval_sets), width), np.nan)
                steps = len(conditions) * len(eval_sets)
                for c, condition in enumerate(conditions):
                    chosen = {} if condition == "none" else groups[condition]
                    group_sizes.append(sum(len(u) for u in chosen.values()))
                    hooks = intervention_hooks(chosen, config.intervention, alpha=config.alpha, means=means)
                    for s, items in enumerate(encoded):
                        step = c * len(eval_sets) + s
                        progress(0.6 + 0.4 * step / steps, f"causal test: {condition} on {eval_sets[s].name}")
                        scores = answer_scores(session, items, hooks, config.batch_size)
                        logprob[c, s, : len(items)] = scores.logprob
                        correct[c, s, : len(items)] = scores.correct
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
        )
