"""Reading the neurosymbolic structure out of hidden states, and writing answers back in.

Sequences are "prompt + answer + newline": position ``p0`` (the prompt's last token) is where the
encoder reads and positions ``p0 + j`` predict answer token ``j``. Tokenizers that merge digits
(GPT-2) are refused, since step ``j``'s decoded vector must steer exactly one digit. Because the
merge at step ``j`` depends only on ``j``, teacher forcing the true answer and checking the
argmax at every step gives greedy decoding's result: :func:`evaluate` needs one forward per
problem, and :func:`greedy_answer` reads a single prompt's greedy answer off such a run, running
the model (KV-cached) only from where the greedy tokens depart from the forced answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.neurosymbolic.artefact import Artefact
from lenslab.probes.neurosymbolic.fit import Collected, LinearMap, Merge, collect
from lenslab.probes.neurosymbolic.gate import gate_performance
from lenslab.probes.neurosymbolic.tasks import Problem, solve
from lenslab.probes.neurosymbolic.vsa import Codebook, ProblemReadout, digits_of
from lenslab.probes.stats import Interval, mean_ci, paired_difference, wilson
from lenslab.progress import NO_PROGRESS, Progress


# --------------------------------------------------------------------------------- sequences
@dataclass
class Encoded:
    """Token ids of problems: the prompt, the answer tokens and where the answer starts."""

    sequences: list[list[int]]
    answers: list[list[int]]  # answer token ids: digits then the newline
    starts: list[int]  # position of the prompt's last token (predicts the first answer token)
    prefixes: list[int] | None = None  # length of the shot lines' tokens (shared, run once; see collect)

    def positions(self) -> list[list[int]]:
        """Positions predicting each answer token."""
        return [list(range(s, s + len(a))) for s, a in zip(self.starts, self.answers, strict=True)]


def answer_tokens(session: ModelSession, answer: int) -> list[int]:
    r"""Token ids of ``"{answer}\n"``; refuses tokenizers that do not write one digit per token."""
    ids = session.tokenizer(f"{answer}\n", add_special_tokens=False)["input_ids"]
    if len(ids) != len(str(answer)) + 1:
        raise ValueError(
            f"{session.model_id}'s tokenizer writes {answer} as {len(ids) - 1} token(s); the neurosymbolic "
            "merge needs one token per digit (as Gemma, Llama-3-style and SmolLM tokenizers do)"
        )
    return [int(i) for i in ids]


def encode_prompts(session: ModelSession, prompts: list[str], problems: list[Problem]) -> Encoded:
    """Tokenize prompts (with BOS) and append the exact answers' tokens."""
    sequences, answers, starts, prefixes = [], [], [], []
    for prompt, problem in zip(prompts, problems, strict=True):
        prompt_ids = session.tokenize(prompt)[0].tolist()
        answer_ids = answer_tokens(session, problem.answer)
        sequences.append(prompt_ids + answer_ids)
        answers.append(answer_ids)
        starts.append(len(prompt_ids) - 1)
        prefixes.append(shot_prefix_length(session, prompt, problem, prompt_ids))
    return Encoded(sequences, answers, starts, prefixes)


def shot_prefix_length(session: ModelSession, prompt: str, problem: Problem, prompt_ids: list[int]) -> int:
    """How many leading tokens of ``prompt_ids`` are the shot lines' own tokens (at least 1).

    Prompts with the same shots share these tokens, so :func:`~.fit.collect` runs them once. Where
    the tokenizer does not split at the end of the shot lines, only the first token is claimed.
    """
    query = problem.line(with_answer=False)
    if not prompt.endswith(query) or len(prompt) == len(query):
        return 1
    head = session.tokenize(prompt[: len(prompt) - len(query)])[0].tolist()
    if 1 <= len(head) < len(prompt_ids) and prompt_ids[: len(head)] == head:
        return len(head)
    return 1


