"""Attention heads: every layer × head pattern of a prompt, scored the ways heads are usually classified.

Patterns come from one forward through the session (the bridge's ``hook_pattern``: the
post-softmax weights HF's eager attention returns with ``output_attentions``, sliding windows
included). The scores are means over query positions of tensor diagonals (:mod:`.scores`);
induction is measured on repeated random token sequences from the model's vocabulary (Olsson et
al. 2022), and each head's direct contribution to the predicted token reuses the direct logit
attribution split (:mod:`lenslab.probes.dla.split`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.attention import scores
from lenslab.probes.attention.result import AttentionConfig, AttentionResult
from lenslab.probes.base import Probe, register, to_numpy
from lenslab.probes.dla import split
from lenslab.progress import NO_PROGRESS, Progress


@register
class AttentionHeads(Probe[AttentionConfig, AttentionResult]):
    """Every attention pattern of a prompt and per-head scores."""

    name = "attention"
    title = "Attention heads"
    description = (
        "Every layer × head attention pattern, with previous-token, BOS-sink, induction and entropy "
        "scores and each head's direct effect on the predicted token."
    )
    config_cls = AttentionConfig
    result_cls = AttentionResult

    def run(
        self, session: ModelSession, prompt: str, config: AttentionConfig, progress: Progress = NO_PROGRESS
    ) -> AttentionResult:
        """One forward for the prompt's patterns (and head outputs), one batched forward for induction."""
        config.validate(session)
        layers = session.check_layers(config.layers)
        tokens = session.tokenize(prompt)
        names = [hooknames.attn_pattern(layer) for layer in layers]
        progress(0.0, "forward pass")
        head_logit = np.full((len(layers), int(session.cfg.n_heads)), np.nan)
        predicted = ""
        with session.lock:
            if config.head_logits:
                run = session.run(tokens, [*names, *split.hook_names(session)])
                acts = run.activations
                position = int(tokens.shape[-1]) - 1
                target = int(run.logits[0, position].argmax())
                predicted = session.decode_each([target])[0]
                parts = split.decompose(session, acts, position)
                attribution = split.attribute(session, parts, split.logit_direction(session, target))
                head_logit = to_numpy(attribution.heads)[layers]
            else:
                acts = session.capture(tokens, names)
            patterns = torch.stack([acts[name][0] for name in names]).float()  # [layer, head, q, k]
            progress(0.4, "induction sequences")
            induction = np.full((len(layers), patterns.shape[1], 3), np.nan)
            if config.induction:
                per_sequence = induction_scores(session, layers, config)
                induction = scores.intervals(to_numpy(per_sequence).astype(np.float64))
        progress(0.9, "scores")
        windows = session.attention_windows()
        return AttentionResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(tokens[0].tolist()),
            layers=np.asarray(layers, dtype=np.int64),
            windows=np.asarray([windows[layer] or 0 for layer in layers], dtype=np.int64),
            patterns=to_numpy(patterns).astype(np.float32),
            prev_token=_prompt_score(scores.previous_token(patterns)),
            first_token=_prompt_score(scores.first_token(patterns)),
            entropy=_prompt_score(scores.entropy(patterns), bounds=(0.0, math.inf)),
            n_queries=int(tokens.shape[-1]) - 1,
            induction=induction,
            induction_n=config.induction_sequences if config.induction else 0,
            induction_length=config.induction_length if config.induction else 0,
            head_logit=np.asarray(head_logit, dtype=np.float64),
            predicted_token=predicted,
        )


def _prompt_score(
    values: Float[Tensor, "layer head n"], bounds: tuple[float, float] = (0.0, 1.0)
) -> Float[np.ndarray, "layer head 3"]:
    """Mean over query positions with its interval (cut to ``bounds``); NaN for a one-token prompt."""
    return scores.intervals(to_numpy(values).astype(np.float64), bounds)


def random_repeated_tokens(session: ModelSession, length: int, n: int, seed: int) -> Int[Tensor, "n seq"]:
    """``n`` sequences ``[BOS] + s + s`` with ``s`` uniform over the vocabulary's ordinary tokens (seeded).

    Special and added tokens (BOS, padding, Gemma's ``<unusedN>`` …) are left out, so every token is
    text the model was trained to read; BOS is prepended when the model's convention adds one.
    """
    tokenizer = session.tokenizer
    size = min(session.d_vocab, len(tokenizer))
    allowed = torch.ones(size, dtype=torch.bool)
    excluded = [i for i in [*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder] if 0 <= i < size]
    allowed[excluded] = False
    candidates = allowed.nonzero()[:, 0]
    generator = torch.Generator().manual_seed(seed)
    first = candidates[torch.randint(len(candidates), (n, length), generator=generator)]
    parts = [first, first]
    if session.prepend_bos and tokenizer.bos_token_id is not None:
        parts.insert(0, torch.full((n, 1), int(tokenizer.bos_token_id)))
    return torch.cat(parts, 1).to(session.device)


def induction_scores(
    session: ModelSession, layers: list[int], config: AttentionConfig
) -> Float[Tensor, "layer head sequence"]:
    """Mean induction attention of every head on each random sequence (one batched forward)."""
    tokens = random_repeated_tokens(session, config.induction_length, config.induction_sequences, config.seed)
    start = int(tokens.shape[1]) - 2 * config.induction_length
    names = [hooknames.attn_pattern(layer) for layer in layers]
    acts = session.capture(tokens, names)
    patterns = torch.stack([acts[name] for name in names]).float()  # [layer, seq, head, q, k]
    values = scores.induction(patterns, config.induction_length, start)  # [layer, seq, head, period]
    return values.mean(-1).permute(0, 2, 1)
