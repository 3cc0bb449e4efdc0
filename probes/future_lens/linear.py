"""Future Lens method 2, the linear model: h_t^ℓ → last block's output at t+N, decoded as usual.

One d_model×d_model map per layer and horizon N = 0..3, fitted in closed form (ridge on centred
data, float64, shrunk toward the identity by default) on the training split, then decoded through
final norm + unembed. The maps are saved as an artefact per model and reused while the data and
settings match.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.artefacts import ARTEFACT_FORMAT, load_artefact, save_artefact
from lenslab.probes.future_lens.data import HORIZONS, FutureLensData, cache_dir
from lenslab.progress import NO_PROGRESS, Progress

# Relative ridge of the linear fit, chosen on the embedded model from 0.03 / 0.3 / 3 (docs/future_lens.md).
DEFAULT_RIDGE = 0.3


@dataclass
class LinearMaps:
    """Per layer and horizon: ŷ = (h − x_mean) @ weight + y_mean (float32 on the model's device)."""

    layers: list[int]
    horizons: list[int]
    weight: Float[Tensor, "layer horizon d_model d_model"]
    x_mean: Float[Tensor, "layer d_model"]
    y_mean: Float[Tensor, "horizon d_model"]
    meta: dict[str, Any] = field(default_factory=dict)

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


def fit_linear_maps(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int] | None = None,
    ridge: float = DEFAULT_RIDGE,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
) -> LinearMaps:
    """Fit h_t^ℓ → last-block state at t+N on the training split for each layer and N = 0..3.

    ``toward_identity`` (default) shrinks the ridge toward W = I (see :func:`fit_linear_map`).
    """
    layers = session.check_layers(layers)
    train = data.split(test=False)
    device = session.device
    weights, x_means = [], []
    y_mean = torch.as_tensor(data.final[train].mean(0), device=device)
    for i, layer in enumerate(layers):
        x = torch.as_tensor(data.resid[train, layer], device=device)
        per_n = []
        for n in range(HORIZONS):
            y = torch.as_tensor(data.final[train, n], device=device)
            weight, x_mean, _ = fit_linear_map(x, y, ridge, toward_identity=toward_identity)
            per_n.append(weight)
        weights.append(torch.stack(per_n))
        x_means.append(x_mean)
        progress((i + 1) / len(layers), f"fitted linear maps for layer {layer}")
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "linear",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "ridge": ridge,
        "toward_identity": toward_identity,
        "data_key": data.key,
        "n_train": len(train),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return LinearMaps(layers, list(range(HORIZONS)), torch.stack(weights), torch.stack(x_means), y_mean, meta)


def linear_path(model_id: str) -> Path:
    """Where the linear maps of ``model_id`` are saved."""
    return cache_dir(model_id) / "linear_maps.safetensors"


def load_linear(session: ModelSession) -> LinearMaps | None:
    """The saved linear maps of the session's model, or None when none were trained."""
    path = linear_path(session.model_id)
    return LinearMaps.load(path, session) if path.is_file() else None


def ensure_linear(
    session: ModelSession,
    data: FutureLensData,
    ridge: float = DEFAULT_RIDGE,
    layers: list[int] | None = None,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
) -> LinearMaps:
    """Reuse the saved maps when they were fitted on the same data and settings, else fit and save."""
    wanted = session.check_layers(layers)
    saved = load_linear(session)
    if (
        saved is not None
        and saved.meta.get("data_key") == data.key
        and saved.meta.get("ridge") == ridge
        and saved.meta.get("toward_identity") == toward_identity
        and set(wanted) <= set(saved.layers)
    ):
        return saved
    maps = fit_linear_maps(session, data, wanted, ridge, progress, toward_identity=toward_identity)
    maps.save(linear_path(session.model_id))
    return maps