# -------------------------------------------------------------------------------------- readout
@dataclass
class Readout:
    """Decoded structure of a batch of hidden states and what the system would do with it."""

    vectors: Float[Tensor, "n dim"]
    decoded: ProblemReadout
    operations: list[str]
    top_score: list[float]
    fired: list[bool]
    system_answers: list[int | None]
    in_distribution: list[bool]  # state within the encoder's training range (else it never fires)
    confidence: list[float]  # the weakest slot's margin (see gate.py)
    eligible: list[bool]  # passes the range gate, the operation score and has an answer
    reasons: list[str]  # why the system abstains ("" where it acts)


def read_out(
    codebook: Codebook,
    encoder: LinearMap,
    states: Float[Tensor, "n d_model"],
    threshold: float,
    min_confidence: float = -math.inf,
) -> Readout:
    """Encode hidden states, decode operation and operands, and compute answers where confident.

    The system acts when (1) the state lies within the encoder's training range (a non-arithmetic
    state gives scores ≫ 1 that would clear any threshold), (2) the best operation score clears
    ``threshold`` (the paper's gate), (3) the decoded problem has an answer and (4) the read-out
    confidence (weakest slot margin) reaches ``min_confidence``, the calibrated threshold of
    :mod:`~lenslab.probes.neurosymbolic.gate` (``math.inf``: never; ``-math.inf``: no such gate).
    """
    vectors = encoder(states.to(encoder.weight.device)).float()
    covered = encoder.covers(states)
    decoded = codebook.decode_problems(vectors)
    top = decoded.operation_scores.max(-1).values.tolist()
    confidence = decoded.confidence().tolist()
    operations = [codebook.operations[i] for i in decoded.operation.tolist()]
    fired, answers, eligible, reasons = [], [], [], []
    for op, first, second, score, inside, sure in zip(
        operations, decoded.first.tolist(), decoded.second.tolist(), top, covered, confidence, strict=True
    ):
        answer: int | None = None
        try:
            answer = solve(op, first, second)
        except ValueError:
            answer = None
        if answer is not None and answer > codebook.max_value:
            answer = None
        answers.append(answer)
        if not inside:
            reason = "the state lies outside the encoder's training range"
        elif score < threshold:
            reason = f"operation score {score:.2f} < {threshold:g}"
        elif answer is None:
            reason = "the decoded problem has no answer"
        elif not math.isfinite(min_confidence) and min_confidence > 0:
            reason = "no confidence threshold reaches the target precision at this layer"
        elif sure < min_confidence:
            reason = f"read-out confidence {sure:.2f} < calibrated {min_confidence:.2f}"
        else:
            reason = ""
        eligible.append(bool(inside and score >= threshold and answer is not None))
        fired.append(reason == "")
        reasons.append(reason)
    return Readout(vectors, decoded, operations, top, fired, answers, covered, confidence, eligible, reasons)


def fully_correct(codebook: Codebook, readout: Readout, problems: list[Problem]) -> list[bool]:
    """Whether the operation and both whole operands were read right, per problem."""
    return [
        op == p.operation and first == p.first and second == p.second
        for op, first, second, p in zip(
            readout.operations,
            readout.decoded.first.tolist(),
            readout.decoded.second.tolist(),
            problems,
            strict=True,
        )
    ]


def decoded_steps(artefact: Artefact, answers: list[int | None], fired: list[bool]) -> list[Tensor]:
    """Hidden-state vectors to merge for each problem (empty where the system does not act)."""
    empty = torch.zeros(0, artefact.d_model, device=artefact.decoder.weight.device)
    out = []
    for answer, act in zip(answers, fired, strict=True):
        if not act or answer is None:
            out.append(empty)
        else:
            out.append(artefact.decoder(artefact.codebook.answer_step_vectors(answer)).float())
    return out


