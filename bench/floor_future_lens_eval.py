"""The Future Lens evaluation page's floor: the work a first evaluation cannot avoid, bare.

A first evaluation (no cached data, no saved maps) must

1. **collect**: per prefix length, one KV-cached greedy generation of the four labels t+1..t+4
   on the plain HF model, keeping every layer's state at the prefix's last position during the
   prefill and the last block's output at each of the four steps;
2. **fit** the linear maps h_t^ℓ → last block at t+N for every layer and N, with each map's
   relative ridge chosen from the grid on held-out training documents (MSE after the final norm)
   and refitted on the whole training split. With fewer training examples than d_model the maps
   are exact through the dual form ``W = I + Xᵀ(XXᵀ + λI)⁻¹(Y − X)`` (shrinkage toward the
   identity, the probe's default): one batched eigendecomposition of the n×n kernels of every
   layer serves every ridge, N and the refit needs one more; with more examples than d_model,
   the primal form's one batched eigendecomposition of XᵀX (the probe's own approach);
3. **decode** the evaluated test rows (direct: the states themselves; linear: the maps'
   predictions) in one batched ``rows @ W_U`` + top-k.

The bigram baseline's counting and the bootstrap intervals are plain CPU bookkeeping and are not
in the floor. The prefix sampling (the probe's own ``sample_windows``) is data preparation, done
outside the timing. :func:`check_floor` compares every quantity with what the probe computed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenslab.models import ModelSession
from lenslab.models.paths import lenslab_home
from lenslab.probes.future_lens.data import HORIZONS, FutureLensData, build_dataset, sample_windows
from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, _ks
from lenslab.probes.future_lens.linear import RIDGE_GRID, load_linear, validation_split


@contextlib.contextmanager
def cold_home() -> Iterator[Path]:
    """A fresh LENSLAB_HOME (models linked, no artefacts): the probe collects and fits as on a
    first visit, and the shared artefacts are never read or written."""
    before = os.environ.get("LENSLAB_HOME")
    models = lenslab_home() / "models"
    folder = Path(tempfile.mkdtemp(prefix="lenslab-cold-"))
    (folder / "models").symlink_to(models, target_is_directory=True)
    os.environ["LENSLAB_HOME"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("LENSLAB_HOME", None)
        else:
            os.environ["LENSLAB_HOME"] = before
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class FloorOutput:
    """What the floor computed (compared with the probe's numbers by :func:`check_floor`)."""

    labels: torch.Tensor  # [example, horizon]
    resid: torch.Tensor  # [example, layer, d_model]
    final: torch.Tensor  # [example, horizon, d_model]
    ridge: torch.Tensor  # [layer, horizon] chosen relative ridge
    weight: torch.Tensor  # [layer, horizon, d_model, d_model]
    top_ids: dict[str, torch.Tensor]  # method → [test example, horizon, k] at the evaluated layers


class EvalFloor:
    """The floor of ``future_lens_eval`` at ``config`` on the plain HF model ``hf``."""

    def __init__(self, session: ModelSession, hf: torch.nn.Module, config: FutureLensEvalConfig) -> None:
        if (
            config.fixed_prompt
            or config.learned_prompt
            or config.ridge is not None
            or not config.toward_identity
        ):
            raise ValueError(
                "the floor covers direct + linear with the ridge chosen on validation, shrunk toward "
                "the identity (the fast config); fixed / learned prompts are not in it"
            )
        self.session, self.hf, self.config = session, hf, config
        self.layers = config.layer_list(session)
        settings = config.data_settings()
        self.prefix_ids, doc_ids, is_test = sample_windows(session, settings)
        n, d = len(self.prefix_ids), session.d_model
        shell = FutureLensData(
            model_id=session.model_id,
            key="",
            settings=settings,
            prefix_ids=self.prefix_ids,
            doc_ids=doc_ids,
            is_test=is_test,
            labels=np.zeros((n, HORIZONS), dtype=np.int64),
            resid=np.zeros((n, 1, d), dtype=np.float32),
            final=np.zeros((n, HORIZONS, d), dtype=np.float32),
        )
        self.train, self.test = shell.split(test=False), shell.split(test=True)
        self.fit_rows, self.val_rows = validation_split(shell)
        self.k = max(_ks(config.k))
        self.device = hf.lm_head.weight.device

    def kind(self) -> str:
        """The floor's name in the results table."""
        return (
            f"collect {len(self.prefix_ids)} (KV-cached greedy) + {self.session.n_layers}×{HORIZONS} "
            f"ridge fits (batched) + decode"
        )

    # ------------------------------------------------------------------------------ the work
    def collect(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Labels, every layer's state at t and the last block's output at t+N (as the probe keeps them)."""
        body, n = self.hf.model, len(self.prefix_ids)
        n_layers, d = len(body.layers), self.session.d_model
        labels = torch.zeros(n, HORIZONS, dtype=torch.long)
        resid = torch.zeros(n, n_layers, d)
        final = torch.zeros(n, HORIZONS, d)
        kept: dict[int, torch.Tensor] = {}
        steps: list[torch.Tensor] = []
        prefill = [True]

        def keeper(index: int) -> Any:
            def keep(_module: object, _args: object, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                if prefill[0]:
                    kept[index] = hidden[:, -1]
                if index == n_layers - 1:
                    steps.append(hidden[:, -1])

            return keep

        handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(body.layers)]
        lengths = (self.prefix_ids >= 0).sum(1)
        try:
            with torch.inference_mode():
                for length in np.unique(lengths):
                    rows = np.flatnonzero(lengths == length)  # ≤ the probe's batch of 32 here
                    tokens = torch.as_tensor(self.prefix_ids[rows, :length], device=self.device)
                    prefill[0], steps[:] = True, []
                    out = self.hf(tokens, use_cache=True, logits_to_keep=1)
                    prefill[0] = False
                    chosen = [out.logits[:, -1].float().argmax(-1)]
                    for _ in range(HORIZONS - 1):
                        out = self.hf(
                            chosen[-1][:, None],
                            past_key_values=out.past_key_values,
                            use_cache=True,
                            logits_to_keep=1,
                        )
                        chosen.append(out.logits[:, -1].float().argmax(-1))
                    labels[rows] = torch.stack(chosen, 1).cpu()
                    resid[rows] = torch.stack([kept[i] for i in range(n_layers)], 1).float().cpu()
                    final[rows] = torch.stack(steps, 1).float().cpu()
        finally:
            for handle in handles:
                handle.remove()
        return labels, resid, final

    def fit(self, resid: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's and N's map with its ridge chosen on validation: (ridge [L, N], W [L, N, d, d])."""
        grid = torch.tensor(RIDGE_GRID, dtype=torch.float64)
        x_all, y_all = resid.double(), final.double()  # [n, L, d], [n, N, d]
        norm = self.hf.model.norm
        with torch.inference_mode():
            if len(self.val_rows):
                mse = self._validation_mse(x_all, y_all, grid, norm)  # [L, N, grid]
                ridge = grid[mse.argmin(-1)]
            else:
                ridge = torch.full(
                    (x_all.shape[1], HORIZONS), RIDGE_GRID[len(RIDGE_GRID) // 2], dtype=torch.float64
                )
            weight = self._maps(x_all[self.train], y_all[self.train], ridge)
        return ridge, weight.float()

    def _validation_mse(
        self, x_all: torch.Tensor, y_all: torch.Tensor, grid: torch.Tensor, norm: torch.nn.Module
    ) -> torch.Tensor:
        """Validation MSE after the final norm of every (layer, N, ridge) map fitted on the fit rows."""
        x, y = x_all[self.fit_rows].transpose(0, 1), y_all[self.fit_rows]  # [L, n, d], [n, N, d]
        x_mean, y_mean = x.mean(1, keepdim=True), y.mean(0)
        xc, yc = x - x_mean, y - y_mean  # [L, n, d], [n, N, d]
        kernel = xc @ xc.transpose(1, 2)  # [L, n, n]
        values, vectors = torch.linalg.eigh(kernel)  # one batched eigendecomposition
        scale = kernel.diagonal(dim1=1, dim2=2).sum(-1) / x.shape[-1]  # trace(XᵀX)/d per layer
        lam = grid[None] * scale[:, None]  # [L, grid]
        xv = x_all[self.val_rows].transpose(0, 1) - x_mean  # [L, v, d]
        cross = xv @ xc.transpose(1, 2) @ vectors  # [L, v, n]: Xv Xᵀ U
        resid_y = yc[None] - xc[:, :, None]  # [L, n, N, d]: Y − X, the dual form's target
        ut_r = torch.einsum("lnm,lnhd->lmhd", vectors, resid_y)  # Uᵀ (Y − X)
        inverse = 1.0 / (values[:, None] + lam[..., None])  # [L, grid, n]
        pred = xv[:, None, :, None] + torch.einsum("lvm,lgm,lmhd->lgvhd", cross, inverse, ut_r)
        pred = pred + y_mean[None, None, None]  # [L, grid, v, N, d]
        target = y_all[self.val_rows]  # [v, N, d]
        dtype = norm.weight.dtype
        error = norm(pred.to(dtype)).double() - norm(target.to(dtype)).double()[None, None]
        return error.pow(2).mean((2, 4)).permute(0, 2, 1)  # [L, N, grid]

    def _maps(self, x: torch.Tensor, y: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
        """The maps refitted on every training row: W = I + Xᵀ(XXᵀ + λI)⁻¹(Y − X) per layer and N."""
        x = x.transpose(0, 1)  # [L, n, d]
        n, d = x.shape[1], x.shape[2]
        xc, yc = x - x.mean(1, keepdim=True), y - y.mean(0)  # [L, n, d], [n, N, d]
        if n >= d:  # the primal form is the cheaper one: one batched eigendecomposition of XᵀX
            gram = xc.transpose(1, 2) @ xc
            values, vectors = torch.linalg.eigh(gram)
            lam = ridge * (gram.diagonal(dim1=1, dim2=2).sum(-1) / d)[:, None]  # [L, N]
            rhs = torch.einsum("lnd,nhe->lhde", xc, yc) + lam[..., None, None] * torch.eye(d, dtype=x.dtype)
            inner = vectors.transpose(1, 2)[:, None] @ rhs / (values[:, None, :, None] + lam[..., None, None])
            return vectors[:, None] @ inner
        kernel = xc @ xc.transpose(1, 2)
        values, vectors = torch.linalg.eigh(kernel)
        lam = ridge * (kernel.diagonal(dim1=1, dim2=2).sum(-1) / d)[:, None]  # [L, N]
        ut_r = torch.einsum("lnm,lnhd->lmhd", vectors, yc[None] - xc[:, :, None])  # [L, n, N, d]
        coef = vectors[:, None] @ (
            ut_r.permute(0, 2, 1, 3) / (values[:, None, :, None] + lam[..., None, None])
        )
        return torch.eye(d, dtype=x.dtype) + xc.transpose(1, 2)[:, None] @ coef  # [L, N, d, d]

    def decode(
        self, resid: torch.Tensor, final: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Top-k of the evaluated test rows, direct and linear, through one batched unembedding."""
        x_train = resid[self.train].double()
        y_mean = final[self.train].double().mean(0)  # [N, d]
        rows, n_test = [], len(self.test)
        for layer in self.layers:
            states = resid[self.test, layer]
            rows.append(states)
            centred = states.double() - x_train[:, layer].mean(0)
            rows.append(
                (torch.einsum("bd,nde->bne", centred, weight[layer].double()) + y_mean).float().flatten(0, 1)
            )
        w_u = self.hf.lm_head.weight
        with torch.inference_mode():
            stacked = self.hf.model.norm(torch.cat(rows).to(self.device, w_u.dtype))
            top = (stacked @ w_u.T).topk(self.k, -1).indices.cpu()
        out: dict[str, list[torch.Tensor]] = {"direct": [], "linear": []}
        start = 0
        for _ in self.layers:
            out["direct"].append(top[start : start + n_test, None].expand(-1, HORIZONS, -1))
            start += n_test
            out["linear"].append(top[start : start + n_test * HORIZONS].reshape(n_test, HORIZONS, -1))
            start += n_test * HORIZONS
        return {method: torch.stack(parts) for method, parts in out.items()}  # [layer, test, N, k]

    def compute(self) -> FloorOutput:
        """All of the floor's work, returning what it computed."""
        labels, resid, final = self.collect()
        ridge, weight = self.fit(resid, final)
        return FloorOutput(labels, resid, final, ridge, weight, self.decode(resid, final, weight))

    def run(self) -> None:
        """The timed call."""
        self.compute()


def cold_probe_run(session: ModelSession, probe: Any, config: FutureLensEvalConfig) -> Any:
    """The probe as on a first visit: collecting and fitting in a fresh home (shared artefacts untouched)."""
    with cold_home():
        return probe.run(session, "", config)


def check_floor(floor: EvalFloor, probe: Any) -> str:
    """Run the probe cold and the floor once; ``AssertionError`` unless they computed the same numbers.

    Compared: the greedy labels (equal), every layer's states and the last block's outputs (relative
    error < 1e-3: HF eager here, the session's model there), each map's chosen ridge (equal), the maps
    (relative error < 1e-3) and the evaluated cells' hits at every k (equal). Returns a one-line summary.
    """
    session, config = floor.session, floor.config
    with cold_home():
        result = probe.run(session, "", config)
        data = build_dataset(session, config.data_settings())  # the probe's cached collection
        maps = load_linear(session)
    ours = floor.compute()

    def rel(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
        b = torch.as_tensor(b, dtype=torch.float64)
        return float((a.double() - b).norm() / b.norm())

    assert maps is not None, "the probe saved no linear maps"
    assert torch.equal(ours.labels, torch.as_tensor(data.labels)), "greedy labels differ"
    assert rel(ours.resid, data.resid) < 1e-3, f"states differ: {rel(ours.resid, data.resid):.2e}"
    assert rel(ours.final, data.final) < 1e-3, f"last-block outputs differ: {rel(ours.final, data.final):.2e}"
    chosen = torch.as_tensor(maps.meta["ridge_chosen"], dtype=torch.float64)
    assert torch.equal(ours.ridge, chosen), (
        f"chosen ridges differ: {ours.ridge.tolist()} vs {chosen.tolist()}"
    )
    weight_error = rel(ours.weight, maps.weight.cpu())
    assert weight_error < 1e-3, f"linear maps differ: {weight_error:.2e}"
    labels = torch.as_tensor(data.labels[floor.test])
    ks = [int(k) for k in result.ks]
    for m, method in enumerate(result.methods):
        top = ours.top_ids[method]  # [layer, test, N, k]
        hits = np.stack([(top[..., :k] == labels[None, :, :, None]).any(-1).numpy() for k in ks], -1)
        assert np.array_equal(hits, result.hits[m]), f"{method}: hits differ from the probe's"
    return (
        f"checked against the probe: labels equal, states {rel(ours.resid, data.resid):.1e} and maps "
        f"{weight_error:.1e} relative error, ridges and the hits of {len(result.methods)} methods × "
        f"{len(floor.layers)} layers × {len(floor.test)} test examples equal"
    )


def eval_row(
    session: ModelSession, hf: torch.nn.Module, config: FutureLensEvalConfig, repeat: int
) -> tuple[str, str]:
    """The page-latency table's row for ``future_lens_eval`` (cold probe runs) and a note on the check."""
    from bench.bench_pages import measure
    from lenslab.probes import get_probe

    probe = get_probe("future_lens_eval")
    floor = EvalFloor(session, hf, config)
    checked = check_floor(floor, probe)  # also the probe's and the floor's warm-up
    wall, cpu = measure({"probe": lambda: cold_probe_run(session, probe, config), "floor": floor.run}, repeat)
    ratio = cpu["probe"] / cpu["floor"]
    row = (
        f"| future_lens_eval (fast config, cold) | {config.prefix_tokens} "
        f"| {wall['probe']:.3f} / {cpu['probe']:.3f} "
        f"| {floor.kind()} | {wall['floor']:.3f} / {cpu['floor']:.3f} | {wall['probe'] / wall['floor']:.2f}× "
        f"| {ratio:.2f}× | ≤ 2.0×: {'met' if ratio <= 2.0 else 'missed'} |"
    )
    note = (
        f"`future_lens_eval` runs `tests/fast_configs.py`'s config ({config}) in a fresh LENSLAB_HOME each "
        f"time (it collects and fits as on a first visit); its floor is `bench/floor_future_lens_eval.py`, "
        f"{checked}."
    )
    return row, note
