"""Reading the neurosymbolic structure out of hidden states, and writing answers back in.

Sequences are "prompt + answer + newline": position ``p0`` (the prompt's last token) is where the
encoder reads and positions ``p0 + j`` predict answer token ``j``. Tokenizers that merge digits
(GPT-2) are refused, since step ``j``'s decoded vector must steer exactly one digit. Because the
merge at step ``j`` depends only on ``j``, teacher forcing the true answer and checking the
argmax at every step gives greedy decoding's result: :func:`evaluate` needs one forward per
problem, and :func:`greedy_answer` (one forward per generated token) is for single prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.neurosymbolic.artefact import Artefact
from lenslab.probes.neurosymbolic.fit import Collected, LinearMap, Merge, collect, mean_cosine
from lenslab.probes.neurosymbolic.tasks import Problem, solve
from lenslab.probes.neurosymbolic.vsa import Codebook, ProblemReadout, digits_of
from lenslab.progress import NO_PROGRESS, Progress


# --------------------------------------------------------------------------------- sequences
@dataclass
class Encoded:
    """Token ids of problems: the prompt, the answer tokens and where the answer starts."""

    sequences: list[list[int]]
    answers: list[list[int]]  # answer token ids: digits then the newline
    starts: list[int]  # position of the prompt's last token (predicts the first answer token)

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
    sequences, answers, starts = [], [], []
    for prompt, problem in zip(prompts, problems, strict=True):
        prompt_ids = session.tokenize(prompt)[0].tolist()
        answer_ids = answer_tokens(session, problem.answer)
        sequences.append(prompt_ids + answer_ids)
        answers.append(answer_ids)
        starts.append(len(prompt_ids) - 1)
    return Encoded(sequences, answers, starts)


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


def read_out(
    codebook: Codebook, encoder: LinearMap, states: Float[Tensor, "n d_model"], threshold: float
) -> Readout:
    """Encode hidden states, decode operation and operands, and compute answers where confident.

    Confident = the best operation score clears ``threshold`` *and* the state lies within the
    encoder's training range: a non-arithmetic state gives scores ≫ 1 that would clear any threshold.
    """
    vectors = encoder(states.to(encoder.weight.device)).float()
    covered = encoder.covers(states)
    decoded = codebook.decode_problems(vectors)
    top = decoded.operation_scores.max(-1).values.tolist()
    operations = [codebook.operations[i] for i in decoded.operation.tolist()]
    fired, answers = [], []
    for op, first, second, score, inside in zip(
        operations, decoded.first.tolist(), decoded.second.tolist(), top, covered, strict=True
    ):
        answer: int | None = None
        try:
            answer = solve(op, first, second)
        except ValueError:
            answer = None
        if answer is not None and answer > codebook.max_value:
            answer = None
        answers.append(answer)
        fired.append(bool(inside and score >= threshold and answer is not None))
    return Readout(vectors, decoded, operations, top, fired, answers, covered)


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
    artefact_codebook: Codebook, readout: Readout, problems: list[Problem], operand_digits: int
) -> dict[str, float]:
    """Operation accuracy, operand digit / whole-number accuracy, cosine to target, fired share."""
    ops = torch.as_tensor([artefact_codebook.operation_index(p.operation) for p in problems])
    first = torch.as_tensor([p.first for p in problems])
    second = torch.as_tensor([p.second for p in problems])
    target = artefact_codebook.encode_problems(first, ops, second)
    decoded = readout.decoded
    digits_true = torch.cat([digits_of(first, operand_digits), digits_of(second, operand_digits)], 1)
    digits_read = torch.cat(
        [decoded.first_digits[:, :operand_digits].cpu(), decoded.second_digits[:, :operand_digits].cpu()], 1
    )
    return {
        "operation_accuracy": float((decoded.operation.cpu() == ops).float().mean()),
        "digit_accuracy": float((digits_true == digits_read).float().mean()),
        "number_accuracy": float(
            torch.cat([decoded.first.cpu() == first, decoded.second.cpu() == second]).float().mean()
        ),
        "both_operands_accuracy": float(
            ((decoded.first.cpu() == first) & (decoded.second.cpu() == second)).float().mean()
        ),
        "cosine": mean_cosine(readout.vectors.cpu(), target.cpu()),
        "fired": float(np.mean(readout.fired)) if readout.fired else 0.0,
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
    batch_size: int = 16,
    baseline: Collected | None = None,
    progress: Progress = NO_PROGRESS,
) -> dict[str, Any]:
    """Exact match and answer-token cross-entropy per task: baseline, merge, and oracle merge.

    The oracle merge writes the *true* answer's decoded vectors into every problem: it separates
    "the encoder read the problem wrong" from "the decoder cannot steer the model". ``baseline``
    may pass an unmodified run of the same sequences with ``targets`` (saves one pass).
    """
    readout = read_out(artefact.codebook, artefact.encoders[artefact.chosen_layer], encoder_states, threshold)
    runs: dict[str, Collected] = {} if baseline is None else {"baseline": baseline}
    merges = {
        **({"baseline": None} if baseline is None else {}),
        "merged": decoded_steps(artefact, readout.system_answers, readout.fired),
        "oracle": decoded_steps(artefact, [p.answer for p in problems], [True] * len(problems)),
    }
    for k, (name, vectors) in enumerate(merges.items()):
        merge = None if vectors is None else Merge(artefact.merge_layer, weight, vectors, encoded.starts)
        runs[name] = collect(
            session,
            encoded.sequences,
            encoded.positions(),
            [artefact.merge_layer],
            targets=encoded.answers,
            merge=merge,
            batch_size=batch_size,
            progress=lambda f, m, k=k: progress((k + f) / len(merges), m),
            message=f"evaluating ({name})",
        )
    runs = {name: runs[name] for name in ("baseline", "merged", "oracle")}
    table: dict[str, Any] = {"threshold": threshold, "weight": weight, "merge_layer": artefact.merge_layer}
    groups = {
        op: [i for i, p in enumerate(problems) if p.operation == op] for op in artefact.codebook.operations
    }
    groups["all"] = list(range(len(problems)))
    rows = []
    for op, members in groups.items():
        if not members:
            continue
        row: dict[str, Any] = {"task": op, "n": len(members)}
        row["fired"] = float(np.mean([readout.fired[i] for i in members]))
        row["system_correct"] = float(
            np.mean([readout.system_answers[i] == problems[i].answer for i in members])
        )
        for name, run in runs.items():
            assert run.argmax is not None and run.target_logprob is not None
            exact = [
                bool((run.argmax[i].cpu() == torch.as_tensor(encoded.answers[i])).all()) for i in members
            ]
            ce = [float(-run.target_logprob[i].mean()) for i in members]
            row[f"{name}_accuracy"] = float(np.mean(exact))
            row[f"{name}_ce"] = float(np.mean(ce))
        rows.append(row)
    table["rows"] = rows
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
) -> tuple[str, list[int]]:
    """Greedy continuation until a non-digit token (merging step j's vector at p0 + j if given)."""
    generated: list[int] = []
    start = len(prompt_ids) - 1
    for _ in range(max_steps):
        sequence = prompt_ids + generated
        merge = None
        if merge_vectors is not None and len(merge_vectors):
            merge = Merge(merge_layer, weight, [merge_vectors], [start])
        run = collect(session, [sequence], [[len(sequence) - 1]], [merge_layer], targets=[[0]], merge=merge)
        assert run.argmax is not None
        token = int(run.argmax[0][0])
        generated.append(token)
        if not session.tokenizer.decode([token]).strip().isdigit():
            break
    text = session.tokenizer.decode(generated)
    return text, generated
