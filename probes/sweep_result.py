"""The result of a sweep: one probe (or several) run over many prompts, grid points and models.

A sweep is not a probe of its own (it runs registered probes item by item), but its outcome is a
normal :class:`~lenslab.probes.base.Result`: plain arrays that save and reload bit-exactly through
``Report``. It holds every item's status, error and per-layer metric values (the data), and the
aggregate of each metric per (model, probe, grid point) and layer with its 95% interval and n
(Wilson for rates, Student t for means: prompts are independent items). The runner that fills it
lives in :mod:`lenslab.sweeps`; this module only holds the data, the aggregation and the figures,
so any report can be reopened without Ray or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int

from lenslab.probes.base import Config, Result, register_result
from lenslab.probes.stats import format_interval, mean_ci, wilson

OK, FAILED = 0, 1
METRIC_KINDS = ("rate", "mean")


@dataclass(frozen=True)
class SweepConfig(Config):
    """What a sweep runs: probes × grid points × models over a prompt source (the manifest's spec)."""

    probes: tuple[str, ...] = field(default=("logit_lens",), metadata={"help": "registered probe names"})
    source: str = field(
        default="tasks:capitals",
        metadata={"help": "tasks:<built-in set>, corpus:pydoc, or a .txt (one prompt a line) / .jsonl file"},
    )
    models: tuple[str, ...] = field(
        default=(), metadata={"help": "model specs (empty: the embedded model; tiny:<family> to try)"}
    )
    config: tuple[str, ...] = field(default=(), metadata={"help": "key=value settings for every probe"})
    grid: tuple[str, ...] = field(default=(), metadata={"help": "key=v1,v2 (use ; between tuple values)"})
    limit: int = field(
        default=0, metadata={"help": "at most this many prompts (0: all)", "min": 0, "max": 100_000}
    )
    shard_size: int = field(default=8, metadata={"help": "items per shard", "min": 1, "max": 10_000})
    max_tokens: int = field(
        default=512, metadata={"help": "longest prompt in tokens", "min": 2, "max": 32_768}
    )
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bfloat16", "float16", "float64")})
    imports: tuple[str, ...] = field(
        default=(), metadata={"help": "modules imported on every worker first (extra probes)"}
    )

    def check_numbers(self) -> None:
        """Types and ranges, then the lists that must not be empty."""
        super().check_numbers()
        if not self.probes:
            raise ValueError("probes: name at least one probe")
        if not self.source.strip():
            raise ValueError("source: give a prompt source (tasks:<set>, corpus:pydoc or a file)")


@dataclass(frozen=True)
class SweepResult(Result):
    """Per-item outcomes and per-layer aggregates of a sweep (see the module docstring)."""

    probe = "sweep"
    config: SweepConfig
    prompts: list[str]
    models: list[str]  # model ids, in the order of ``config.models``
    probes: list[str]
    grid_labels: list[str]  # "k=5", "k=10" ... ("default" without a grid)
    item_prompt: Int[np.ndarray, " item"]  # index into prompts
    item_model: Int[np.ndarray, " item"]
    item_probe: Int[np.ndarray, " item"]
    item_grid: Int[np.ndarray, " item"]
    status: Int[np.ndarray, " item"]  # OK or FAILED
    errors: list[str]  # "" for items that ran
    attempts: Int[np.ndarray, " item"]  # times the item's shard was started (> 1: a worker died)
    metric_names: list[str]
    metric_kinds: list[str]  # "rate" (values 0/1, Wilson) or "mean" (Student t)
    metric_help: list[str]
    values: Float[np.ndarray, "item metric layer"]  # NaN where a metric has no value
    group_model: Int[np.ndarray, " group"]
    group_probe: Int[np.ndarray, " group"]
    group_grid: Int[np.ndarray, " group"]
    estimate: Float[np.ndarray, "group metric layer"]
    low: Float[np.ndarray, "group metric layer"]
    high: Float[np.ndarray, "group metric layer"]
    n: Int[np.ndarray, "group metric layer"]
    backend: str
    workers: int
    seconds: float  # wall time of the run that finished the sweep
    items_per_second: float  # items computed by that run / its wall time
    retried_shards: int  # shard restarts after a worker died

    @property
    def group_labels(self) -> list[str]:
        """``model · probe · grid point`` for every group."""
        return [
            " · ".join(
                [self.models[m], self.probes[p]]
                + ([] if self.grid_labels == ["default"] else [self.grid_labels[g]])
            )
            for m, p, g in zip(
                self.group_model.tolist(), self.group_probe.tolist(), self.group_grid.tolist(), strict=True
            )
        ]

    def summary(self) -> dict[str, object]:
        """Items, failures, throughput and the first metric at the last layer of the first group."""
        out: dict[str, object] = {
            "items": int(self.status.size),
            "failed": int((self.status == FAILED).sum()),
            "items/s": round(self.items_per_second, 2),
            "backend": f"{self.backend} × {self.workers}",
        }
        if self.metric_names and self.estimate.size:
            row = self.estimate[0, 0]
            last = int(np.flatnonzero(np.isfinite(row))[-1]) if np.isfinite(row).any() else None
            if last is not None:
                out[f"{self.metric_names[0]} (layer {last})"] = (
                    format_interval(row[last], self.low[0, 0, last], self.high[0, 0, last])
                    + f" n={int(self.n[0, 0, last])}"
                )
        return out

    def figures(self) -> dict[str, go.Figure]:
        """One figure per metric (estimate by layer with 95% error bars per group), and item outcomes."""
        figures: dict[str, go.Figure] = {}
        labels = self.group_labels
        for m, (name, kind, text) in enumerate(
            zip(self.metric_names, self.metric_kinds, self.metric_help, strict=True)
        ):
            fig = go.Figure()
            for g, group in enumerate(labels):
                layers = np.flatnonzero(self.n[g, m] > 0)
                est = self.estimate[g, m, layers]
                fig.add_trace(
                    go.Scatter(
                        x=layers.tolist(),
                        y=est,
                        mode="lines+markers",
                        name=group,
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": self.high[g, m, layers] - est,
                            "arrayminus": est - self.low[g, m, layers],
                        },
                        customdata=self.n[g, m, layers],
                        hovertemplate="layer %{x}<br>%{y:.3f}<br>n=%{customdata}<extra>" + group + "</extra>",
                    )
                )
            method = "Wilson" if kind == "rate" else "Student t"
            fig.update_layout(
                title=f"{text} (95% {method} interval over prompts)",
                xaxis_title="layer",
                yaxis_title=name,
                template="plotly_white",
            )
            figures[name] = fig
        ok = [int(((self.status == OK) & self._in_group(g)).sum()) for g in range(len(labels))]
        bad = [int(((self.status == FAILED) & self._in_group(g)).sum()) for g in range(len(labels))]
        outcome = go.Figure([go.Bar(x=labels, y=ok, name="ran"), go.Bar(x=labels, y=bad, name="failed")])
        outcome.update_layout(
            barmode="stack", title="Items per group", yaxis_title="items", template="plotly_white"
        )
        figures["items"] = outcome
        return figures

    def _in_group(self, g: int) -> np.ndarray:
        return (
            (self.item_model == self.group_model[g])
            & (self.item_probe == self.group_probe[g])
            & (self.item_grid == self.group_grid[g])
        )

    def failures(self) -> list[tuple[int, str, str]]:
        """``(item, prompt, error)`` of every item that did not run."""
        return [
            (i, self.prompts[int(self.item_prompt[i])], self.errors[i])
            for i in np.flatnonzero(self.status == FAILED).tolist()
        ]


