"""Per-item metrics a sweep keeps from each probe result, one value per layer.

A probe's full result per prompt would be large (the logit lens keeps top-k tokens for every
layer and position); a sweep keeps the few numbers it aggregates. Each probe may register an
extractor; probes without one contribute their numeric ``summary()`` values (not per layer: they
sit at layer 0 and their help says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lenslab.probes.base import Result


@dataclass(frozen=True)
class Metric:
    """A metric's name, kind (``rate``: 0/1 values, ``mean``) and a sentence for figure titles."""

    name: str
    kind: str
    help: str


Extractor = Callable[[Result, int], list[tuple[Metric, np.ndarray]]]
_EXTRACTORS: dict[str, Extractor] = {}


def register_extractor(probe: str, extractor: Extractor) -> None:
    """Use ``extractor(result, n_layers)`` for ``probe``'s items in sweeps."""
    _EXTRACTORS[probe] = extractor


def extract(result: Result, n_layers: int) -> list[tuple[Metric, np.ndarray]]:
    """The metrics of one item: ``(metric, values[n_layers])`` with NaN where there is no value."""
    extractor = _EXTRACTORS.get(result.probe, _summary_metrics)
    return extractor(result, n_layers)


def _summary_metrics(result: Result, n_layers: int) -> list[tuple[Metric, np.ndarray]]:
    out = []
    for key, value in result.summary().items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            continue
        vector = np.full(n_layers, np.nan)
        vector[0] = float(value)
        out.append(
            (Metric(f"{result.probe}: {key}", "mean", f"{key} (from the summary; not per layer)"), vector)
        )
    return out


def _logit_lens_metrics(result: Result, n_layers: int) -> list[tuple[Metric, np.ndarray]]:
    """At the last position: does layer ℓ's top-1 equal the model's final prediction, and its probability."""
    layers = np.asarray(result.layers, dtype=np.int64)  # type: ignore[attr-defined]
    match = np.full(n_layers, np.nan)
    prob = np.full(n_layers, np.nan)
    match[layers] = (np.asarray(result.final_rank)[:, -1] == 0).astype(np.float64)  # type: ignore[attr-defined]
    prob[layers] = np.asarray(result.final_prob, dtype=np.float64)[:, -1]  # type: ignore[attr-defined]
    return [
        (
            Metric(
                "top1_is_final",
                "rate",
                "Rate at which the layer's top-1 equals the final prediction (last position)",
            ),
            match,
        ),
        (
            Metric(
                "final_prob", "mean", "Mean logit-lens probability of the final prediction (last position)"
            ),
            prob,
        ),
    ]


register_extractor("logit_lens", _logit_lens_metrics)
