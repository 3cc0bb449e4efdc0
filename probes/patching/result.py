"""Config and result of the activation-patching probe: settings, sweeps and their heatmaps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Result
from lenslab.probes.patching.pair import METRIC_LABELS, METRICS
from lenslab.probes.patching.sweeps import COMPONENT_LABELS, COMPONENTS, EMBED_ROW
from lenslab.probes.plotting import add_clickable_cells, cell_state, label, unique_labels

DIRECTIONS = ("denoising", "noising")
DIRECTION_LABELS = {
    "denoising": "denoising: clean activations patched into the corrupted run",
    "noising": "noising: corrupted activations patched into the clean run",
}
CELL_TEXT_COLUMNS = 24  # more columns leave a cell too narrow for "0.52" at 10 px
EXACT_NOTE = "exact: one prompt pair, no sampling (no interval)"


@dataclass(frozen=True)
class PatchingConfig(Config):
    """Settings of activation patching; the probe's prompt is the clean prompt."""

    corrupted: str = field(
        default="The Colosseum is located in the city of",
        metadata={"help": "corrupted prompt: same number of tokens as the clean prompt", "hidden": True},
    )
    clean_answer: str = field(
        default=" Paris",
        metadata={
            "help": "single token the clean prompt should predict (empty: its top prediction)",
            "hidden": True,
        },
    )
    corrupted_answer: str = field(
        default=" Rome",
        metadata={
            "help": "single token the corrupted prompt should predict (empty: its top prediction)",
            "hidden": True,
        },
    )
    metric: str = field(
        default="logit_diff",
        metadata={
            "help": "logit difference of the answers, or the clean answer's probability",
            "choices": METRICS,
        },
    )
    direction: str = field(
        default="denoising",
        metadata={
            "help": "denoising: clean → corrupted run; noising: corrupted → clean run",
            "choices": DIRECTIONS,
        },
    )
    sweeps: tuple[str, ...] = field(
        default=COMPONENTS, metadata={"help": f"what to patch, any of {', '.join(COMPONENTS)}"}
    )
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to sweep (empty: all)"})
    batch_size: int = field(
        default=32, metadata={"help": "patched copies of the prompt per forward pass", "min": 1, "max": 1024}
    )

    def validate(self, session: ModelSession) -> None:
        """Check the sweeps, layers and prompts' presence against the model."""
        super().validate(session)
        if not self.corrupted.strip():
            raise ValueError(
                "corrupted: the corrupted prompt is empty; give a prompt of the same token length"
            )
        if not self.sweeps:
            raise ValueError(f"sweeps: choose at least one of {list(COMPONENTS)}")
        unknown = [s for s in self.sweeps if s not in COMPONENTS]
        if unknown or len(set(self.sweeps)) != len(self.sweeps):
            raise ValueError(
                f"sweeps must be distinct values from {list(COMPONENTS)}, got {list(self.sweeps)}"
            )
        if "heads" in self.sweeps and hooknames.attn_heads(0) not in session.hook_names:
            raise ValueError(f"sweeps: {session.model_id} exposes no per-head outputs; drop 'heads'")
        session.check_layers(self.layers)


@dataclass(frozen=True)
class PatchSweep:
    """One sweep's grid: the metric after each patched run, normalised (clean 1, corrupted 0) and raw."""

    component: str
    what: str  # the patched activation, in words
    row_labels: list[str]  # "embed", "L0", ...
    row_layers: Int[np.ndarray, " row"]  # -1 for the embeddings row
    col_labels: list[str]  # "pos:token" axis labels, or "H0", "H1", ...
    normalized: Float[np.ndarray, "row col"]
    raw: Float[np.ndarray, "row col"]


