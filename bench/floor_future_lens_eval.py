"""The Future Lens evaluation page's floor: the work a first evaluation cannot avoid, bare.

A first evaluation (no cached data, no saved maps) must

1. **collect**: per prefix length, one KV-cached greedy generation of the four labels t+1..t+4
   on the plain HF model, keeping every layer's state at the prefix's last position during the
   prefill and the last block's output at each of the four steps;
2. **fit** the evaluated layers' linear maps h_t^ℓ → last block at t+N for every N (the probe
   fits only the evaluated layers), with each map's relative ridge chosen from the grid on
   held-out training documents (MSE after the final norm) and refitted on the whole training
   split. With fewer training examples than d_model the maps are exact through the dual form
   ``W = I + Xᵀ(XXᵀ + λI)⁻¹(Y − X)`` (shrinkage toward the identity, the probe's default): one
   batched eigendecomposition of the n×n kernels of every layer serves every ridge, N and the
   refit needs one more; with more examples than d_model, the primal form's one batched
   eigendecomposition of XᵀX (the probe's own approach);
3. **decode** the evaluated test rows (direct: the states themselves; linear: the maps'
   predictions) in one batched ``rows @ W_U`` + top-k;
4. **intervene** (when the config evaluates ``fixed`` / ``learned``; :class:`Intervention`): the
   fixed prompt's context prefix run ONCE into a KV cache (learned: BOS + each layer's soft prompt,
   one prefix per layer, as one batch; only the layers with a saved prompt, as the probe skips the
   others with a note), repeated for every row; ONE forward of the context's last position for the
   test rows of every evaluated layer (chunks of whole layers, ≤ 512 rows), each row's state
   written into its own layer's output; then, free-running (the default), the N − 1 cached greedy
   steps of all rows together, or, teacher-forced, the original tokens t+1..t+N−1 fed in that same
   forward; top-k of ``rows @ W_U`` only at the read positions (no logsumexp: the evaluation scores
   hits, not probabilities).

The bigram baseline's counting and the bootstrap intervals are plain CPU bookkeeping and are not
in the floor. The prefix sampling (the probe's own ``sample_windows``) and loading the learned
prompts are data preparation, done outside the timing. :func:`check_floor` compares every quantity
with what the probe computed: a floor that computes something else raises and gives no row.
"""

from __future__ import annotations

import contextlib
import copy
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
from lenslab.probes.future_lens.continuation import MAX_ROWS, layer_chunks
from lenslab.probes.future_lens.data import HORIZONS, FutureLensData, bos_id, build_dataset, sample_windows
from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, _ks, learned_prompts
from lenslab.probes.future_lens.linear import (
    RIDGE_GRID,
    evaluation_linear_path,
    load_linear,
    validation_split,
)
from lenslab.probes.future_lens.prompts import SoftPrompt, embedding_multiplier, fixed_context_ids


