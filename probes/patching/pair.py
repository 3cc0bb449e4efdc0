"""The clean/corrupted prompt pair, its answer tokens and the patching metric.

Activation patching compares two prompts of the same token length that differ in a few tokens
("The Eiffel Tower is in" / "The Colosseum is in"). The metric is read at the last position:
the logit difference between the clean and the corrupted answer, or the clean answer's
probability, normalised so that the clean run scores 1 and the corrupted run 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.models.session import validate_prompt as _validate_prompt

METRICS = ("logit_diff", "prob")
METRIC_LABELS = {
    "logit_diff": "logit difference (clean answer − corrupted answer)",
    "prob": "probability of the clean answer",
}


@dataclass(frozen=True)
class PromptPair:
    """Tokenised clean and corrupted prompts of equal length, with their answer token ids."""

    clean: Int[Tensor, "1 seq"]
    corrupted: Int[Tensor, "1 seq"]
    clean_answer: int
    corrupted_answer: int
    position: int  # where the answer is read (the last position)

    @property
    def seq_len(self) -> int:
        """Tokens per prompt (BOS included)."""
        return int(self.clean.shape[-1])

    @property
    def differing(self) -> list[int]:
        """Positions where the two prompts have different tokens."""
        return (self.clean[0] != self.corrupted[0]).nonzero().flatten().tolist()


def tokenize_pair(session: ModelSession, clean: str, corrupted: str) -> tuple[Tensor, Tensor]:
    """Both prompts' tokens; a length mismatch is an error that shows both tokenizations."""
    if not corrupted.strip():
        raise ValueError("corrupted: the corrupted prompt is empty; give a prompt of the same token length")
    clean_ids, corrupted_ids = session.tokenize(clean), session.tokenize(_validate_prompt(corrupted))
    if clean_ids.shape[-1] != corrupted_ids.shape[-1]:
        raise ValueError(
            f"the clean and corrupted prompts must have the same number of tokens: the clean prompt has "
            f"{clean_ids.shape[-1]} {session.str_tokens(clean_ids)}, the corrupted prompt has "
            f"{corrupted_ids.shape[-1]} {session.str_tokens(corrupted_ids)}; reword one of them"
        )
    return clean_ids, corrupted_ids


def answer_id(session: ModelSession, answer: str, field: str) -> int:
    """The one token id of ``answer`` (no BOS); ``ValueError`` naming ``field`` otherwise."""
    ids = session.tokenizer.encode(answer, add_special_tokens=False)
    if len(ids) != 1:
        pieces = session.decode_each(ids)
        raise ValueError(
            f"{field} {answer!r} must be a single token, but it is {len(ids)} tokens {pieces}; "
            "choose a single-token answer (often with a leading space, e.g. ' Paris')"
        )
    return int(ids[0])


def resolve_pair(
    session: ModelSession, clean: str, corrupted: str, clean_answer: str, corrupted_answer: str
) -> PromptPair:
    """Tokenise the pair and resolve the answers (empty: that prompt's own top prediction)."""
    clean_ids, corrupted_ids = tokenize_pair(session, clean, corrupted)
    if clean_answer and corrupted_answer:
        ids = (
            answer_id(session, clean_answer, "clean_answer"),
            answer_id(session, corrupted_answer, "corrupted_answer"),
        )
    else:
        with torch.inference_mode():
            top = [
                int(session.final_logits(final_hidden(session, t)[0, -1]).argmax())
                for t in (clean_ids, corrupted_ids)
            ]
        ids = (
            answer_id(session, clean_answer, "clean_answer") if clean_answer else top[0],
            answer_id(session, corrupted_answer, "corrupted_answer") if corrupted_answer else top[1],
        )
    if ids[0] == ids[1]:
        raise ValueError(
            f"the clean and corrupted answers are the same token {session.decode_each([ids[0]])}; "
            "give two different answers (clean_answer, corrupted_answer)"
        )
    return PromptPair(clean_ids, corrupted_ids, ids[0], ids[1], clean_ids.shape[-1] - 1)


def final_hidden(
    session: ModelSession, tokens: Int[Tensor, "batch seq"]
) -> Float[Tensor, "batch seq d_model"]:
    """The final norm's output (what the unembedding reads) from a forward that skips the unembedding."""
    from lenslab.models import hooknames

    return session.capture(tokens, [hooknames.FINAL_NORM])[hooknames.FINAL_NORM]


def metric(
    session: ModelSession, hidden: Float[Tensor, "rows d_model"], pair: PromptPair, name: str
) -> Float[Tensor, " rows"]:
    """The raw metric of each row's final hidden state at the answer position (float64).

    ``logit_diff`` needs only the two answer logits (:meth:`ModelSession.answer_logits`); ``prob``
    needs the full softmax at that one position.
    """
    with torch.inference_mode():
        return _metric(session, hidden, pair, name)


def _metric(session: ModelSession, hidden: Tensor, pair: PromptPair, name: str) -> Tensor:
    if name == "logit_diff":
        logits = session.answer_logits(hidden, [pair.clean_answer, pair.corrupted_answer]).double()
        return logits[:, 0] - logits[:, 1]
    if name == "prob":
        return session.final_logits(hidden).double().softmax(-1)[:, pair.clean_answer]
    raise ValueError(f"metric must be one of {list(METRICS)}, got {name!r}")


def normalise(values: Tensor, clean: float, corrupted: float) -> Tensor:
    """(m − m_corrupted) / (m_clean − m_corrupted): 1 = clean behaviour restored, 0 = corrupted."""
    return (values - corrupted) / (clean - corrupted)
