"""Logit lens: read every layer's residual stream as if it were the last one.

For layer ℓ and position t, apply the final norm and the unembedding to h_t^ℓ and take the
softmax. This is also method 1 ("direct vocabulary projection") of Future Lens. The full
[layer, pos, vocab] tensor would be gigabytes for a 262k vocabulary, so each layer is decoded on
its own and only the top-k and the final prediction's rank/probability are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.plotting import cell_state, label, token_grid
from lenslab.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class LogitLensConfig(Config):
    """Settings of the logit lens."""

    k: int = field(default=5, metadata={"help": "top tokens kept per cell", "min": 1, "max": 50})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to decode (empty: all)"})

    def validate(self, session: ModelSession) -> None:
        """Check k and the layer selection against the model."""
        super().validate(session)
        if self.k > session.d_vocab:
            raise ValueError(f"k={self.k} exceeds the vocabulary size {session.d_vocab}")
        session.check_layers(self.layers)


@dataclass(frozen=True)
class LogitLensResult(Result):
    """Top-k decoded tokens per (layer, position) and how the final prediction emerges."""

    probe = "logit_lens"
    state_figures = ("grid",)
    config: LogitLensConfig
    tokens: list[str]
    layers: Int[np.ndarray, " layer"]
    top_ids: Int[np.ndarray, "layer pos k"]
    top_probs: Float[np.ndarray, "layer pos k"]
    top_tokens: list[list[list[str]]]
    final_ids: Int[np.ndarray, " pos"]  # the model's own next-token prediction at each position
    final_tokens: list[str]
    final_rank: Int[np.ndarray, "layer pos"]  # 0 = top-1
    final_prob: Float[np.ndarray, "layer pos"]

    def summary(self) -> dict[str, object]:
        """Where the last position's final prediction first becomes top-1."""
        last = self.final_rank[:, -1]
        first = int(self.layers[np.argmax(last == 0)]) if (last == 0).any() else None
        return {
            "next token": self.final_tokens[-1],
            "first layer with it top-1": first,
            "final probability": float(self.final_prob[-1, -1]),
        }

    def state_at(self, figure: str, point: dict[str, object]) -> tuple[int, int] | None:
        """A grid cell is the state (layer, position)."""
        return cell_state(point, self.layers.tolist()) if figure == "grid" else None

    def figures(self) -> dict[str, go.Figure]:
        """Heatmap of top-1 probability with the token in each cell; final-token probability."""
        hover = [
            [
                "<br>".join(f"{label(t)} {p:.3f}" for t, p in zip(cell_tokens, cell_probs, strict=True))
                for cell_tokens, cell_probs in zip(row_tokens, row_probs, strict=True)
            ]
            for row_tokens, row_probs in zip(self.top_tokens, self.top_probs.tolist(), strict=True)
        ]
        grid = token_grid(
            values=self.top_probs[:, :, 0],
            cell_text=[[label(cell[0]) for cell in row] for row in self.top_tokens],
            hover=hover,
            x_labels=self.tokens,
            y_labels=[f"L{layer}" for layer in self.layers],
            title="Logit lens: top token per layer and position (colour = probability)",
            colorbar="p(top-1)",
        )
        line = go.Figure(
            go.Scatter(
                x=[int(x) for x in self.layers],
                y=self.final_prob[:, -1],
                mode="lines+markers",
                customdata=self.final_rank[:, -1],
                hovertemplate="layer %{x}<br>p=%{y:.4f}<br>rank %{customdata}<extra></extra>",
            )
        )
        line.update_layout(
            title=f"Probability of the final prediction {label(self.final_tokens[-1])!r} by layer",
            xaxis_title="layer",
            yaxis_title="probability",
            template="plotly_white",
        )
        return {"grid": grid, "final_token": line}


@register
class LogitLens(Probe[LogitLensConfig, LogitLensResult]):
    """Decode each layer's residual stream through the final norm and unembedding."""

    name = "logit_lens"
    title = "Logit lens"
    description = "What each layer's residual stream predicts as the next token."
    config_cls = LogitLensConfig
    result_cls = LogitLensResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: LogitLensConfig,
        progress: Progress = NO_PROGRESS,
    ) -> LogitLensResult:
        """Decode the chosen layers at every position of ``prompt``."""
        config.validate(session)
        layers = session.check_layers(config.layers)
        progress(0.0, "forward pass")
        with session.lock:
            run = session.run(prompt, [session.resid_name(layer) for layer in layers])
            final_ids = run.logits[0].argmax(-1)
            top_ids, top_probs, ranks, final_probs = [], [], [], []
            for i, layer in enumerate(layers):
                probs = lens_probs(session, run.activations[session.resid_name(layer)][0])
                values, ids = probs.topk(config.k, dim=-1)
                chosen = probs.gather(-1, final_ids[:, None])[:, 0]
                top_ids.append(ids)
                top_probs.append(values)
                final_probs.append(chosen)
                ranks.append((probs > chosen[:, None]).sum(-1))
                progress((i + 1) / len(layers), f"decoded layer {layer}")
        top_ids_np = to_numpy(torch.stack(top_ids))
        return LogitLensResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(run.tokens[0].tolist()),
            layers=np.asarray(layers, dtype=np.int64),
            top_ids=top_ids_np.astype(np.int64),
            top_probs=to_numpy(torch.stack(top_probs)).astype(np.float32),
            top_tokens=[[session.decode_each(cell) for cell in row] for row in top_ids_np.tolist()],
            final_ids=to_numpy(final_ids).astype(np.int64),
            final_tokens=session.decode_each(final_ids.tolist()),
            final_rank=to_numpy(torch.stack(ranks)).astype(np.int64),
            final_prob=to_numpy(torch.stack(final_probs)).astype(np.float32),
        )


def lens_probs(
    session: ModelSession, resid: Float[torch.Tensor, "pos d_model"]
) -> Float[torch.Tensor, "pos vocab"]:
    """Softmax of the logit-lens logits, computed in float32 for stable ranks."""
    return session.decode_resid(resid).float().softmax(-1)


def _state_view(session: ModelSession, ref: StateRef, progress: Progress) -> LogitLensResult:
    return LogitLens().run(session, ref.prompt, LogitLensConfig(k=10, layers=(ref.layer,)), progress)


def _describe(result: LogitLensResult, ref: StateRef) -> list[str]:
    cell = zip(result.top_tokens[0][ref.position], result.top_probs[0, ref.position].tolist(), strict=True)
    return [
        "top tokens: " + ", ".join(f"{token!r} {prob:.3f}" for token, prob in cell),
        f"model's final prediction here: {result.final_tokens[ref.position]!r} "
        f"(rank {int(result.final_rank[0, ref.position])} at this layer)",
    ]


register_state_view(StateView("logit_lens", "Logit lens", _state_view, order=10, describe=_describe))