def readout_metrics(
    codebook: Codebook, readout: Readout, problems: list[Problem], operand_digits: int
) -> dict[str, Interval]:
    """Per-layer read-out quality with 95% intervals over ``len(problems)`` independent problems.

    Rates over problems (operation, both operands, the whole problem, the share the system acts
    on, and its precision there) take Wilson intervals; digit and whole-operand accuracy are
    averaged within each problem first (its digits are not independent) and take a t interval
    over problems, as does the cosine to the target vector.
    """
    ops = torch.as_tensor([codebook.operation_index(p.operation) for p in problems])
    first = torch.as_tensor([p.first for p in problems])
    second = torch.as_tensor([p.second for p in problems])
    target = codebook.encode_problems(first, ops, second)
    decoded = readout.decoded
    digits_true = torch.cat([digits_of(first, operand_digits), digits_of(second, operand_digits)], 1)
    digits_read = torch.cat(
        [decoded.first_digits[:, :operand_digits].cpu(), decoded.second_digits[:, :operand_digits].cpu()], 1
    )
    op_right = (decoded.operation.cpu() == ops).numpy()
    first_right = (decoded.first.cpu() == first).numpy()
    second_right = (decoded.second.cpu() == second).numpy()
    correct = op_right & first_right & second_right
    cosines = torch.nn.functional.cosine_similarity(
        readout.vectors.cpu().float(), target.cpu().float(), dim=-1
    )
    precision, coverage = gate_performance(np.asarray(readout.fired), correct)
    n = len(problems)
    return {
        "operation_accuracy": wilson(int(op_right.sum()), n),
        "digit_accuracy": mean_ci((digits_true == digits_read).float().mean(1).numpy()),
        "number_accuracy": mean_ci((first_right.astype(float) + second_right) / 2),
        "both_operands_accuracy": wilson(int((first_right & second_right).sum()), n),
        "problem_accuracy": wilson(int(correct.sum()), n),
        "cosine": mean_ci(cosines.numpy()),
        "fired": coverage,
        "gate_precision": precision,
    }


