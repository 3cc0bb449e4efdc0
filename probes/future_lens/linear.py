"""Future Lens method 2, the linear model: h_t^ℓ → last block's output at t+N, decoded as usual.

One d_model×d_model map per layer and horizon N = 0..3, fitted in closed form (ridge on centred
data, float64, shrunk toward the identity by default) on the training split, then decoded through
final norm + unembed. The maps are saved as an artefact per model and reused while the data and
settings match.

- **Ridge chosen on validation**: by default the relative ridge of each (layer, N) map is chosen
  from ``RIDGE_GRID`` on held-out *training* documents (:func:`validation_split`; the score is
  the validation MSE after the final norm, i.e. of what the unembedding reads), then the map is
  refitted on all training documents. The grid, the scores and the chosen values are stored in
  the artefact. A fixed ``ridge`` skips the selection.
- **Provenance**: the artefact records the training documents (``artefacts.training_provenance``);
  evaluations refuse maps fitted on one of their test documents.
- **Positions**: the maps are fitted on states at the examples' positions t (``positions`` in the
  metadata, e.g. [15, 15] for 16-token prefixes); the grid applies them only there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.artefacts import (
    ARTEFACT_FORMAT,
    load_artefact,
    save_artefact,
    training_provenance,
)
from lenslab.probes.future_lens.data import HORIZONS, FutureLensData, cache_dir
from lenslab.progress import NO_PROGRESS, Progress

# Relative ridges tried per (layer, N) on held-out training documents; None = choose from them.
RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_RIDGE: float | None = None
VALIDATION_FRACTION = 0.2  # share of the training documents held out to choose the ridge


@dataclass
class LinearMaps:
    """Per layer and horizon: ŷ = (h − x_mean) @ weight + y_mean (float32 on the model's device)."""

    layers: list[int]
    horizons: list[int]
    weight: Float[Tensor, "layer horizon d_model d_model"]
    x_mean: Float[Tensor, "layer d_model"]
    y_mean: Float[Tensor, "horizon d_model"]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> tuple[int, int] | None:
        """(first, last) position t the maps were fitted at; None for maps saved without it."""
        span = self.meta.get("positions")
        return (int(span[0]), int(span[1])) if span else None

    def fitted_at(self, position: int) -> bool:
        """Whether states at sequence ``position`` are in the range the maps were fitted on."""
        span = self.positions
        return span is None or span[0] <= position <= span[1]

    def predict(
        self, resid: Float[Tensor, "batch d_model"], layer: int
    ) -> Float[Tensor, "batch horizon d_model"]:
        """Predicted last-block states at t+N for every fitted N."""
        if layer not in self.layers:
            raise ValueError(f"no linear map for layer {layer}; fitted layers: {self.layers}")
        i = self.layers.index(layer)
        weight = self.weight[i].to(resid)
        centred = resid - self.x_mean[i].to(resid)
        return torch.einsum("bd,nde->bne", centred, weight) + self.y_mean.to(resid)

    def save(self, path: Path) -> Path:
        """Write the maps with their metadata."""
        tensors = {"weight": self.weight, "x_mean": self.x_mean, "y_mean": self.y_mean}
        return save_artefact(path, tensors, {**self.meta, "layers": self.layers, "horizons": self.horizons})

    @classmethod
    def load(cls, path: Path, session: ModelSession) -> LinearMaps:
        """Read maps saved by :meth:`save`; maps of another model are refused."""
        tensors, meta = load_artefact(path, session, "linear", "linear-map")
        return cls(
            layers=[int(x) for x in meta["layers"]],
            horizons=[int(x) for x in meta["horizons"]],
            weight=tensors["weight"].to(session.device),
            x_mean=tensors["x_mean"].to(session.device),
            y_mean=tensors["y_mean"].to(session.device),
            meta=meta,
        )


def fit_linear_map(
    x: Float[Tensor, "n d_in"],
    y: Float[Tensor, "n d_out"],
    ridge: float = 0.0,
    *,
    toward_identity: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form least squares on centred data: returns ``(weight, x_mean, y_mean)``.

    ``ridge`` is relative: λ = ridge · trace(XᵀX)/d, so one value suits residual streams of any
    scale (Gemma's are ~10³). ``ridge=0`` is ordinary least squares (minimum-norm when n < d).
    ``toward_identity`` shrinks W toward I instead of 0 (minimises ‖Y − XW‖² + λ‖W − I‖²): with
    few examples per dimension the map then falls back to the (mean-shifted) direct projection
    instead of to the mean prediction. Computed in float64.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("a linear fit needs at least two examples")
    if ridge < 0 or not math.isfinite(ridge):
        raise ValueError(f"ridge must be a finite number ≥ 0, got {ridge}")
    x64, y64 = x.double(), y.double()
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    if ridge == 0:
        weight = torch.linalg.lstsq(xc, yc, driver="gelsd" if xc.device.type == "cpu" else None).solution
    else:
        gram = xc.T @ xc
        lam = ridge * torch.trace(gram) / gram.shape[0]
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        rhs = xc.T @ yc
        if toward_identity:
            if x.shape[1] != y.shape[1]:
                raise ValueError("shrinking toward the identity needs d_in == d_out")
            rhs = rhs + lam * eye
        weight = torch.linalg.solve(gram + lam * eye, rhs)
    return weight.float(), x_mean.float(), y_mean.float()


def validation_split(
    data: FutureLensData, fraction: float = VALIDATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Training examples split by document into (fit, validation); never touches the test split.

    Whole training documents (seeded by the data's seed) go to validation until it holds
    ``fraction`` of the training examples. With fewer than two training documents the
    validation part is empty.
    """
    train = data.split(test=False)
    docs = np.unique(data.doc_ids[train])
    if len(docs) < 2:
        return train, train[:0]
    order = np.random.default_rng(data.settings.seed + 1).permutation(docs)
    held: list[int] = []
    count = 0
    for doc in order[:-1]:
        if count >= fraction * len(train):
            break
        held.append(int(doc))
        count += int((data.doc_ids[train] == doc).sum())
    is_val = np.isin(data.doc_ids[train], held)
    return train[~is_val], train[is_val]


def ridge_path(
    x: Float[Tensor, "n d"], y: Float[Tensor, "n d_out"], ridges: tuple[float, ...], *, toward_identity: bool
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`fit_linear_map` for several relative ridges > 0 at once (one eigendecomposition)."""
    return ridge_paths(x, [y], ridges, toward_identity=toward_identity)[0]


def ridge_paths(
    x: Float[Tensor, "n d"],
    ys: list[Float[Tensor, "n d_out"]],
    ridges: tuple[float, ...],
    *,
    toward_identity: bool,
) -> list[list[tuple[Tensor, Tensor, Tensor]]]:
    """:func:`ridge_path` for several targets of the same inputs: ``out[target][ridge]``.

    The eigendecomposition of XᵀX is shared by every target and ridge (one per input matrix,
    the fit's only cubic cost). With fewer examples than inputs (n < d: a page's evaluation fits
    on a few hundred examples of a 640-wide stream) the same maps come from the n×n kernel
    instead (:func:`_dual_ridge_paths`), d/n times fewer operations.
    """
    if any(r <= 0 or not math.isfinite(r) for r in ridges):
        raise ValueError(f"every ridge of a path must be a finite number > 0, got {ridges}")
    if toward_identity and any(x.shape[1] != y.shape[1] for y in ys):
        raise ValueError("shrinking toward the identity needs d_in == d_out")
    x64 = x.double()
    x_mean = x64.mean(0)
    xc = x64 - x_mean
    if xc.shape[0] < xc.shape[1]:
        return _dual_ridge_paths(xc, x_mean, ys, ridges, toward_identity=toward_identity)
    gram = xc.T @ xc
    values, vectors = torch.linalg.eigh(gram)
    scale = torch.trace(gram) / gram.shape[0]
    out = []
    for y in ys:
        y64 = y.double()
        y_mean = y64.mean(0)
        cross = vectors.T @ (xc.T @ (y64 - y_mean))
        maps = []
        for ridge in ridges:
            lam = ridge * scale
            rhs = cross + lam * vectors.T if toward_identity else cross
            weight = vectors @ (rhs / (values.clamp_min(0) + lam)[:, None])
            maps.append((weight.float(), x_mean.float(), y_mean.float()))
        out.append(maps)
    return out


def _dual_ridge_paths(
    xc: Float[Tensor, "n d"],
    x_mean: Float[Tensor, " d"],
    ys: list[Float[Tensor, "n d_out"]],
    ridges: tuple[float, ...],
    *,
    toward_identity: bool,
) -> list[list[tuple[Tensor, Tensor, Tensor]]]:
    """:func:`ridge_paths` for n < d through the kernel K = XXᵀ (X centred, float64).

    The same maps, by the push-through identity (XᵀX + λI)⁻¹Xᵀ = Xᵀ(XXᵀ + λI)⁻¹: toward zero
    W = Xᵀ(K + λI)⁻¹Y, toward the identity W = I + Xᵀ(K + λI)⁻¹(Y − X) (from (XᵀX + λI)W = XᵀY + λI).
    One eigendecomposition of the n×n kernel serves every target and ridge; λ = ridge ·
    trace(XᵀX)/d as in the primal form (trace(XXᵀ) is the same number).
    """
    kernel = xc @ xc.T
    values, vectors = torch.linalg.eigh(kernel)
    values = values.clamp_min(0)
    scale = torch.trace(kernel) / xc.shape[1]
    eye = torch.eye(xc.shape[1], dtype=xc.dtype, device=xc.device) if toward_identity else None
    out = []
    for y in ys:
        y64 = y.double()
        y_mean = y64.mean(0)
        target = y64 - y_mean
        projected = vectors.T @ (target - xc if eye is not None else target)  # Uᵀ(Y − X) or UᵀY
        maps = []
        for ridge in ridges:
            coefficients = vectors @ (projected / (values + ridge * scale)[:, None])  # (K + λI)⁻¹(…)
            weight = xc.T @ coefficients
            if eye is not None:
                weight = weight + eye
            maps.append((weight.float(), x_mean.float(), y_mean.float()))
        out.append(maps)
    return out


def choose_ridge(
    fit: tuple[Tensor, Tensor],
    validation: tuple[Tensor, Tensor],
    grid: tuple[float, ...] = RIDGE_GRID,
    *,
    toward_identity: bool = True,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[int, list[float]]:
    """Index of the ridge in ``grid`` with the lowest validation MSE, and every validation MSE.

    Maps are fitted on ``fit = (x, y)`` and scored on ``validation = (x, y)``; ``transform``
    (e.g. the model's final norm) is applied to predictions and targets before the MSE.
    """
    x_val, y_val = validation
    if x_val.shape[0] == 0:
        raise ValueError("the validation split is empty")
    path = ridge_path(*fit, grid, toward_identity=toward_identity)
    return _validation_scores(path, x_val, y_val, transform)


def _validation_scores(
    path: list[tuple[Tensor, Tensor, Tensor]],
    x_val: Tensor,
    y_val: Tensor,
    transform: Callable[[Tensor], Tensor] | None,
) -> tuple[int, list[float]]:
    transform = transform or (lambda t: t)
    target = transform(y_val.float())
    scores = []
    for weight, x_mean, y_mean in path:
        pred = (x_val.float() - x_mean) @ weight + y_mean
        scores.append(float((transform(pred) - target).pow(2).mean()))
    return int(np.argmin(scores)), scores


def ridge_path_predictions(
    x: Float[Tensor, "n d"],
    ys: list[Float[Tensor, "n d_out"]],
    ridges: tuple[float, ...],
    x_new: Float[Tensor, "m d"],
    *,
    toward_identity: bool,
) -> list[list[Float[Tensor, "m d_out"]]]:
    """Predictions for ``x_new`` of every map :func:`ridge_paths` would fit: ``out[target][ridge]``.

    What choosing a ridge on validation rows needs. With n < d the maps are never formed: by the
    kernel form of :func:`_dual_ridge_paths`, x_new W = (x_new Xᵀ U)(Λ + λI)⁻¹ Uᵀ(Y − X) (+ x_new
    toward the identity), an m×n by n×d product per ridge instead of a d×n by n×d one to form W
    and an m×d by d×d one to apply it (about ten times fewer operations for a page's
    evaluation data). The predictions equal ``(x_new − x_mean) @ W + y_mean`` of the formed maps
    to float32 rounding (computed in float64, returned as float32).
    """
    if any(r <= 0 or not math.isfinite(r) for r in ridges):
        raise ValueError(f"every ridge of a path must be a finite number > 0, got {ridges}")
    if x.shape[0] >= x.shape[1]:  # primal form: the d×d maps are the cheaper route
        return [
            [(x_new.float() - x_mean) @ weight + y_mean for weight, x_mean, y_mean in path]
            for path in ridge_paths(x, ys, ridges, toward_identity=toward_identity)
        ]
    if toward_identity and any(x.shape[1] != y.shape[1] for y in ys):
        raise ValueError("shrinking toward the identity needs d_in == d_out")
    x64 = x.double()
    x_mean = x64.mean(0)
    xc = x64 - x_mean
    new_c = x_new.double() - x_mean
    kernel = xc @ xc.T
    values, vectors = torch.linalg.eigh(kernel)
    values = values.clamp_min(0)
    scale = torch.trace(kernel) / xc.shape[1]
    reach = (new_c @ xc.T) @ vectors  # [m, n]: x_new Xᵀ U
    out = []
    for y in ys:
        y64 = y.double()
        y_mean = y64.mean(0)
        target = y64 - y_mean
        projected = vectors.T @ (target - xc if toward_identity else target)
        base = new_c + y_mean if toward_identity else y_mean
        out.append([((reach / (values + ridge * scale)) @ projected + base).float() for ridge in ridges])
    return out


def _prediction_scores(
    predictions: list[Tensor], y_val: Tensor, transform: Callable[[Tensor], Tensor] | None
) -> tuple[int, list[float]]:
    """:func:`_validation_scores` from predictions already made (:func:`ridge_path_predictions`)."""
    transform = transform or (lambda t: t)
    target = transform(y_val.float())
    scores = [float((transform(pred) - target).pow(2).mean()) for pred in predictions]
    return int(np.argmin(scores)), scores


def fit_linear_maps(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int] | None = None,
    ridge: float | None = DEFAULT_RIDGE,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
    grid: tuple[float, ...] = RIDGE_GRID,
) -> LinearMaps:
    """Fit h_t^ℓ → last-block state at t+N on the training split for each layer and N = 0..3.

    ``ridge=None`` (default) chooses each map's relative ridge from ``grid`` on held-out
    training documents (:func:`validation_split`, score: MSE after the final norm) and refits
    on the whole training split; a number fixes it. ``toward_identity`` (default) shrinks the
    ridge toward W = I (see :func:`fit_linear_map`). The test split is never read.
    """
    layers = session.check_layers(layers)
    if ridge is not None and (ridge < 0 or not math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number ≥ 0 or None (choose on validation), got {ridge}")
    if ridge is None and (not grid or any(r <= 0 or not math.isfinite(r) for r in grid)):
        raise ValueError(f"the ridge grid must hold finite numbers > 0, got {grid}")
    train = data.split(test=False)
    fit_rows, val_rows = validation_split(data)
    select = ridge is None and len(val_rows) > 0
    device = session.device
    weights, x_means, chosen, scores = [], [], [], []

    def final_norm(t: Tensor) -> Tensor:
        with torch.inference_mode():
            return session.final_norm(t.to(session.dtype)).float()

    y_mean = torch.as_tensor(data.final[train].mean(0), device=device)
    for i, layer in enumerate(layers):
        x = torch.as_tensor(data.resid[train, layer], device=device)
        x_fit = torch.as_tensor(data.resid[fit_rows, layer], device=device)
        x_val = torch.as_tensor(data.resid[val_rows, layer], device=device)
        per_n, chosen_n, scores_n = [], [], []
        value = ridge if ridge is not None else grid[len(grid) // 2]
        chosen_n = [value] * HORIZONS
        if select:  # one eigendecomposition of the fit rows serves every horizon and ridge
            predictions = ridge_path_predictions(
                x_fit,
                [torch.as_tensor(data.final[fit_rows, n], device=device) for n in range(HORIZONS)],
                grid,
                x_val,
                toward_identity=toward_identity,
            )
            for n, predicted in enumerate(predictions):
                y_val = torch.as_tensor(data.final[val_rows, n], device=device)
                best, mse = _prediction_scores(predicted, y_val, final_norm)
                chosen_n[n] = grid[best]
                scores_n.append(mse)
        ys = [torch.as_tensor(data.final[train, n], device=device) for n in range(HORIZONS)]
        if all(r > 0 for r in chosen_n):  # the refit on every training row: one more per layer
            refit = ridge_paths(x, ys, tuple(sorted(set(chosen_n))), toward_identity=toward_identity)
            order = sorted(set(chosen_n))
            for n in range(HORIZONS):
                weight, x_mean, _ = refit[n][order.index(chosen_n[n])]
                per_n.append(weight)
        else:
            for n in range(HORIZONS):
                weight, x_mean, _ = fit_linear_map(x, ys[n], chosen_n[n], toward_identity=toward_identity)
                per_n.append(weight)
        weights.append(torch.stack(per_n))
        x_means.append(x_mean)
        chosen.append(chosen_n)
        scores.append(scores_n)
        progress((i + 1) / len(layers), f"fitted linear maps for layer {layer}")
    positions = data.positions[train]
    if data.settings.min_prefix_tokens is not None:  # the range the lengths were drawn from
        positions = np.asarray([data.settings.min_prefix_tokens - 1, data.settings.prefix_tokens - 1])
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "linear",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "ridge": ridge,  # None: chosen per (layer, N) on validation
        "ridge_chosen": chosen,  # [layer][N], the relative ridge each map was refitted with
        "ridge_grid": list(grid) if ridge is None else [],
        "validation": {
            "score": "MSE after the final norm (lower is better)",
            "scores": scores,  # [layer][N][grid]
            "n_examples": len(val_rows) if select else 0,
            "n_documents": len(np.unique(data.doc_ids[val_rows])) if select else 0,
        },
        "toward_identity": toward_identity,
        "data_key": data.key,
        "n_train": len(train),
        "positions": [int(positions.min()), int(positions.max())],
        "provenance": training_provenance(data, train),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return LinearMaps(layers, list(range(HORIZONS)), torch.stack(weights), torch.stack(x_means), y_mean, meta)


def linear_path(model_id: str) -> Path:
    """Where the page's linear maps of ``model_id`` are saved (what the linear method reads)."""
    return cache_dir(model_id) / "linear_maps.safetensors"


def evaluation_linear_path(model_id: str) -> Path:
    """Where an evaluation keeps maps it fitted on data other than the page's maps'.

    Apart from :func:`linear_path` so that evaluating on other data (fewer examples, another
    source, a subset of layers) never replaces the maps the page's linear method reads.
    """
    return cache_dir(model_id) / "linear_maps_evaluation.safetensors"


def load_linear(session: ModelSession, path: Path | None = None) -> LinearMaps | None:
    """The saved linear maps of the session's model (the page's by default), or None when none."""
    path = linear_path(session.model_id) if path is None else path
    return LinearMaps.load(path, session) if path.is_file() else None


def ensure_linear(
    session: ModelSession,
    data: FutureLensData,
    ridge: float | None = DEFAULT_RIDGE,
    layers: list[int] | None = None,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
    path: Path | None = None,
) -> LinearMaps:
    """Reuse saved maps fitted on the same data and settings, else fit ``layers`` and save them.

    ``path`` is where new maps go (the page's file by default); the page's maps are reused too
    when they match, so an evaluation on the page's data fits nothing.
    """
    wanted = session.check_layers(layers)
    path = linear_path(session.model_id) if path is None else path
    for candidate in dict.fromkeys([path, linear_path(session.model_id)]):
        saved = load_linear(session, candidate)
        if (
            saved is not None
            and saved.meta.get("data_key") == data.key
            and saved.meta.get("ridge") == ridge
            and (ridge is not None or saved.meta.get("ridge_grid") == list(RIDGE_GRID))
            and saved.meta.get("toward_identity") == toward_identity
            and "provenance" in saved.meta
            and set(wanted) <= set(saved.layers)
        ):
            return saved
    maps = fit_linear_maps(session, data, wanted, ridge, progress, toward_identity=toward_identity)
    maps.save(path)
    return maps
