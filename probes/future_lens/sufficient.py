"""Mergeable sufficient statistics of the Future Lens linear fit: n, Σx, Σy, XᵀX and XᵀY.

The closed-form fit of :func:`~lenslab.probes.future_lens.linear.fit_linear_map` needs only these
sums: centring is ``XcᵀXc = XᵀX − n·x̄x̄ᵀ`` and ``XcᵀYc = XᵀY − n·x̄ȳᵀ``. Sums over disjoint sets
of examples add, so shards of a corpus (on different machines) each return their statistics and
one addition gives the statistics of the whole training split: the fit then equals the
single-process fit up to floating-point summation order. Everything is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from lenslab.probes.future_lens.data import HORIZONS


@dataclass(frozen=True)
class LinearStats:
    """Per chosen layer ℓ and horizon N: the sums the ridge fit h_t^ℓ → final state at t+N needs."""

    layers: tuple[int, ...]
    n: int
    sum_x: Float[np.ndarray, "layer d_model"]
    sum_y: Float[np.ndarray, "horizon d_model"]
    xtx: Float[np.ndarray, "layer d_model d_model"]
    xty: Float[np.ndarray, "layer horizon d_model d_model"]

    @classmethod
    def of(
        cls,
        resid: Float[np.ndarray, "example all_layers d_model"],
        final: Float[np.ndarray, "example horizon d_model"],
        layers: tuple[int, ...],
    ) -> LinearStats:
        """The statistics of these examples (rows of :class:`FutureLensData` ``resid`` / ``final``)."""
        x = np.asarray(resid, dtype=np.float64)[:, list(layers)]
        y = np.asarray(final, dtype=np.float64)
        return cls(
            layers=tuple(int(layer) for layer in layers),
            n=int(x.shape[0]),
            sum_x=x.sum(0),
            sum_y=y.sum(0),
            xtx=np.einsum("nld,nle->lde", x, x),
            xty=np.einsum("nld,nhe->lhde", x, y),
        )

    def merge(self, other: LinearStats) -> LinearStats:
        """The statistics of both sets of examples (exact: sums add)."""
        if self.layers != other.layers or self.xtx.shape != other.xtx.shape:
            raise ValueError(f"cannot merge statistics of layers {self.layers} and {other.layers}")
        return LinearStats(
            self.layers,
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_y + other.sum_y,
            self.xtx + other.xtx,
            self.xty + other.xty,
        )

    def to_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (a shard file of the sweep engine)."""
        return {
            "layers": np.asarray(self.layers, dtype=np.int64),
            "n": np.asarray(self.n, dtype=np.int64),
            "sum_x": self.sum_x,
            "sum_y": self.sum_y,
            "xtx": self.xtx,
            "xty": self.xty,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> LinearStats:
        """Inverse of :meth:`to_state`."""
        return cls(
            tuple(int(x) for x in state["layers"].tolist()),
            int(state["n"]),
            state["sum_x"],
            state["sum_y"],
            state["xtx"],
            state["xty"],
        )

    def solve(
        self, ridge: float, *, toward_identity: bool = True, device: torch.device | str = "cpu"
    ) -> tuple[
        Float[torch.Tensor, "layer horizon d_model d_model"],
        Float[torch.Tensor, "layer d_model"],
        Float[torch.Tensor, "horizon d_model"],
    ]:
        """``(weight, x_mean, y_mean)`` as :func:`fit_linear_map` computes them, per layer and horizon.

        ``ridge=0`` takes the minimum-norm solution of the normal equations, which is the
        minimum-norm least-squares solution ``fit_linear_map`` returns.
        """
        if self.n < 2:
            raise ValueError("a linear fit needs at least two examples")
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be a finite number ≥ 0, got {ridge}")
        if self.sum_y.shape[0] != HORIZONS:
            raise ValueError(f"expected {HORIZONS} horizons, got {self.sum_y.shape[0]}")
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
        x_mean = as_t(self.sum_x) / self.n
        y_mean = as_t(self.sum_y) / self.n
        weights = []
        for i in range(len(self.layers)):
            gram = as_t(self.xtx[i]) - self.n * torch.outer(x_mean[i], x_mean[i])
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            lam = ridge * torch.trace(gram) / gram.shape[0]
            per_n = []
            for h in range(HORIZONS):
                cross = as_t(self.xty[i, h]) - self.n * torch.outer(x_mean[i], y_mean[h])
                if ridge == 0:
                    driver = "gelsd" if gram.device.type == "cpu" else None
                    per_n.append(torch.linalg.lstsq(gram, cross, driver=driver).solution)
                else:
                    rhs = cross + lam * eye if toward_identity else cross
                    per_n.append(torch.linalg.solve(gram + lam * eye, rhs))
            weights.append(torch.stack(per_n))
        return torch.stack(weights).float(), x_mean.float(), y_mean.float()
