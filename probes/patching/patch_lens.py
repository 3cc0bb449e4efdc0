"""Patch lens: put one hidden state of a source prompt into a target prompt and read the target's logit lens.

The residual stream after block ℓ at one position of the source prompt replaces the target
prompt's residual stream after block ℓ' (default ℓ' = ℓ) at one position; the target then runs on.
Its logit lens after the patch, next to the one before, shows what the patched state changes
downstream. With the default target, a few-shot "token identity" prompt ending in ``?``, this is the
identity Patchscope of Ghandeharioun et al. (2024): the model is asked to repeat what the state
encodes. The state inspector shows that view for any state.
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
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.logit_lens import top_k_decode
from lenslab.probes.plotting import add_clickable_cells, label, token_grid, unique_labels
from lenslab.progress import NO_PROGRESS, Progress

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
"""The token-identity target prompt (Patchscopes): the patched ``?`` is continued by what it encodes."""


@dataclass(frozen=True)
class PatchLensConfig(Config):
    """Which source state to patch where; the probe's prompt is the source prompt."""

    layer: int | None = field(
        default=None,
        metadata={"help": "source layer: residual stream after this block (none: the middle layer)"},
    )
    position: int = field(default=-1, metadata={"help": "source position (-1: last token)"})
    target: str = field(
        default=IDENTITY_PROMPT,
        metadata={"help": "target prompt (default: the token-identity Patchscope prompt)"},
    )
    target_layer: int | None = field(default=None, metadata={"help": "target layer (none: the source layer)"})
    target_position: int = field(default=-1, metadata={"help": "target position (-1: last token)"})
    k: int = field(default=5, metadata={"help": "top tokens kept per cell", "min": 1, "max": 50})

    def validate(self, session: ModelSession) -> None:
        """Check layers, positions and the target prompt against the model."""
        super().validate(session)
        if not self.target.strip():
            raise ValueError("target: the target prompt is empty")
        if self.layer is not None:
            session.check_layer(self.layer)
        if self.target_layer is not None:
            session.check_layer(self.target_layer)
        if self.k > session.d_vocab:
            raise ValueError(f"k={self.k} exceeds the vocabulary size {session.d_vocab}")

    def layers(self, session: ModelSession) -> tuple[int, int]:
        """(source layer, target layer), resolved."""
        source = session.check_layer(self.layer) if self.layer is not None else session.n_layers // 2
        target = session.check_layer(self.target_layer) if self.target_layer is not None else source
        return source, target


@dataclass(frozen=True)
class PatchLensResult(Result):
    """The target prompt's logit lens before and after the patch (index 0: before, 1: after)."""

    probe = "patch_lens"
    config: PatchLensConfig
    tokens: list[str]  # source prompt
    target_tokens: list[str]
    layer: int  # source layer
    position: int  # source position (resolved)
    target_layer: int
    target_position: int
    top_ids: Int[np.ndarray, "2 layer pos k"]
    top_probs: Float[np.ndarray, "2 layer pos k"]
    top_tokens: list[list[list[list[str]]]]
    final_ids: Int[np.ndarray, "2 pos"]  # the target's next-token prediction at each position
    final_tokens: list[list[str]]
    tracked_prob: Float[np.ndarray, "2 layer pos"]  # p(the unpatched final prediction) per cell

    @property
    def delta(self) -> Float[np.ndarray, "layer pos"]:
        """Change of the unpatched final prediction's probability caused by the patch."""
        return self.tracked_prob[1] - self.tracked_prob[0]

    def summary(self) -> dict[str, Any]:
        """The target's next token at the patched position, before and after."""
        t = self.target_position
        return {
            "patched": f"source L{self.layer} pos {self.position} → target L{self.target_layer} pos {t}",
            "next token before": f"{self.final_tokens[0][t]!r} {self.top_probs[0, -1, t, 0]:.3f}",
            "next token after": f"{self.final_tokens[1][t]!r} {self.top_probs[1, -1, t, 0]:.3f}",
            "Δp(before's token)": float(self.delta[-1, t]),
        }

    def figures(self) -> dict[str, go.Figure]:
        """Target logit lens before and after the patch, and the change in p(unpatched prediction)."""
        names = ("before", "after")
        figs = {name: self._grid(i, name) for i, name in enumerate(names)}
        figs["delta"] = self._delta()
        return figs

    def _rows(self) -> list[str]:
        return [f"L{layer}" for layer in range(self.top_ids.shape[1])]

    def _grid(self, i: int, name: str) -> go.Figure:
        hover = [
            [
                "<br>".join(f"{label(t)} {p:.3f}" for t, p in zip(toks, probs, strict=True))
                for toks, probs in zip(row_t, row_p, strict=True)
            ]
            for row_t, row_p in zip(self.top_tokens[i], self.top_probs[i].tolist(), strict=True)
        ]
        where = f"source L{self.layer} pos {self.position} → L{self.target_layer} pos {self.target_position}"
        return token_grid(
            values=self.top_probs[i, :, :, 0],
            cell_text=[[label(cell[0]) for cell in row] for row in self.top_tokens[i]],
            hover=hover,
            x_labels=self.target_tokens,
            y_labels=self._rows(),
            title=f"Target logit lens {name} the patch ({where})",
            colorbar="p(top-1)",
        )

    def _delta(self) -> go.Figure:
        columns, rows = unique_labels(self.target_tokens), self._rows()
        bound = max(1e-6, float(np.abs(self.delta).max()))
        fig = go.Figure(
            go.Heatmap(
                z=self.delta,
                x=columns,
                y=rows,
                colorscale="RdBu",
                zmid=0.0,
                zmin=-bound,
                zmax=bound,
                colorbar={"title": "Δp"},
            )
        )
        hover = [
            [
                f"{label(self.final_tokens[0][pos])!r}: {b:.3f} → {a:.3f}"
                for pos, (b, a) in enumerate(zip(rb, ra, strict=True))
            ]
            for rb, ra in zip(self.tracked_prob[0].tolist(), self.tracked_prob[1].tolist(), strict=True)
        ]
        add_clickable_cells(fig, columns, rows, hover)
        fig.update_layout(
            title="Change in the probability of the unpatched final prediction (after − before); "
            "exact, one forward each",
            xaxis={"title": "position · target token", "tickangle": -45},
            yaxis={"title": "layer"},
            template="plotly_white",
            height=max(320, 28 * len(rows) + 160),
        )
        return fig