def evaluate(
    session: ModelSession,
    artefact: Artefact,
    problems: list[Problem],
    encoded: Encoded,
    encoder_states: Float[Tensor, "n d_model"],
    *,
    threshold: float,
    weight: float,
    min_confidence: float = -math.inf,
    batch_size: int = 16,
    baseline: Collected | None = None,
    progress: Progress = NO_PROGRESS,
) -> dict[str, Any]:
    """Exact match and answer-token cross-entropy per task: few-shot baseline, merge, oracle merge.

    The baseline is the model on the same few-shot prompts without intervention. The merge acts
    only where the gate fires; elsewhere the system abstains and the model's output is the
    baseline's by definition, so only the acting problems are re-run. The oracle merge writes the
    *true* answer's decoded vectors into every problem: it separates "the encoder read the
    problem wrong" from "the decoder cannot steer the model". ``baseline`` may pass an unmodified
    run of the same sequences with ``targets`` (saves one pass).

    Changes (merge − baseline) are paired per problem: cross-entropy with a paired-t interval,
    exact match with a t interval on the per-problem differences (−1, 0, +1). Every rate carries
    a Wilson interval; ``per_problem`` keeps the raw values so any statistic can be recomputed.
    """
    readout = read_out(
        artefact.codebook, artefact.encoders[artefact.chosen_layer], encoder_states, threshold, min_confidence
    )
    acting = [i for i, fired in enumerate(readout.fired) if fired]
    runs: dict[str, Collected] = {} if baseline is None else {"few_shot": baseline}
    oracle_vectors = decoded_steps(artefact, [p.answer for p in problems], [True] * len(problems))
    merged_vectors = decoded_steps(artefact, readout.system_answers, readout.fired)
    jobs: dict[str, tuple[list[int], list[Tensor] | None]] = {
        **({"few_shot": (list(range(len(problems))), None)} if baseline is None else {}),
        "merged": (acting, [merged_vectors[i] for i in acting]),
        "oracle": (list(range(len(problems))), oracle_vectors),
    }
    for k, (name, (rows, vectors)) in enumerate(jobs.items()):
        if not rows:
            runs[name] = Collected(states={}, target_logprob=[], argmax=[])
            continue
        merge = (
            None
            if vectors is None
            else Merge(artefact.merge_layer, weight, vectors, [encoded.starts[i] for i in rows])
        )
        runs[name] = collect(
            session,
            [encoded.sequences[i] for i in rows],
            [encoded.positions()[i] for i in rows],
            [artefact.merge_layer],
            targets=[encoded.answers[i] for i in rows],
            merge=merge,
            batch_size=batch_size,
            prefix_lengths=None if encoded.prefixes is None else [encoded.prefixes[i] for i in rows],
            progress=lambda f, m, k=k: progress((k + f) / len(jobs), m),
            message=f"evaluating ({name})",
        )

    def scores(run: Collected, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        assert run.argmax is not None and run.target_logprob is not None
        exact = [
            bool((run.argmax[j].cpu() == torch.as_tensor(encoded.answers[i])).all())
            for j, i in enumerate(rows)
        ]
        ce = [float(-run.target_logprob[j].mean()) for j in range(len(rows))]
        return np.asarray(exact, dtype=bool), np.asarray(ce, dtype=np.float64)

    every = list(range(len(problems)))
    few_exact, few_ce = scores(runs["few_shot"], every)
    oracle_exact, oracle_ce = scores(runs["oracle"], every)
    merged_exact, merged_ce = few_exact.copy(), few_ce.copy()  # abstaining: the model's own answer
    if acting:
        merged_exact[acting], merged_ce[acting] = scores(runs["merged"], acting)
    correct = np.asarray(fully_correct(artefact.codebook, readout, problems), dtype=bool)
    fired = np.asarray(readout.fired, dtype=bool)
    system_right = np.asarray([a == p.answer for a, p in zip(readout.system_answers, problems, strict=True)])
    per_problem = {
        "task": [p.operation for p in problems],
        "fired": fired.tolist(),
        "decoded_correct": correct.tolist(),
        "confidence": [float(c) for c in readout.confidence],
        "few_shot_exact": few_exact.tolist(),
        "few_shot_ce": few_ce.tolist(),
        "merged_exact": merged_exact.tolist(),
        "merged_ce": merged_ce.tolist(),
        "oracle_exact": oracle_exact.tolist(),
        "oracle_ce": oracle_ce.tolist(),
    }
    table: dict[str, Any] = {
        "threshold": threshold,
        "min_confidence": min_confidence if math.isfinite(min_confidence) else None,
        "weight": weight,
        "merge_layer": artefact.merge_layer,
        "per_problem": per_problem,
    }
    groups = {
        op: [i for i, p in enumerate(problems) if p.operation == op] for op in artefact.codebook.operations
    }
    groups["all"] = every
    rows_out = []
    for op, members in groups.items():
        if not members:
            continue
        m = np.asarray(members)
        precision, coverage = gate_performance(fired[m], correct[m])
        row: dict[str, Any] = {
            "task": op,
            "n": len(members),
            "fired": list(coverage.as_tuple()),
            "gate_precision": list(precision.as_tuple()),
            "system_correct": list(wilson(int(system_right[m].sum()), len(members)).as_tuple()),
        }
        for name, exact, ce in (
            ("few_shot", few_exact, few_ce),
            ("merged", merged_exact, merged_ce),
            ("oracle", oracle_exact, oracle_ce),
        ):
            row[f"{name}_accuracy"] = list(wilson(int(exact[m].sum()), len(members)).as_tuple())
            row[f"{name}_ce"] = list(mean_ci(ce[m]).as_tuple())
        for name, exact, ce in (("merged", merged_exact, merged_ce), ("oracle", oracle_exact, oracle_ce)):
            row[f"{name}_ce_change"] = list(paired_difference(ce[m], few_ce[m]).as_tuple())
            row[f"{name}_accuracy_change"] = list(
                paired_difference(exact[m].astype(float), few_exact[m].astype(float)).as_tuple()
            )
        rows_out.append(row)
    table["rows"] = rows_out
    return table


# ----------------------------------------------------------------------------------- generation
def greedy_answer(
    session: ModelSession,
    prompt_ids: list[int],
    *,
    merge_vectors: Tensor | None = None,
    merge_layer: int = 0,
    weight: float = 0.5,
    max_steps: int = 8,
    teacher_forced: tuple[Sequence[int], Sequence[int]] | None = None,
) -> tuple[str, list[int]]:
    """Greedy continuation until a non-digit token (merging step j's vector at p0 + j if given).

    ``teacher_forced`` is ``(answer ids, argmax at the positions predicting them)`` from one forward
    of the prompt followed by that answer with the same merge. Position ``p0 + j`` attends only to
    the prompt and the answer's first ``j`` tokens, so while the greedy tokens follow the answer its
    argmax there IS the greedy token: those steps are read off it, and the model runs only from the
    first step where the greedy token departs from the answer (none when the model writes it), as
    a KV-cached continuation (:func:`_cached_greedy`). Without it, every step re-runs the sequence.
    """
    generated: list[int] = []
    start = len(prompt_ids) - 1
    if teacher_forced is not None:
        answer, argmax = teacher_forced
        for expected, token in zip(answer, argmax, strict=True):
            generated.append(int(token))
            if _ends_answer(session, int(token)) or len(generated) == max_steps:
                return session.tokenizer.decode(generated), generated
            if int(token) != int(expected):
                break
        if len(generated) < max_steps and not _ends_answer(session, generated[-1]):
            vectors = merge_vectors if merge_vectors is not None and len(merge_vectors) else None
            generated = _cached_greedy(
                session, prompt_ids, generated, vectors, merge_layer, weight, max_steps
            )
        return session.tokenizer.decode(generated), generated
    while len(generated) < max_steps:
        sequence = prompt_ids + generated
        merge = None
        if merge_vectors is not None and len(merge_vectors):
            merge = Merge(merge_layer, weight, [merge_vectors], [start])
        run = collect(session, [sequence], [[len(sequence) - 1]], [merge_layer], targets=[[0]], merge=merge)
        assert run.argmax is not None
        token = int(run.argmax[0][0])
        generated.append(token)
        if _ends_answer(session, token):
            break
    text = session.tokenizer.decode(generated)
    return text, generated


def _cached_greedy(
    session: ModelSession,
    prompt_ids: list[int],
    generated: list[int],
    merge_vectors: Tensor | None,
    merge_layer: int,
    weight: float,
    max_steps: int,
) -> list[int]:
    """``generated`` continued greedily with the KV cache, until a non-digit token or ``max_steps``.

    One forward of the prompt and ``generated``, then one token a step. The merge (if any)
    writes step j's vector at position p0 + j of the merge layer's output, as
    :func:`~.fit.merge_hook` does in a full run; the hook counts the positions it has seen, since
    a cached step's single position is the next one after the cache.
    """
    start, seen = len(prompt_ids) - 1, [0]

    def merge(resid: Tensor, *, hook: Any = None) -> Tensor:
        first, seq = seen[0], resid.shape[1]
        seen[0] += seq
        assert merge_vectors is not None
        low, high = max(first, start), min(first + seq, start + len(merge_vectors))
        if low >= high:
            return resid
        rows = slice(low - first, high - first)
        resid = resid.clone()
        replacement = merge_vectors[low - start : high - start].to(resid)
        resid[:, rows] = (1.0 - weight) * resid[:, rows] + weight * replacement
        return resid

    hooks = [] if merge_vectors is None else [(session.resid_name(merge_layer), merge)]
    out_tokens = list(generated)
    device = session.device
    with session.hooks(hooks) as model, torch.inference_mode():
        out = model.hf(
            input_ids=torch.tensor([prompt_ids + generated], device=device), use_cache=True, logits_to_keep=1
        )
        while True:
            token = int(out.logits[0, -1].float().argmax())
            out_tokens.append(token)
            if _ends_answer(session, token) or len(out_tokens) >= max_steps:
                return out_tokens
            out = model.hf(
                input_ids=torch.tensor([[token]], device=device),
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )


def _ends_answer(session: ModelSession, token: int) -> bool:
    """Whether ``token`` ends a greedy answer: it is not made of digits."""
    return not session.tokenizer.decode([token]).strip().isdigit()