register_result(SweepResult)


def aggregate(
    values: Float[np.ndarray, "item metric layer"],
    kinds: list[str],
    status: Int[np.ndarray, " item"],
    item_group: Int[np.ndarray, " item"],
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group, metric and layer: estimate, 95% low and high, and n over the items that ran.

    Rates are proportions of independent prompts (Wilson); means use a Student-t interval.
    Cells without any value get NaN and n = 0.
    """
    n_metrics, n_layers = values.shape[1], values.shape[2]
    shape = (n_groups, n_metrics, n_layers)
    estimate, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    counts = np.zeros(shape, dtype=np.int64)
    for g in range(n_groups):
        rows = values[(item_group == g) & (status == OK)]
        for m, kind in enumerate(kinds):
            if kind not in METRIC_KINDS:
                raise ValueError(f"metric kind must be one of {METRIC_KINDS}, got {kind!r}")
            for layer in range(n_layers):
                column = rows[:, m, layer]
                column = column[np.isfinite(column)]
                if column.size == 0:
                    continue
                rate = kind == "rate"
                interval = wilson(int(column.sum()), int(column.size)) if rate else mean_ci(column)
                estimate[g, m, layer], low[g, m, layer], high[g, m, layer] = interval.as_tuple()
                counts[g, m, layer] = interval.n
    return estimate, low, high, counts