@dataclass(frozen=True)
class PatchingResult(Result):
    """Activation-patching sweeps for one clean/corrupted prompt pair (exact, single pair)."""

    probe = "activation_patching"
    state_figures = ("resid",)
    config: PatchingConfig
    tokens: list[str]  # clean prompt
    corrupted_tokens: list[str]
    differing: Int[np.ndarray, " n"]  # positions where the prompts differ
    answer_ids: Int[np.ndarray, " 2"]  # clean answer, corrupted answer
    answers: list[str]
    position: int  # where the metric is read (last)
    metric: str
    direction: str
    clean_value: float  # raw metric of the unpatched clean run
    corrupted_value: float  # raw metric of the unpatched corrupted run
    sweeps: list[PatchSweep]

    def sweep(self, component: str) -> PatchSweep:
        """The sweep of ``component``; ``KeyError`` if it was not run."""
        for s in self.sweeps:
            if s.component == component:
                return s
        raise KeyError(f"no {component!r} sweep in this result; ran {[s.component for s in self.sweeps]}")

    def flips(self, component: str) -> Int[np.ndarray, "n 2"]:
        """(row, col) cells whose patched run prefers the clean answer and the base run does not, or back.

        Only for the logit-difference metric (its sign says which answer wins).
        """
        if self.metric != "logit_diff":
            return np.zeros((0, 2), dtype=np.int64)
        base = self.corrupted_value if self.direction == "denoising" else self.clean_value
        raw = self.sweep(component).raw
        return np.argwhere((raw > 0) != (base > 0)).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """Clean and corrupted metric, and each sweep's strongest cell."""
        out: dict[str, Any] = {
            "answers": f"{self.answers[0]!r} vs {self.answers[1]!r}",
            f"clean {self.metric}": self.clean_value,
            f"corrupted {self.metric}": self.corrupted_value,
        }
        for s in self.sweeps:
            if s.normalized.size:
                row, col = np.unravel_index(int(np.argmax(s.normalized)), s.normalized.shape)
                out[f"top {s.component}"] = (
                    f"{s.row_labels[row]} · {s.col_labels[col]} = {s.normalized[row, col]:.3f}"
                )
        return out

    def state_at(self, figure: str, point: dict[str, object]) -> tuple[int, int] | None:
        """A residual cell is the clean prompt's state (layer, position); the embeddings row is none."""
        if figure != "resid":
            return None
        return cell_state(point, [int(x) for x in self.sweep("resid").row_layers if x >= 0])

    def figures(self) -> dict[str, go.Figure]:
        """One heatmap per sweep of the normalised metric (1: clean restored, 0: corrupted)."""
        return {s.component: self._heatmap(s) for s in self.sweeps}

    def _heatmap(self, s: PatchSweep) -> go.Figure:
        hover = [
            [
                f"normalised {norm:.4f}<br>{self.metric} {raw:.4f}"
                for norm, raw in zip(norm_row, raw_row, strict=True)
            ]
            for norm_row, raw_row in zip(s.normalized.tolist(), s.raw.tolist(), strict=True)
        ]
        bound = max(1.0, float(np.nanmax(np.abs(s.normalized)))) if s.normalized.size else 1.0
        fig = go.Figure(
            go.Heatmap(
                z=s.normalized,
                x=s.col_labels,
                y=s.row_labels,
                text=[[f"{v:.2f}" for v in row] for row in s.normalized.tolist()],
                # numbers in the cells while they fit at a readable 10 px; wider grids: in the hover
                texttemplate="%{text}" if len(s.col_labels) <= CELL_TEXT_COLUMNS else "",
                textfont={"size": 10},
                colorscale="RdBu",
                zmid=0.0,
                zmin=-bound,
                zmax=bound,
                colorbar={"title": "normalised"},
            )
        )
        add_clickable_cells(fig, s.col_labels, s.row_labels, hover)
        per_position = s.component != "heads"
        fig.update_layout(
            title=f"Activation patching ({DIRECTION_LABELS[self.direction]}): {s.what}<br>"
            f"<sub>{METRIC_LABELS[self.metric]} of {label(self.answers[0])!r} vs {label(self.answers[1])!r}, "
            f"normalised clean = 1, corrupted = 0; {EXACT_NOTE}</sub>",
            xaxis={"title": "position · clean/corrupted token" if per_position else "head", "tickangle": -45},
            yaxis={"title": "layer", "autorange": True},
            template="plotly_white",
            height=max(320, 24 * len(s.row_labels) + 180),
        )
        return fig


def position_labels(clean: list[str], corrupted: list[str]) -> list[str]:
    """Axis labels ``pos:token``, showing both tokens where the prompts differ."""
    both = [a if a == b else f"{a}/{b}" for a, b in zip(clean, corrupted, strict=True)]
    return unique_labels(both)


def row_labels(layers: list[int]) -> list[str]:
    """``embed`` for the embeddings row (-1), ``L<n>`` for blocks."""
    return [EMBED_ROW if layer == -1 else f"L{layer}" for layer in layers]


def sweep_description(component: str) -> str:
    """What a sweep patches, in words."""
    return COMPONENT_LABELS[component]
