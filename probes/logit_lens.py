"""Logit lens: read every layer's residual stream as if it were the last one.

For layer ℓ and position t, apply the final norm and the unembedding to h_t^ℓ and take the
softmax. This is also method 1 ("direct vocabulary projection") of Future Lens. The full
[layer, pos, vocab] tensor would be gigabytes for a 262k vocabulary, so each layer is decoded on
its own and only the top-k and the final prediction's rank/probability are kept.
"""

from __future__ import annotations

import dataclasses
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
        tokens = session.tokenize(prompt)
        last = session.n_layers - 1
        # The final prediction is the last layer's decode, so one forward that stops after the last
        # block (skipping the model's own full-vocabulary unembedding) serves every layer.
        names = [session.resid_name(layer) for layer in dict.fromkeys([*layers, last])]
        states = session.capture(tokens, names)
        final = top_k_decode(session, states[session.resid_name(last)][0], config.k)
        final_ids = final.ids[:, 0]
        progress(0.3, "decoding every layer")
        others = [layer for layer in layers if layer != last]
        decoded = final
        if others:
            resid = torch.stack([states[session.resid_name(layer)][0] for layer in others])
            rest = top_k_decode(
                session,
                resid.reshape(-1, resid.shape[-1]),
                config.k,
                target_ids=final_ids.repeat(len(others)),
            )
            decoded = rest.concat(final) if last in layers else rest
        progress(1.0, f"decoded {len(layers)} layers")
        shape = (len(layers), tokens.shape[-1])
        top_ids_np = to_numpy(decoded.ids.reshape(*shape, -1))
        return LogitLensResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(tokens[0].tolist()),
            layers=np.asarray(layers, dtype=np.int64),
            top_ids=top_ids_np.astype(np.int64),
            top_probs=to_numpy(decoded.probs.reshape(*shape, -1)).astype(np.float32),
            top_tokens=[[session.decode_each(cell) for cell in row] for row in top_ids_np.tolist()],
            final_ids=to_numpy(final_ids).astype(np.int64),
            final_tokens=session.decode_each(final_ids.tolist()),
            final_rank=to_numpy(decoded.target_rank.reshape(shape)).astype(np.int64),
            final_prob=to_numpy(decoded.target_prob.reshape(shape)).astype(np.float32),
        )


@dataclass(frozen=True)
class TopKDecode:
    """Top-k of the logit-lens softmax for a batch of rows, and one target token's prob and rank."""

    ids: Int[torch.Tensor, "rows k"]
    probs: Float[torch.Tensor, "rows k"]
    target_prob: Float[torch.Tensor, " rows"]
    target_rank: Int[torch.Tensor, " rows"]  # tokens with a strictly higher logit; 0 = top-1

    def concat(self, other: TopKDecode) -> TopKDecode:
        """These rows followed by ``other``'s."""
        return TopKDecode(
            *(torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in dataclasses.fields(self))
        )


def top_k_decode(
    session: ModelSession,
    resid: Float[torch.Tensor, "rows d_model"],
    k: int,
    target_ids: Int[torch.Tensor, " rows"] | None = None,
    rows_per_chunk: int = 256,
) -> TopKDecode:
    """Decode residual-stream rows through the final norm and unembedding, keeping only the top-k.

    ``target_ids`` default to each row's own top-1 (probability = top-1's, rank 0).

    All (layer, position) rows go through one matrix product per chunk instead of one per layer,
    and the softmax is never materialised: probabilities come from ``exp(logit - logsumexp)``, a
    rank from comparing logits. Chunks bound the [rows, vocab] block (256 × 262k floats = 268 MB).
    """
    ids, probs, target_prob, target_rank = [], [], [], []
    with torch.inference_mode():
        for start in range(0, resid.shape[0], rows_per_chunk):
            logits = session.decode_resid(resid[start : start + rows_per_chunk]).float()
            norm = logits.logsumexp(-1, keepdim=True)
            values, top = logits.topk(k, dim=-1)
            ids.append(top)
            probs.append((values - norm).exp())
            if target_ids is not None:
                chosen = logits.gather(-1, target_ids[start : start + rows_per_chunk, None].to(logits.device))
                target_prob.append((chosen - norm).exp()[:, 0])
                # counted in int32 (a vocabulary fits): a third faster than bool → int64 on a CPU
                target_rank.append((logits > chosen).sum(-1, dtype=torch.int32).long())
    top_ids, top_probs = torch.cat(ids), torch.cat(probs)
    if target_ids is None:  # the target is each row's own top-1
        return TopKDecode(top_ids, top_probs, top_probs[:, 0], torch.zeros_like(top_ids[:, 0]))
    return TopKDecode(top_ids, top_probs, torch.cat(target_prob), torch.cat(target_rank))


def lens_probs(
    session: ModelSession, resid: Float[torch.Tensor, "pos d_model"]
) -> Float[torch.Tensor, "pos vocab"]:
    """Softmax of the logit-lens logits over the whole vocabulary, in float32 for stable ranks."""
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