@register
class PatchLens(Probe[PatchLensConfig, PatchLensResult]):
    """Patch one residual state of the prompt into a target prompt; compare the target's logit lens."""

    name = "patch_lens"
    title = "Patch lens"
    description = (
        "One hidden state of the prompt patched into a target prompt: the target's logit lens before "
        "and after, and what changed."
    )
    config_cls = PatchLensConfig
    result_cls = PatchLensResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: PatchLensConfig,
        progress: Progress = NO_PROGRESS,
    ) -> PatchLensResult:
        """Patch (``config.layer``, ``config.position``) of ``prompt`` into ``config.target``."""
        config.validate(session)
        layer, target_layer = config.layers(session)
        names = [session.resid_name(layer) for layer in range(session.n_layers)]
        with session.lock:
            source_tokens, target_tokens = session.tokenize(prompt), session.tokenize(config.target)
            position = session.check_position(config.position, int(source_tokens.shape[-1]))
            target_position = session.check_position(
                config.target_position, int(target_tokens.shape[-1]), "target_position"
            )
            progress(0.0, "source state")
            hook = session.resid_name(layer)
            state = session.capture(source_tokens, [hook])[hook][0, position]
            before = session.capture(target_tokens, names)
            progress(0.3, "patched target run")
            after = session.capture(
                target_tokens, names, hooks=[(session.resid_name(target_layer), _put(state, target_position))]
            )
            lens = _lens(session, [before, after], names, config.k)
            progress(0.9, "decoded")
        top_ids = to_numpy(torch.stack([ids for ids, _, _, _ in lens])).astype(np.int64)
        progress(1.0, "done")
        return PatchLensResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(source_tokens[0].tolist()),
            target_tokens=session.decode_each(target_tokens[0].tolist()),
            layer=layer,
            position=position,
            target_layer=target_layer,
            target_position=target_position,
            top_ids=top_ids,
            top_probs=to_numpy(torch.stack([probs for _, probs, _, _ in lens])).astype(np.float32),
            top_tokens=[
                [[session.decode_each(cell) for cell in row] for row in grid] for grid in top_ids.tolist()
            ],
            final_ids=to_numpy(torch.stack([final for _, _, final, _ in lens])).astype(np.int64),
            final_tokens=[session.decode_each(final.tolist()) for _, _, final, _ in lens],
            tracked_prob=to_numpy(torch.stack([tracked for *_, tracked in lens])).astype(np.float32),
        )


def _put(state: Float[Tensor, " d_model"], position: int):
    """A hook writing ``state`` at ``position`` of the (single) target run."""

    def put(activation: Tensor, *, hook: object) -> Tensor:
        patched = activation.clone()
        patched[:, position] = state
        return patched

    return put


def _lens(
    session: ModelSession, runs: list[dict[str, Tensor]], names: list[str], k: int
) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per run: top-k ids and probs per (layer, position), its prediction, and p(first run's prediction).

    The last layer's logit lens is the model's own output (final norm, unembedding), so its top-1
    is the run's next-token prediction; every cell of every run tracks the first run's. All runs'
    (layer, position) rows go through one batched decode (``top_k_decode``: chunked products with
    the unembedding, no softmax materialised), after one small decode of the first run's last layer
    for the token to track.
    """
    # [run, layer, pos, d_model]
    states = torch.stack([torch.stack([run[name][0] for name in names]) for run in runs])
    n_runs, n_layers, n_pos = states.shape[:3]
    track = top_k_decode(session, states[0, -1], 1).ids[:, 0]
    decoded = top_k_decode(session, states.flatten(0, 2), k, target_ids=track.repeat(n_runs * n_layers))
    ids = decoded.ids.view(n_runs, n_layers, n_pos, -1)
    probs = decoded.probs.view(n_runs, n_layers, n_pos, -1)
    tracked = decoded.target_prob.view(n_runs, n_layers, n_pos)
    return [(ids[r], probs[r], ids[r, -1, :, 0], tracked[r]) for r in range(n_runs)]


def _state_view(session: ModelSession, ref: StateRef, progress: Progress) -> PatchLensResult:
    config = PatchLensConfig(layer=ref.layer, position=ref.position, k=5)
    return PatchLens().run(session, ref.prompt, config, progress)


def _describe(result: PatchLensResult, ref: StateRef) -> list[str]:
    t = result.target_position
    after = zip(result.top_tokens[1][-1][t], result.top_probs[1, -1, t].tolist(), strict=True)
    return [
        f"patched into {result.config.target!r} at its last token (same layer): the model's next token "
        f"becomes {result.final_tokens[1][t]!r} (was {result.final_tokens[0][t]!r})",
        "next tokens after the patch: " + ", ".join(f"{tok!r} {p:.3f}" for tok, p in after),
        "a state patched into a neutral prompt shows what it encodes for the model itself; for the "
        "effect of a state on one prediction use Activation patching with a clean/corrupted pair",
    ]


register_state_view(
    StateView(
        "patch_lens",
        "Patching: the effect of this state (identity Patchscope)",
        _state_view,
        order=60,
        describe=_describe,
    )
)
