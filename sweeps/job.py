"""The sweep as a sharded job: items = models × probes × grid points × prompts, run item by item.

Each item runs one registered probe on one prompt with one config and keeps its metrics
(:mod:`lenslab.sweeps.metrics`). An item that fails (an empty line, a prompt over the token
limit, a config the model refuses) is recorded with its error and the shard goes on: a bad item
never stops a sweep. Shards hold consecutive items of one model, so a worker loads each model once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lenslab.probes.base import Config, get_probe
from lenslab.probes.fields import config_field
from lenslab.probes.sweep_result import FAILED, OK, SweepConfig
from lenslab.sweeps.engine import Shard, State
from lenslab.sweeps.metrics import extract
from lenslab.sweeps.sources import BAD_JSON

DEFAULT_POINT = "default"
MAX_ERROR_CHARS = 500

GridPoint = tuple[tuple[str, str], ...]  # (key, raw text) pairs of one grid point


def parse_pairs(pairs: Sequence[str], what: str) -> list[tuple[str, str]]:
    """``key=value`` strings as pairs; anything else is a ``ValueError`` naming ``what``."""
    out = []
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise ValueError(f"{what}: expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out.append((key.strip(), raw.strip()))
    return out


def grid_points(grid: Sequence[str]) -> list[GridPoint]:
    """The cartesian product of ``key=v1,v2`` entries (``;`` separates values that hold commas)."""
    axes = []
    for key, raw in parse_pairs(grid, "grid"):
        values = [v.strip() for v in raw.split(";" if ";" in raw else ",")]
        if not all(values):
            raise ValueError(f"grid: {key} has an empty value in {raw!r}")
        axes.append([(key, v) for v in values])
    return [tuple(point) for point in itertools.product(*axes)] if axes else [()]


def point_label(point: GridPoint) -> str:
    """``k=5 layers=0,1`` (``default`` without a grid)."""
    return " ".join(f"{k}={v}" for k, v in point) or DEFAULT_POINT


@dataclass(frozen=True)
class SweepJob:
    """A sweep's items and how one is run (see the module docstring)."""

    kind: ClassVar[str] = "sweep"
    config: SweepConfig
    prompts: tuple[str, ...]

    @property
    def dtype(self) -> str:
        """Dtype every worker loads its model in."""
        return self.config.dtype

    @property
    def max_tokens(self) -> int:
        """Longest prompt in tokens; longer ones fail as items."""
        return self.config.max_tokens

    @property
    def imports(self) -> tuple[str, ...]:
        """Modules every worker imports first."""
        return self.config.imports

    @property
    def models(self) -> tuple[str, ...]:
        """Model specs ("" is the embedded model)."""
        return self.config.models or ("",)

    @property
    def points(self) -> list[GridPoint]:
        """The grid points."""
        return grid_points(self.config.grid)

    def probe_config(self, probe_index: int, point: GridPoint) -> Config:
        """Probe ``probe_index``'s config at ``point``: defaults, then ``config`` pairs, then the grid."""
        probe = get_probe(self.config.probes[probe_index])
        values: dict[str, Any] = {}
        for key, raw in [*parse_pairs(self.config.config, "config"), *point]:
            try:
                values[key] = config_field(probe.config_cls, key).parse(raw)
            except ValueError as exc:
                raise ValueError(f"{probe.name}: {exc}") from exc
        config = probe.default_config().replace(**values)
        config.check_numbers()
        return config

    def check(self) -> None:
        """Every probe exists and every (probe, grid point) config parses and passes its ranges."""
        self.config.check_numbers()
        points = self.points
        for p in range(len(self.config.probes)):
            for point in points:
                self.probe_config(p, point)

    def item(self, index: int) -> tuple[int, int, int, int]:
        """``(model, probe, grid point, prompt)`` indices of item ``index``."""
        n_prompts, n_points, n_probes = len(self.prompts), len(self.points), len(self.config.probes)
        index, prompt = divmod(index, n_prompts)
        index, point = divmod(index, n_points)
        model, probe = divmod(index, n_probes)
        return model, probe, point, prompt

    @property
    def n_items(self) -> int:
        """Models × probes × grid points × prompts."""
        return len(self.models) * len(self.config.probes) * len(self.points) * len(self.prompts)

    def shards(self) -> list[Shard]:
        """Consecutive items of one model, ``shard_size`` at a time."""
        per_model = self.n_items // len(self.models)
        out = []
        for m, spec in enumerate(self.models):
            start = m * per_model
            for s, begin in enumerate(range(start, start + per_model, self.config.shard_size)):
                stop = min(begin + self.config.shard_size, start + per_model)
                out.append(Shard(f"m{m:02d}-s{s:06d}", spec, tuple(range(begin, stop))))
        return out

    def map_shard(self, session: Any, shard: Shard) -> State:
        """Run every item of ``shard``; failures become per-item errors."""
        points = self.points
        configs: dict[tuple[int, int], Config] = {}
        rows: list[dict[str, np.ndarray]] = []
        status, errors, metas = [], [], {}
        for index in shard.items:
            _, p, g, i = self.item(index)
            prompt = self.prompts[i]
            found: dict[str, np.ndarray] = {}
            try:
                if prompt.startswith(BAD_JSON):
                    raise ValueError(prompt[len(BAD_JSON) :])
                if (p, g) not in configs:
                    configs[(p, g)] = self.probe_config(p, points[g])
                result = get_probe(self.config.probes[p]).run(session, prompt, configs[(p, g)])
                for metric, values in extract(result, session.n_layers):
                    metas[metric.name] = metric
                    found[metric.name] = np.asarray(values, dtype=np.float64)
                status.append(OK)
                errors.append("")
            except Exception as exc:  # any item failure is data, not a stop
                status.append(FAILED)
                errors.append(f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
            rows.append(found)
        names = list(metas)
        values = np.full((len(rows), len(names), session.n_layers), np.nan)
        for r, found in enumerate(rows):
            for m, name in enumerate(names):
                if name in found:
                    values[r, m] = found[name]
        return {
            "item": np.asarray(shard.items, dtype=np.int64),
            "status": np.asarray(status, dtype=np.int64),
            "errors": np.asarray(errors, dtype=np.str_),
            "model_id": np.asarray(session.model_id, dtype=np.str_),
            "metric_names": np.asarray(names, dtype=np.str_).reshape(len(names)),
            "metric_kinds": np.asarray([metas[n].kind for n in names], dtype=np.str_).reshape(len(names)),
            "metric_help": np.asarray([metas[n].help for n in names], dtype=np.str_).reshape(len(names)),
            "values": values,
        }

    def merge(self, states: Sequence[State]) -> State:
        """Concatenate the shards' items; metrics are the union, layers padded with NaN."""
        names: list[str] = []
        kinds: dict[str, str] = {}
        helps: dict[str, str] = {}
        model_ids = [""] * len(self.models)
        for state in states:
            m = self.item(int(state["item"][0]))[0] if state["item"].size else 0
            model_ids[m] = str(state["model_id"])
            for name, kind, text in zip(
                state["metric_names"].tolist(),
                state["metric_kinds"].tolist(),
                state["metric_help"].tolist(),
                strict=True,
            ):
                if name not in kinds:
                    names.append(name)
                    kinds[name], helps[name] = kind, text
        n_layers = max((s["values"].shape[2] for s in states), default=0)
        items = np.concatenate([s["item"] for s in states]) if states else np.zeros(0, np.int64)
        values = np.full((len(items), len(names), n_layers), np.nan)
        row = 0
        for state in states:
            own = state["metric_names"].tolist()
            for m, name in enumerate(own):
                values[row : row + len(state["item"]), names.index(name), : state["values"].shape[2]] = state[
                    "values"
                ][:, m]
            row += len(state["item"])
        order = np.argsort(items, kind="stable")
        return {
            "item": items[order],
            "status": np.concatenate([s["status"] for s in states])[order],
            "errors": np.concatenate([s["errors"].astype(np.str_) for s in states])[order],
            "model_ids": np.asarray(model_ids, dtype=np.str_),
            "metric_names": np.asarray(names, dtype=np.str_),
            "metric_kinds": np.asarray([kinds[n] for n in names], dtype=np.str_),
            "metric_help": np.asarray([helps[n] for n in names], dtype=np.str_),
            "values": values[order],
        }
