"""Future Lens (Pal et al., CoNLL 2023): what a single hidden state knows about tokens t+2, t+3, ….

For a prompt, every cell (layer ℓ, position t) of the grid reads the ONE state h_t^ℓ into the
tokens it predicts for t+1 .. t+1+N with one of four methods (see ``methods``):
direct projection, the linear model, the fixed-prompt or the learned-prompt intervention. The
model's actual continuation is shown alongside: at position t it is the model's greedy token at
t+1+n given the prompt up to t+n (the prompt's own tokens are fed where it has them, the model's
greedy tokens beyond its end). For N ≥ 1 the causal methods (fixed, learned) continue from the
transplanted state with their own greedy tokens (``protocol="free-running"``, the default and
the paper's), or are fed the actual tokens above (``"teacher-forced"``: one forward per cell,
but then N ≥ 1 measures the state and the fed tokens together).

Direct projection and the fixed prompt need no training; the linear maps and learned prompts come
from saved artefacts (``prepare_default_artefacts`` fits the linear maps once per model).
Data, training and the evaluation live in the sibling modules ``data``, ``linear``, ``prompts``
and ``evaluation``; ``methods`` dispatches between methods.
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
from lenslab.probes.future_lens.data import HORIZONS, DataSettings, build_dataset
from lenslab.probes.future_lens.linear import DEFAULT_RIDGE, ensure_linear
from lenslab.probes.future_lens.methods import (
    BATCHED,
    METHODS,
    Artefacts,
    batched,
    causal_grid,
    grid_topk,
    method_topk,
)
from lenslab.probes.future_lens.prompts import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    PromptTraining,
    SoftPrompt,
    soft_prompt_path,
    train_soft_prompt,
)
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.plotting import add_clickable_cells, cell_state, label, unique_labels
from lenslab.probes.stats import wilson
from lenslab.progress import NO_PROGRESS, Progress, show_partial, wants_partial

NO_MAP = "no map"  # the text of a grid cell where the linear method has no map
NO_MAP_NOTE = "no map fitted for this position"
# The page's dataset: prefixes of 4..16 tokens, so the linear maps cover positions 3..15 of a prompt.
PAGE_DATA = DataSettings(min_prefix_tokens=4)


@dataclass(frozen=True)
class FutureLensConfig(Config):
    """Settings of the Future Lens grid."""

    method: str = field(
        default="direct",
        metadata={
            "help": "direct and fixed need no training; linear / learned use saved artefacts",
            "choices": METHODS,
        },
    )
    horizon: int = field(
        default=3,
        metadata={"help": "N: show the predictions for t+1 .. t+1+N", "min": 0, "max": HORIZONS - 1},
    )
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to show (empty: all)"})
    k: int = field(
        default=5, metadata={"help": "top tokens kept per cell and N (hover)", "min": 1, "max": 20}
    )
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata={
            "help": "fixed/learned at N ≥ 1: continue on the intervened run's own greedy tokens "
            "(free-running, the paper's) or feed the actual tokens (teacher-forced)",
            "choices": PROTOCOLS,
        },
    )

    def validate(self, session: ModelSession) -> None:
        """Check the method, N, k, the protocol and the layers against the model."""
        super().validate(session)
        session.check_layers(self.layers)


@dataclass(frozen=True)
class FutureLensResult(Result):
    """Top-k predictions for t+1..t+1+N of every (layer, position) state, and the actual tokens."""

    probe = "future_lens"
    state_figures = ("grid",)
    config: FutureLensConfig
    method: str
    tokens: list[str]
    layers: Int[np.ndarray, " layer"]
    top_ids: Int[np.ndarray, "layer pos horizon k"]
    top_probs: Float[np.ndarray, "layer pos horizon k"]
    top_tokens: list[list[list[list[str]]]]
    actual_ids: Int[np.ndarray, "pos horizon"]
    actual_tokens: list[list[str]]
    artefact: str  # which trained artefact was used (empty for untrained methods)
    # How fixed/learned reached N ≥ 1. Reports saved before this field existed were teacher-forced.
    protocol: str = "teacher-forced"
    # Linear method: the positions t its maps were fitted at; cells elsewhere are left blank.
    fitted_positions: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        """Keep the config's protocol equal to the one computed (old reports load today's default)."""
        if self.config.protocol != self.protocol:
            object.__setattr__(self, "config", self.config.replace(protocol=self.protocol))

    @property
    def causal(self) -> bool:
        """Whether the protocol shaped these numbers: a causal method read at N ≥ 1."""
        return self.method in ("fixed", "learned") and self.top_ids.shape[2] > 1

    def read_as(self) -> str:
        """What a cell is, in words, for titles and captions."""
        if self.causal:
            return f"each state transplanted, N ≥ 1 {self.protocol}"
        if self.fitted_positions is not None:
            return f"mapped from each single state (maps fitted at {self.fitted_text()})"
        return "decoded from each single state"

    @property
    def applied(self) -> np.ndarray:
        """Whether the method was applied at each position (linear maps: only where fitted)."""
        positions = np.arange(len(self.tokens))
        if self.fitted_positions is None:
            return np.ones(len(positions), dtype=bool)
        first, last = self.fitted_positions
        return (positions >= first) & (positions <= last)

    @property
    def matches(self) -> np.ndarray:
        """Whether each cell's top-1 equals the model's actual token, ``[layer, pos, horizon]``."""
        return (self.top_ids[..., 0] == self.actual_ids[None]) & self.applied[None, :, None]

    def summary(self) -> dict[str, object]:
        """How often the single-state predictions agree with the actual continuation."""
        applied = self.applied
        out: dict[str, object] = {"method": self.method}
        if self.causal:
            out["protocol (N ≥ 1)"] = self.protocol
        if self.fitted_positions is not None:
            shown = f"{int(applied.sum())} of {len(applied)} shown"
            out["linear maps fitted at"] = f"{self.fitted_text()} ({shown})"
        cells = self.matches[:, applied]  # [layer, shown position, horizon]
        for n in range(self.matches.shape[2]):
            rate = wilson(int(cells[..., n].sum()), int(cells[..., n].size))
            out[f"agreement t+{n + 1}"] = (
                f"{100 * rate.estimate:.0f}% [{100 * rate.low:.0f}, {100 * rate.high:.0f}]"
                if np.isfinite(rate.estimate)
                else "—"
            )
        return out

    def state_at(self, figure: str, point: dict[str, Any]) -> tuple[int, int] | None:
        """A grid cell is the hidden state (layer, position) the predictions were read from."""
        return cell_state(point, self.layers.tolist()) if figure == "grid" else None

    def figures(self) -> dict[str, go.Figure]:
        """The (layer × position) grid with the actual continuation on top, and agreement by layer."""
        return {"grid": self.grid_figure(), "agreement": self.agreement_figure()}

    def grid_figure(self) -> go.Figure:
        """Each cell: top-1 tokens for t+1..t+1+N; colour = mean top-1 probability; hover: top-k."""
        horizon = self.top_ids.shape[2]
        x = unique_labels(self.tokens)
        y = [f"L{layer}" for layer in self.layers.tolist()]
        applied = self.applied.tolist()
        blank = f"{NO_MAP_NOTE}: the linear maps were fitted at {self.fitted_text()} only"
        text, hover = [], []
        for row_tokens, row_probs, row_match in zip(
            self.top_tokens, self.top_probs.tolist(), self.matches.tolist(), strict=True
        ):
            text.append(
                [
                    " · ".join(label(cell[n][0]) for n in range(horizon)) if shown else NO_MAP
                    for cell, shown in zip(row_tokens, applied, strict=True)
                ]
            )
            hover.append(
                [
                    "<br>".join(
                        f"<b>t+{n + 1}</b>{' ✓' if match[n] else ''}: "
                        + ", ".join(f"{label(t)} {p:.2f}" for t, p in zip(cell[n], probs[n], strict=True))
                        for n in range(horizon)
                    )
                    if shown
                    else blank
                    for cell, probs, match, shown in zip(
                        row_tokens, row_probs, row_match, applied, strict=True
                    )
                ]
            )
        # One heatmap holds the layers and, on top, the model's actual continuation (a row without a
        # colour value, on a tinted band): two heatmaps on one categorical axis drift apart.
        actual_text = ["<br>".join(label(t) for t in cell) for cell in self.actual_tokens]
        shown_values = np.where(self.applied[None], self.top_probs[..., 0].mean(-1), np.nan)
        values = np.vstack([shown_values, np.full((1, len(x)), np.nan)])
        rows = [*y, "actual"]
        font = 11 if len(x) <= 16 else 9
        fig = go.Figure(
            go.Heatmap(
                z=values,
                x=x,
                y=rows,
                text=[*[[cell.replace(" · ", "<br>") for cell in row] for row in text], actual_text],
                texttemplate="%{text}",
                textfont={"size": font},
                colorscale="Blues",
                zmin=0.0,
                zmax=1.0,
                xgap=1,
                ygap=1,
                colorbar={"title": "mean p(top-1)"},
            )
        )
        fig.add_shape(
            type="rect",
            xref="paper",
            x0=0,
            x1=1,
            yref="y",
            y0=len(y) - 0.5,
            y1=len(y) + 0.5,
            fillcolor="#f3e6c4",
            line_width=0,
            layer="below",
        )
        self._mark_unmapped(fig, len(y))
        add_clickable_cells(fig, x, y, hover)
        line_px = font + 4
        fig.update_layout(
            title=f"Future Lens ({self.method}): tokens t+1 … t+{horizon}, {self.read_as()}",
            xaxis={"title": "position · input token", "tickangle": -45},
            yaxis={
                "title": "layer (top row: the model's actual continuation)",
                "categoryorder": "array",
                "categoryarray": rows,
            },
            template="plotly_white",
            height=max(360, (line_px * horizon + 12) * len(rows) + 200),
            margin={"t": 60},
        )
        return fig

    def fitted_text(self) -> str:
        """``positions 3–15``: where the linear maps were fitted ("" for other methods)."""
        if self.fitted_positions is None:
            return ""
        first, last = self.fitted_positions
        return f"positions {first}–{last}"

    def _mark_unmapped(self, fig: go.Figure, n_layers: int) -> None:
        """Grey the layer rows at positions without a linear map, and say why under the grid.

        Those cells hold no prediction (nothing was fitted there), which a blank band would leave
        the reader to guess: each cell reads "no map" and its hover names the fitted positions.
        """
        applied = self.applied.tolist()
        runs, start = [], None
        for position, shown in enumerate([*applied, True]):
            if not shown and start is None:
                start = position
            elif shown and start is not None:
                runs.append((start, position - 1))
                start = None
        for first, last in runs:
            fig.add_shape(
                type="rect",
                xref="x",
                x0=first - 0.5,
                x1=last + 0.5,
                yref="y",
                y0=-0.5,
                y1=n_layers - 0.5,
                fillcolor="#e6e6e6",
                line_width=0,
                layer="below",
            )
        if runs:
            fig.add_annotation(
                text=f"Grey “{NO_MAP}” cells: {NO_MAP_NOTE} (the linear maps were fitted at "
                f"{self.fitted_text()} only).",
                xref="paper",
                yref="paper",
                x=0,
                y=1,
                yshift=4,
                xanchor="left",
                yanchor="bottom",
                showarrow=False,
                font={"size": 12, "color": "#555"},
            )

    def agreement_figure(self) -> go.Figure:
        """Share of positions whose top-1 equals the actual token, per layer and N."""
        fig = go.Figure()
        layers = self.layers.tolist()
        shown = self.matches[:, self.applied]  # positions without a linear map are not counted
        n_positions = shown.shape[1]
        for n in range(self.top_ids.shape[2]):
            rates = [wilson(int(row.sum()), n_positions) for row in shown[:, :, n]]
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=[100 * r.estimate for r in rates],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [100 * (r.high - r.estimate) for r in rates],
                        "arrayminus": [100 * (r.estimate - r.low) for r in rates],
                        "thickness": 1,
                        "width": 3,
                    },
                    mode="lines+markers",
                    name=f"t+{n + 1}",
                )
            )
        fig.update_layout(
            title=f"Agreement with the actual continuation on this prompt ({self.method}"
            + (f", N ≥ 1 {self.protocol})" if self.causal else ")"),
            legend={"title": {"text": "bars: 95% Wilson"}},
            xaxis={"title": "layer", "tickmode": "array", "tickvals": layers},  # whole layers only
            yaxis={"title": f"% of {n_positions} positions: top-1 = actual", "range": [-2, 102]},
            template="plotly_white",
            height=360,
        )
        return fig


def actual_continuation(
    session: ModelSession, tokens: Int[torch.Tensor, "1 seq"], horizon: int, layers: list[int]
) -> tuple[dict[int, torch.Tensor], Int[torch.Tensor, "seq horizon"]]:
    """Residual states of ``layers`` over the prompt and the actual tokens t+1..t+horizon per position.

    One KV-cached greedy generation: the prefill keeps every position's logits (the greedy token
    after each prompt position) and the states, then ``horizon - 1`` steps past the prompt's end.
    """
    names = {session.resid_name(layer): layer for layer in layers}
    captured: dict[int, torch.Tensor] = {}
    state = {"prefill": True}

    def capture(tensor: torch.Tensor, *, hook: Any) -> None:
        if state["prefill"]:
            captured[names[hook.name]] = tensor[0].detach()

    def prefill_done() -> None:
        state["prefill"] = False

    _, step_logits = session.generate_greedy(
        tokens,
        horizon,
        hooks=[(name, capture) for name in names],
        on_prefill=prefill_done,
        logits_to_keep=0,
    )
    # greedy token after each position of prompt + continuation
    extended = torch.cat([logits[0].float().argmax(-1) for logits in step_logits])
    seq = tokens.shape[1]
    actual = torch.stack([extended[t : t + horizon] for t in range(seq)])
    return captured, actual


@register
class FutureLens(Probe[FutureLensConfig, FutureLensResult]):
    """Decode several future tokens from each single hidden state of a prompt."""

    name = "future_lens"
    title = "Future Lens"
    description = "What one hidden state already knows about the tokens t+1 … t+4 (Pal et al., 2023)."
    config_cls = FutureLensConfig
    result_cls = FutureLensResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: FutureLensConfig,
        progress: Progress = NO_PROGRESS,
        artefacts: Artefacts | None = None,
    ) -> FutureLensResult:
        """The (layer × position) grid for ``prompt``; trained methods use saved artefacts."""
        config.validate(session)
        layers = session.check_layers(config.layers)
        artefacts = artefacts if artefacts is not None else Artefacts.saved(session)
        missing = artefacts.missing(config.method, layers)
        if missing:
            raise ValueError(f"the {config.method} method cannot run: {missing}")
        horizon = config.horizon + 1
        k = min(config.k, session.d_vocab)
        progress(0.0, "forward pass and actual continuation")
        tokens = session.tokenize(prompt)
        artefact, fitted = "", None
        if config.method == "linear" and artefacts.linear is not None:
            artefact = f"linear maps fitted on {artefacts.linear.meta.get('n_train')} examples"
            fitted = artefacts.linear.positions
        elif config.method == "learned":
            artefact = ", ".join(str(soft_prompt_path(session.model_id, layer).name) for layer in layers)
        cell_tokens: list[list[list[str]]] = []  # decoded top-k of each finished layer's cells

        def result_of(ids: Tensor, probs: Tensor, actual: Tensor) -> FutureLensResult:
            """The result for the layers decoded so far (``ids``: [done layers, pos, N, k])."""
            ids_np = to_numpy(ids).astype(np.int64)
            for row in ids_np[len(cell_tokens) :].tolist():
                cell_tokens.append([[session.decode_each(cell_ids) for cell_ids in cell] for cell in row])
            actual_np = to_numpy(actual).astype(np.int64)
            return FutureLensResult(
                model_id=session.model_id,
                prompt=prompt,
                config=config,
                method=config.method,
                tokens=session.decode_each(tokens[0].tolist()),
                layers=np.asarray(layers[: len(ids_np)], dtype=np.int64),
                top_ids=ids_np,
                top_probs=to_numpy(probs).astype(np.float32),
                top_tokens=cell_tokens[: len(ids_np)],
                actual_ids=actual_np,
                actual_tokens=[session.decode_each(row) for row in actual_np.tolist()],
                artefact=artefact,
                protocol=config.protocol,
                fitted_positions=fitted,
            )

        with session.lock:
            states, actual = actual_continuation(session, tokens, horizon, layers)
            teacher = actual[:, : horizon - 1] if config.protocol == "teacher-forced" else None
            if config.method in BATCHED:
                progress(0.5, f"{config.method}: decoding every cell")
                grid_ids, grid_probs = grid_topk(
                    session, config.method, layers, states, horizon, artefacts, k
                )
            elif batched(config.method, config.protocol):

                def grown(ids: Tensor, probs: Tensor) -> None:  # the grid grows a chunk of layers at a time
                    if wants_partial(progress):
                        show_partial(progress, "grid", result_of(ids, probs, actual).grid_figure())

                grid_ids, grid_probs = causal_grid(
                    session,
                    config.method,
                    layers,
                    states,
                    horizon,
                    artefacts,
                    k,
                    lambda f, m="": progress(0.1 + 0.9 * f, f"{config.method}: {m}"),
                    on_chunk=grown,
                )
            else:
                top_ids, top_probs = [], []
                for i, layer in enumerate(layers):
                    ids, probs = method_topk(
                        session,
                        config.method,
                        layer,
                        states[layer],
                        horizon,
                        artefacts,
                        k,
                        protocol=config.protocol,
                        teacher=teacher,
                    )
                    top_ids.append(ids)
                    top_probs.append(probs)
                    if wants_partial(progress):  # the grid grows on the page a layer at a time
                        partial = result_of(torch.stack(top_ids), torch.stack(top_probs), actual)
                        show_partial(progress, "grid", partial.grid_figure())
                    progress((i + 1) / len(layers), f"{config.method}: decoded layer {layer}")
                grid_ids, grid_probs = torch.stack(top_ids), torch.stack(top_probs)
        # direct and linear decode every cell in one batched pass: their grid is whole when the run ends
        return result_of(grid_ids, grid_probs, actual)


def prepare_default_artefacts(
    session: ModelSession,
    progress: Progress = NO_PROGRESS,
    settings: DataSettings | None = None,
    ridge: float | None = DEFAULT_RIDGE,
) -> dict[str, object]:
    """Build the default dataset and fit (or reuse) the linear maps of every layer for N = 0..3.

    What the Future Lens page needs to show the linear method at once. Learned prompts are
    trained per layer from the page (they take minutes on a CPU).
    """
    data = build_dataset(session, settings or PAGE_DATA, lambda f, m="": progress(0.9 * f, m))
    maps = ensure_linear(session, data, ridge, progress=lambda f, m="": progress(0.9 + 0.1 * f, m))
    progress(1.0, "Future Lens artefacts ready")
    return {"data": data.key, "n_train": maps.meta.get("n_train"), "layers": maps.layers, "ridge": ridge}


def train_learned_prompt(
    session: ModelSession,
    layer: int,
    training: PromptTraining | None = None,
    settings: DataSettings | None = None,
    progress: Progress = NO_PROGRESS,
) -> SoftPrompt:
    """Train the learned prompt for ``layer`` on the (cached) dataset and save it for the page."""
    layer = session.check_layer(layer)
    data = build_dataset(session, settings or PAGE_DATA, lambda f, m="": progress(0.3 * f, m))
    prompt = train_soft_prompt(session, data, layer, training, lambda f, m="": progress(0.3 + 0.7 * f, m))
    prompt.save(soft_prompt_path(session.model_id, layer))
    return prompt


# ------------------------------------------------------------------------ inspector view
def _future_view(session: ModelSession, ref: StateRef, progress: Progress) -> FutureLensResult:
    """Linear maps where they were fitted for this layer and position, else the fixed prompt."""
    config = FutureLensConfig(method="linear", horizon=3, layers=(ref.layer,))
    artefacts = Artefacts.saved(session)
    linear = artefacts.linear
    if linear is None or ref.layer not in linear.layers or not linear.fitted_at(ref.position):
        config = config.replace(method="fixed")
    return FutureLens().run(session, ref.prompt, config, progress, artefacts=artefacts)


def _future_describe(result: FutureLensResult, ref: StateRef) -> list[str]:
    cell = result.top_tokens[0][ref.position]
    probs = result.top_probs[0, ref.position]
    predicted = ", ".join(f"t+{n + 1}: {cell[n][0]!r} ({probs[n, 0]:.2f})" for n in range(len(cell)))
    actual = " ".join(repr(t) for t in result.actual_tokens[ref.position])
    how = f" ({result.protocol} N ≥ 1)" if result.causal else ""
    return [f"{result.method} method{how} — {predicted}", f"model's actual continuation: {actual}"]


register_state_view(
    StateView("future_lens", "Future Lens (t+1..t+4)", _future_view, order=20, describe=_future_describe)
)