@contextlib.contextmanager
def _home(prefix: str) -> Iterator[Path]:
    """A new empty folder as LENSLAB_HOME for the block; the previous home and nothing of it after."""
    before = os.environ.get("LENSLAB_HOME")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["LENSLAB_HOME"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("LENSLAB_HOME", None)
        else:
            os.environ["LENSLAB_HOME"] = before
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def cold_home() -> Iterator[Path]:
    """A fresh LENSLAB_HOME (models linked, no artefacts): the probe collects and fits as on a
    first visit, and the shared artefacts are never read or written."""
    models = lenslab_home() / "models"
    with _home("lenslab-cold-") as folder:
        (folder / "models").symlink_to(models, target_is_directory=True)
        yield folder


@contextlib.contextmanager
def fresh_future_lens() -> Iterator[Path]:
    """A fresh LENSLAB_HOME whose only missing artefacts are the Future Lens ones.

    ``models`` and every other family's artefacts folder link to the current home's (read, never
    written by the families that read them); ``artefacts/future_lens`` starts empty, so an evaluation
    collects and fits as on a first visit (the replications row: its other families keep their stored
    artefacts). The shared Future Lens artefacts are never read or written.
    """
    home = lenslab_home()
    with _home("lenslab-fresh-fl-") as folder:
        (folder / "models").symlink_to(home / "models", target_is_directory=True)
        (folder / "artefacts").mkdir()
        if (home / "artefacts").is_dir():
            for entry in (home / "artefacts").iterdir():
                if entry.name != "future_lens":
                    (folder / "artefacts" / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
        yield folder


@dataclass
class Intervention:
    """The bare work of a prompt intervention (fixed or learned) on the evaluated test states.

    The context's prefix (every position before its last: the fixed prompt's tokens, or BOS + a
    layer's soft prompt) runs ONCE into a KV cache (fixed: once for all layers; learned: one prefix
    per layer, run as one batch), repeated for every row; then ONE forward of the context's last
    position for all rows of all layers (chunks of whole layers, at most ``MAX_ROWS`` rows), each
    row's state written into its own layer's output, and the continuation: free-running, N − 1
    cached greedy steps of all rows together; teacher-forced, the original tokens t+1..t+N−1 fed
    in the same forward. Each read position: ``rows @ W_U`` (the HF head on the kept positions)
    and its top-k.
    """

    hf: torch.nn.Module
    layers: list[int]
    prefix: torch.Tensor  # [1 (fixed) or layer (learned), ctx − 1, d] embedded prefix
    last: torch.Tensor  # [1 or layer, 1, d] the context's last embedded position
    per_layer: bool = False  # learned: each layer its own prefix

    @classmethod
    def fixed(cls, session: ModelSession, hf: torch.nn.Module, layers: list[int]) -> Intervention:
        """The fixed prompt's context (the model's own scaled embeddings) for every layer."""
        context = fixed_context_ids(session).to(hf.lm_head.weight.device)
        with torch.inference_mode():
            embedded = hf.model.embed_tokens(context[None])
        return cls(hf, list(layers), embedded[:, :-1], embedded[:, -1:])

    @classmethod
    def learned(
        cls, session: ModelSession, hf: torch.nn.Module, prompts: dict[int, SoftPrompt]
    ) -> Intervention:
        """BOS + each layer's soft prompt (vectors × multiplier, as the probe scales them)."""
        layers = sorted(prompts)
        device = hf.lm_head.weight.device
        with torch.inference_mode():
            bos = hf.model.embed_tokens(torch.tensor([[bos_id(session)]], device=device))
            soft = torch.stack(
                [
                    prompts[layer].vectors.to(device)
                    * float(prompts[layer].meta.get("multiplier", embedding_multiplier(session)))
                    for layer in layers
                ]
            ).to(bos.dtype)
        prefix = torch.cat([bos.expand(len(layers), -1, -1), soft[:, :-1]], 1)
        return cls(hf, layers, prefix, soft[:, -1:], per_layer=True)

    def topk(
        self, states: dict[int, torch.Tensor], k: int, protocol: str, teacher: torch.Tensor
    ) -> torch.Tensor:
        """Top-k ids ``[layer, row, N, k]`` of every layer's rows ``states[layer]`` ([row, d])."""
        hf, body = self.hf, self.hf.model
        seq = next(iter(states.values())).shape[0]
        shared = not self.per_layer
        out_ids = []
        with torch.inference_mode():
            cache0 = None
            if shared:
                cache0 = hf(inputs_embeds=self.prefix, use_cache=True, logits_to_keep=1).past_key_values
            for chunk in layer_chunks(self.layers, seq, MAX_ROWS):
                rows = len(chunk) * seq
                if shared:
                    cache = copy.deepcopy(cache0)
                    cache.batch_repeat_interleave(rows)  # type: ignore[union-attr]
                    last = self.last.expand(rows, -1, -1)
                else:
                    index = [self.layers.index(layer) for layer in chunk]
                    cache = hf(
                        inputs_embeds=self.prefix[index], use_cache=True, logits_to_keep=1
                    ).past_key_values
                    cache.batch_repeat_interleave(seq)
                    last = self.last[index].repeat_interleave(seq, 0)
                fed = 1
                if protocol == "teacher-forced":
                    last = torch.cat([last, body.embed_tokens(teacher.repeat(len(chunk), 1))], 1)
                    fed = HORIZONS
                handles = [
                    body.layers[layer].register_forward_hook(
                        _writer(slice(g * seq, (g + 1) * seq), states[layer])
                    )
                    for g, layer in enumerate(chunk)
                ]
                try:
                    out = hf(inputs_embeds=last, past_key_values=cache, use_cache=True, logits_to_keep=fed)
                finally:
                    for handle in handles:
                        handle.remove()
                if fed > 1:  # teacher-forced: every N read from the one forward
                    ids = out.logits.float().topk(k, -1).indices  # [rows, N, k]
                else:
                    steps = []
                    for n in range(HORIZONS):
                        steps.append(out.logits[:, -1].float().topk(k, -1).indices)
                        if n + 1 < HORIZONS:
                            out = hf(
                                steps[-1][:, :1],
                                past_key_values=out.past_key_values,
                                use_cache=True,
                                logits_to_keep=1,
                            )
                    ids = torch.stack(steps, 1)
                out_ids.append(ids.reshape(len(chunk), seq, HORIZONS, k).cpu())
        return torch.cat(out_ids)


def _writer(rows: slice, states: torch.Tensor) -> Any:
    """A forward hook writing ``states`` into its block's output at the first fed position of ``rows``."""

    def hook(_module: object, _args: object, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[rows, 0] = states.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


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
        if config.ridge is not None or not config.toward_identity:
            raise ValueError(
                "the floor covers the linear maps with the ridge chosen on validation, shrunk toward "
                "the identity (the default)"
            )
        if config.refit:
            raise ValueError("the floor does not retrain learned prompts (refit)")
        self.session, self.hf, self.config = session, hf, config
        self.layers = config.layer_list(session)
        settings = config.data_settings()
        self.prefix_ids, doc_ids, is_test = sample_windows(session, settings)
        n, d = len(self.prefix_ids), session.d_model
        shell = FutureLensData(
            model_id=session.model_id,
            key=settings.key(session.model_id),
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
        # The prompt interventions, as the probe runs them: fixed on every layer, learned on the
        # layers with a saved prompt (the probe skips the others with a note; so does the floor).
        self.causal: dict[str, Intervention] = {}
        if config.fixed_prompt:
            self.causal["fixed"] = Intervention.fixed(session, hf, self.layers)
        if config.learned_prompt:
            prompts = learned_prompts(session, shell, self.layers, refit=False)
            if prompts:
                self.causal["learned"] = Intervention.learned(session, hf, prompts)

    def kind(self) -> str:
        """The floor's name in the results table."""
        causal = "".join(
            f" + {method} ({len(i.layers)}×{len(self.test)} rows, {self.config.protocol})"
            for method, i in self.causal.items()
        )
        return (
            f"collect {len(self.prefix_ids)} (KV-cached greedy) + {len(self.layers)}×{HORIZONS} "
            f"ridge fits (batched) + decode{causal}"
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
        """Each evaluated layer's and N's map, ridge chosen on validation: (ridge [L, N], W [L, N, d, d]).

        Only the evaluated layers, as the probe fits them (each layer's maps are independent)."""
        grid = torch.tensor(RIDGE_GRID, dtype=torch.float64)
        x_all, y_all = resid[:, self.layers].double(), final.double()  # [n, L, d], [n, N, d]
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
        for i, layer in enumerate(self.layers):
            states = resid[self.test, layer]
            rows.append(states)
            centred = states.double() - x_train[:, layer].mean(0)
            rows.append(
                (torch.einsum("bd,nde->bne", centred, weight[i].double()) + y_mean).float().flatten(0, 1)
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

    def intervene(self, resid: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Top-k ids ``[layer, test, N, k]`` of each prompt intervention (its own layers: learned
        only where a prompt is saved)."""
        teacher = labels[self.test, : HORIZONS - 1].to(self.device)
        out = {}
        for method, intervention in self.causal.items():
            states = {layer: resid[self.test, layer].to(self.device) for layer in intervention.layers}
            out[method] = intervention.topk(states, self.k, self.config.protocol, teacher)
        return out

    def compute(self) -> FloorOutput:
        """All of the floor's work, returning what it computed."""
        labels, resid, final = self.collect()
        ridge, weight = self.fit(resid, final)
        top_ids = self.decode(resid, final, weight)
        top_ids.update(self.intervene(resid, labels))
        return FloorOutput(labels, resid, final, ridge, weight, top_ids)

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
    (relative error < 1e-3) and the evaluated cells' hits at every k: equal for direct and linear; for
    the prompt interventions equal in ≥ 99 % of the (layer, example, N, k) cells (the floor batches
    every layer's rows where the probe may batch otherwise, and a near-tie swapped by another batch
    shape changes that row's later greedy steps), the layers without a learned prompt empty in both.
    Returns a one-line summary.
    """
    session, config = floor.session, floor.config
    with cold_home():
        result = probe.run(session, "", config)
        data = build_dataset(session, config.data_settings())  # the probe's cached collection
        maps = load_linear(session, evaluation_linear_path(session.model_id))
    return compare(floor, floor.compute(), result, data, maps)


def compare(floor: EvalFloor, ours: FloorOutput, result: Any, data: FutureLensData, maps: Any) -> str:
    """``AssertionError`` unless the floor's output ``ours`` equals the probe's (see :func:`check_floor`)."""

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
    layers = [int(x) for x in result.layers]
    assert layers == floor.layers, f"evaluated layers differ: {layers} vs {floor.layers}"
    agreement = []
    for m, method in enumerate(result.methods):
        top = ours.top_ids.get(method)  # [layer, test, N, k] over the layers the method ran at
        ran = floor.causal[method].layers if method in floor.causal else (layers if top is not None else [])
        probe_ran = [i for i, layer in enumerate(layers) if np.isfinite(result.precision[m, i]).all()]
        assert [layers[i] for i in probe_ran] == ran, f"{method}: run at {ran}, the probe at {probe_ran}"
        if not ran:
            continue
        hits = np.stack([(top[..., :k] == labels[None, :, :, None]).any(-1).numpy() for k in ks], -1)
        theirs = result.hits[m][probe_ran]
        if method in floor.causal:
            share = float((hits == theirs).mean())
            assert share >= 0.99, f"{method}: hits agree with the probe's in only {share:.4f} of the cells"
            agreement.append(f"{method} {share:.4f}")
        else:
            assert np.array_equal(hits, theirs), f"{method}: hits differ from the probe's"
    causal = f"; prompt interventions' hits agree in {', '.join(agreement)} of the cells" if agreement else ""
    return (
        f"checked against the probe: labels equal, states {rel(ours.resid, data.resid):.1e} and maps "
        f"{weight_error:.1e} relative error, ridges and the hits of direct and linear × "
        f"{len(floor.layers)} layers × {len(floor.test)} test examples equal{causal}"
    )


def eval_row(
    session: ModelSession, hf: torch.nn.Module, config: FutureLensEvalConfig, repeat: int
) -> tuple[str, str]:
    """The page-latency table's row for ``future_lens_eval`` (cold probe runs) and a note on the check."""
    from bench.bench_pages import measure
    from lenslab.probes import get_probe

    probe = get_probe("future_lens_eval")
    with cold_home():  # the prompts the floor loads are the ones the cold probe sees: none
        floor = EvalFloor(session, hf, config)
    checked = check_floor(floor, probe)  # also the probe's and the floor's warm-up
    wall, cpu = measure({"probe": lambda: cold_probe_run(session, probe, config), "floor": floor.run}, repeat)
    ratio = cpu["probe"] / cpu["floor"]
    row = (
        f"| future_lens_eval (fast config{' + fixed prompt' if config.fixed_prompt else ''}, cold) "
        f"| {config.prefix_tokens} "
        f"| {wall['probe']:.3f} / {cpu['probe']:.3f} "
        f"| {floor.kind()} | {wall['floor']:.3f} / {cpu['floor']:.3f} | {wall['probe'] / wall['floor']:.2f}× "
        f"| {ratio:.2f}× | ≤ 2.0×: {'met' if ratio <= 2.0 else 'missed'} |"
    )
    note = (
        f"`future_lens_eval` runs `tests/fast_configs.py`'s config with the fixed prompt on ({config}) in a "
        f"fresh LENSLAB_HOME each "
        f"time (it collects and fits as on a first visit); its floor is `bench/floor_future_lens_eval.py`, "
        f"{checked}."
    )
    return row, note
