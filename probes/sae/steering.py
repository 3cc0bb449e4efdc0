"""Steer or ablate one SAE feature and compare the model's output before and after.

Three interventions at the SAE's hook point, applied at every position after BOS through
``session.hooks`` only:

- ``add``: activation += α · W_dec[f] (steering along the feature's decoder direction);
- ``clamp``: set the feature's activation to α, keeping the SAE's error term:
  activation += (α − a_f) · W_dec[f], with a_f the feature's activation on that token;
- ``zero``: ablate the feature (clamp to 0).

The result shows the next-token distribution and a short greedy continuation with and without
the intervention (no KV cache: every step is a full forward with the hook attached, which keeps
the intervention on the generated tokens too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.plotting import label
from lenslab.probes.sae.loading import DEFAULT_SAE, LoadedSAE, load_sae
from lenslab.progress import NO_PROGRESS, Progress

MODES = ("add", "clamp", "zero")


def steering_hook(loaded: LoadedSAE, feature: int, mode: str, alpha: float) -> Any:
    """The hook function implementing ``mode`` for ``feature`` (BOS position untouched)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    direction = loaded.direction(feature)

    def steer(activation: Tensor, hook: Any) -> Tensor:
        out = activation.clone()
        body = activation[:, 1:]
        step = direction.to(activation.dtype)
        if mode == "add":
            out[:, 1:] = body + alpha * step
        else:
            target = 0.0 if mode == "zero" else alpha
            current = loaded.encode(body)[..., feature : feature + 1].to(activation.dtype)
            out[:, 1:] = body + (target - current) * step
        return out

    return steer


def greedy(
    session: ModelSession, tokens: Int[Tensor, "1 seq"], n_new: int, hooks: list[tuple[str, Any]]
) -> tuple[Int[Tensor, " n_new"], Float[Tensor, " vocab"]]:
    """Greedy continuation of ``tokens`` with ``hooks`` live; also returns the first step's probabilities.

    KV-cached (:meth:`ModelSession.generate_greedy`): the prompt runs once, then one token per
    step. The hooks expect whole sequences whose first row is BOS (left clean); in the cached
    steps every row is a new token, so they see it behind a stand-in first row that is dropped.
    """
    stage = {"prefill": True}

    def cached(fn: Any) -> Any:
        def hooked(activation: Tensor, hook: Any) -> Tensor:
            if stage["prefill"]:
                return fn(activation, hook=hook)
            padded = torch.cat([activation[:, :1], activation], dim=1)
            return fn(padded, hook=hook)[:, 1:]

        return hooked

    ids, kept = session.generate_greedy(
        tokens,
        n_new,
        hooks=[(name, cached(fn)) for name, fn in hooks],
        on_prefill=lambda: stage.update(prefill=False),
    )
    return ids[0], kept[0][0, -1].float().softmax(-1)


@dataclass(frozen=True)
class SAESteeringConfig(Config):
    """Which feature to steer, how, and how much output to compare."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "'default', 'trained:<name>', 'pretrained:<release>/<sae_id>' or an SAE folder"},
    )
    feature: int = field(default=0, metadata={"help": "feature index", "min": 0})
    mode: str = field(
        default="add",
        metadata={"help": "add α·W_dec[f], clamp the feature to α, or zero it", "choices": MODES},
    )
    alpha: float = field(
        default=150.0,
        metadata={
            "help": "steering strength / clamp value; about the feature's max activation is a good start",
            "min": -1e6,
            "max": 1e6,
        },
    )
    n_new: int = field(default=12, metadata={"help": "greedy tokens generated", "min": 1, "max": 64})
    k: int = field(default=10, metadata={"help": "next-token candidates compared", "min": 1, "max": 50})


@dataclass(frozen=True)
class SAESteeringResult(Result):
    """Next-token distribution and greedy continuation, clean vs. steered."""

    probe = "sae_steering"
    config: SAESteeringConfig
    sae_label: str
    hook_name: str
    feature: int
    candidate_tokens: list[str]
    candidate_ids: Int[np.ndarray, " k"]
    probs_before: Float[np.ndarray, " k"]
    probs_after: Float[np.ndarray, " k"]
    top_before: str
    top_after: str
    kl: float
    continuation_before: str
    continuation_after: str

    def summary(self) -> dict[str, object]:
        """Top next token before/after and the KL divergence between the distributions."""
        return {
            "next token before": self.top_before,
            "next token after": self.top_after,
            "KL(before‖after)": self.kl,
        }

    def figures(self) -> dict[str, go.Figure]:
        """Grouped bars: probabilities of the candidate next tokens before and after."""
        names = [label(t) for t in self.candidate_tokens]
        fig = go.Figure()
        fig.add_bar(x=names, y=self.probs_before, name="clean")
        fig.add_bar(
            x=names, y=self.probs_after, name=f"{self.config.mode} f{self.feature} (α={self.config.alpha:g})"
        )
        fig.update_layout(
            barmode="group",
            title="Next-token probabilities, clean vs. steered",
            yaxis_title="probability",
            template="plotly_white",
        )
        return {"next_token": fig}


@register
class SAESteering(Probe[SAESteeringConfig, SAESteeringResult]):
    """Add, clamp or zero one SAE feature and compare outputs."""

    name = "sae_steering"
    title = "SAE steering"
    description = (
        "Steer with (or ablate) one SAE feature and compare next-token predictions and continuations."
    )
    config_cls = SAESteeringConfig
    result_cls = SAESteeringResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SAESteeringConfig,
        progress: Progress = NO_PROGRESS,
        *,
        loaded: LoadedSAE | None = None,
    ) -> SAESteeringResult:
        """Generate with and without the intervention."""
        config.validate(session)
        loaded = loaded or load_sae(session, config.sae)
        feature = loaded.check_feature(config.feature)
        tokens = session.tokenize(prompt)
        hook = (loaded.hook_name, steering_hook(loaded, feature, config.mode, config.alpha))
        progress(0.0, "clean continuation")
        clean_ids, clean_probs = greedy(session, tokens, config.n_new, [])
        progress(0.5, "steered continuation")
        steer_ids, steer_probs = greedy(session, tokens, config.n_new, [hook])
        k = min(config.k, session.d_vocab)
        union = torch.unique(torch.cat([clean_probs.topk(k).indices, steer_probs.topk(k).indices]))
        order = torch.argsort(-(clean_probs[union] + steer_probs[union]))
        candidates = union[order][: 2 * k]
        kl = float(
            (clean_probs * (clean_probs.clamp_min(1e-30).log() - steer_probs.clamp_min(1e-30).log())).sum()
        )
        progress(1.0, "done")
        decode = session.tokenizer.decode
        return SAESteeringResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            sae_label=loaded.label,
            hook_name=loaded.hook_name,
            feature=feature,
            candidate_tokens=session.decode_each(candidates.tolist()),
            candidate_ids=to_numpy(candidates).astype(np.int64),
            probs_before=to_numpy(clean_probs[candidates]).astype(np.float32),
            probs_after=to_numpy(steer_probs[candidates]).astype(np.float32),
            top_before=session.decode_each([int(clean_probs.argmax())])[0],
            top_after=session.decode_each([int(steer_probs.argmax())])[0],
            kl=kl,
            continuation_before=decode(clean_ids.tolist()),
            continuation_after=decode(steer_ids.tolist()),
        )
