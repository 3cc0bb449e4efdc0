"""The J-lens probe: layer × position grids of J-lens and logit-lens tokens, and the J-gap.

Each state ``h_l[t]`` is read out twice through the final norm and unembedding: directly (the
logit lens) and after transport by the fitted average Jacobian, ``J̄_l @ h_l[t]`` (the J-lens).
For one chosen state the J-gap measures how far this input's own Jacobian is from the average:
‖J − J̄‖_F / ‖J‖_F and the agreement of the top-k tokens of ``J h`` and ``J̄ h``, for the
same-position Jacobian ∂h_final[t]/∂h_l[t] and for the reference estimator's term at ``t``
(Σ_{t' ≥ t} ∂h_final[t']/∂h_l[t], whose average is J̄). Both are the true (not detached)
Jacobians, as J̄ is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.jacobian_lens.artefacts import JacobianLens
from lenslab.probes.jacobian_lens.estimator import instance_jacobians
from lenslab.probes.jacobian_lens.fit import FitSpec, fit_shard, training_documents
from lenslab.probes.plotting import cell_state, label, token_grid
from lenslab.probes.stats import Interval, bootstrap_by_group
from lenslab.progress import NO_PROGRESS, Progress

QUICK_SPEC = FitSpec(seq_len=16, skip_first=4, min_prompts=1, max_prompts=1)
"""Windows of an in-probe quick fit (``auto_fit_prompts``), short enough for a CPU."""
INSTANCES = ("same-position", "summed (reference term)")
GAP_ROW_POSITIONS = 8192
"""Cotangent rows × positions per backward pass of the J-gap: a short prompt's d_model rows in one
pass (each pass replays the graph; fewer, wider passes cost less), ≲ 100 MB per activation."""


@dataclass(frozen=True)
class JacobianLensConfig(Config):
    """Settings of the J-lens probe."""

    k: int = field(default=5, metadata={"help": "top tokens kept per cell", "min": 1, "max": 50})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to read out (empty: all)"})
    gap: bool = field(default=True, metadata={"help": "compute the J-gap at (gap layer, gap position)"})
    gap_layer: int = field(default=-1, metadata={"help": "J-gap layer (-1: the middle layer)", "min": -1})
    gap_position: int = field(default=-1, metadata={"help": "J-gap position (-1: last token)"})
    auto_fit_prompts: int = field(
        default=0,
        metadata={
            "help": "when no lens is saved for the model: fit an unsaved quick one on this many "
            "training documents (0: refuse and ask for a fit)",
            "min": 0,
            "max": 1000,
        },
    )

    def validate(self, session: ModelSession) -> None:
        """Check k and the layers against the model."""
        super().validate(session)
        if self.k > session.d_vocab:
            raise ValueError(f"k={self.k} exceeds the vocabulary size {session.d_vocab}")
        session.check_layers(self.layers)
        if self.gap_layer != -1:
            session.check_layer(self.gap_layer)


@dataclass(frozen=True)
class JacobianLensResult(Result):
    """J-lens and logit-lens top-k tokens per (layer, position), the J-gap and the lens' provenance."""

    probe = "jacobian_lens"
    state_figures = ("jlens_grid", "logit_grid")
    config: JacobianLensConfig
    tokens: list[str]
    layers: Int[np.ndarray, " layer"]
    jlens_ids: Int[np.ndarray, "layer pos k"]
    jlens_probs: Float[np.ndarray, "layer pos k"]
    jlens_tokens: list[list[list[str]]]
    logit_ids: Int[np.ndarray, "layer pos k"]
    logit_probs: Float[np.ndarray, "layer pos k"]
    logit_tokens: list[list[list[str]]]
    final_ids: Int[np.ndarray, " pos"]
    final_tokens: list[str]
    gap_layer: int  # -1 when the J-gap was not computed
    gap_position: int
    gap_rel_frobenius: Float[np.ndarray, " instance"]  # ‖J − J̄‖_F/‖J‖_F, per INSTANCES
    gap_top1_agree: Int[np.ndarray, " instance"]  # 1 when top-1 of J h equals top-1 of J̄ h
    gap_topk_overlap: Float[np.ndarray, " instance"]  # |top-k(J h) ∩ top-k(J̄ h)| / k
    gap_instance_tokens: list[list[str]]  # top-k of J h, per INSTANCES
    gap_mean_tokens: list[str]  # top-k of J̄ h
    lens: str  # how the lens was fitted, deviations from the reference included
    fit_curve: Float[np.ndarray, " prompt"]  # relative change of the running mean per prompt

    def summary(self) -> dict[str, object]:
        """Top-1 agreement of each lens with the model's final prediction, and the J-gap."""
        what = "top-1 = final prediction (all cells of this prompt)"
        out: dict[str, object] = {
            f"J-lens {what}": self._agreement_text(self.jlens_ids),
            f"logit lens {what}": self._agreement_text(self.logit_ids),
            "lens": self.lens,
        }
        if self.gap_layer >= 0:
            for i, name in enumerate(INSTANCES):
                out[f"J-gap {name} at L{self.gap_layer}, pos {self.gap_position}"] = (
                    f"‖J−J̄‖/‖J‖ = {self.gap_rel_frobenius[i]:.3f}, top-{self.config.k} overlap "
                    f"{self.gap_topk_overlap[i]:.2f}, same top-1: {'yes' if self.gap_top1_agree[i] else 'no'}"
                )
        return out

    def agreement(self, ids: Int[np.ndarray, "layer pos k"]) -> Interval:
        """Share of grid cells whose top-1 is the model's final prediction at that position.

        The interval resamples whole positions: the cells of one position share its context and
        target across layers, so they are not independent trials (a Wilson interval over cells
        would be too narrow). ``n`` is the number of positions.
        """
        same = (ids[:, :, 0] == self.final_ids[None]).T.astype(np.float64)  # [pos, layer]
        return bootstrap_by_group(same, np.arange(len(same)), unit="positions")

    def _agreement_text(self, ids: Int[np.ndarray, "layer pos k"]) -> str:
        rate = self.agreement(ids)
        cells = ids.shape[0] * ids.shape[1]
        return f"{rate.text(percent=True)} of {cells} cells; 95% interval: {rate.method} (n = {rate.n})"

    def state_at(self, figure: str, point: dict[str, object]) -> tuple[int, int] | None:
        """A cell of either grid is the state (layer, position)."""
        return cell_state(point, self.layers.tolist()) if figure in self.state_figures else None

    def _grid(self, ids_tokens: list[list[list[str]]], probs: np.ndarray, title: str) -> go.Figure:
        hover = [
            [
                "<br>".join(f"{label(t)} {p:.3f}" for t, p in zip(cell_t, cell_p, strict=True))
                for cell_t, cell_p in zip(row_t, row_p, strict=True)
            ]
            for row_t, row_p in zip(ids_tokens, probs.tolist(), strict=True)
        ]
        return token_grid(
            values=probs[:, :, 0],
            cell_text=[[label(cell[0]) for cell in row] for row in ids_tokens],
            hover=hover,
            x_labels=self.tokens,
            y_labels=[f"L{layer}" for layer in self.layers],
            title=title,
            colorbar="p(top-1)",
        )

    def figures(self) -> dict[str, go.Figure]:
        """The J-lens and logit-lens grids (same layout) and the fit's convergence curve."""
        figs = {
            "jlens_grid": self._grid(
                self.jlens_tokens, self.jlens_probs, "J-lens: top token of J̄_l·h (colour = p)"
            ),
            "logit_grid": self._grid(
                self.logit_tokens, self.logit_probs, "Logit lens: top token of h (colour = p)"
            ),
        }
        figs["convergence"] = convergence_figure(self.fit_curve)
        return figs


DECODE_ROWS = 256
"""Rows per unembedding product of :func:`decode_grids` (262k-token vocabularies: ~270 MB of logits)."""


def decode_grids(
    session: ModelSession,
    lens: JacobianLens,
    layers: list[int],
    states: Float[torch.Tensor, "layer pos d_model"],
    k: int,
    progress: Progress = NO_PROGRESS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k probabilities and ids of both grids: ``(j_probs, j_ids, l_probs, l_ids)``, each [layer, pos, k].

    The J-lens rows ``J̄_l h`` (one batched product over the layers) and the logit-lens rows ``h``
    are decoded together, :data:`DECODE_ROWS` rows per unembedding product, instead of two
    products per layer that each read the whole unembedding for a few rows. Each row's logits are
    the same function of its state (final norm, unembedding, softmax) as decoding it alone.
    """
    with torch.inference_mode():
        jac = lens.jacobians[layers].to(states.device, states.dtype)  # [layer, d, d]
        transported = torch.bmm(states, jac.transpose(1, 2))  # J̄_l h for every state
        rows = torch.cat([transported, states]).flatten(0, 1)  # [2 · layer · pos, d]
        values, ids = [], []
        for start in range(0, rows.shape[0], DECODE_ROWS):
            logits = session.decode_resid(rows[start : start + DECODE_ROWS])
            top = logits.float().softmax(-1).topk(k, dim=-1)
            values.append(top.values)
            ids.append(top.indices)
            progress(min(start + DECODE_ROWS, rows.shape[0]) / rows.shape[0], "decoded the grids")
        shape = (2, len(layers), states.shape[1], k)
        probs, top_ids = torch.cat(values).reshape(shape), torch.cat(ids).reshape(shape)
    return probs[0], top_ids[0], probs[1], top_ids[1]


def convergence_figure(curve: np.ndarray, tol: float | None = None, smoothing: int = 10) -> go.Figure:
    """Relative change of the running mean per prompt (log scale), its moving mean and the tolerance."""
    x = np.arange(1, len(curve) + 1)
    fig = go.Figure(go.Scatter(x=x, y=curve, mode="markers", name="per prompt"))
    if len(curve) >= smoothing:
        kernel = np.ones(smoothing) / smoothing
        smooth = np.convolve(np.nan_to_num(curve, nan=0.0), kernel, mode="valid")
        fig.add_trace(
            go.Scatter(x=x[smoothing - 1 :], y=smooth, mode="lines", name=f"moving mean of {smoothing}")
        )
    if tol is not None:
        fig.add_hline(y=tol, line_dash="dash", annotation_text=f"tol {tol:g}")
    fig.update_layout(
        title="J-lens fit: relative change of the running mean per prompt",
        xaxis_title="prompt",
        yaxis_title="‖J_p − J̄‖ / ((n+1)‖J̄‖), max over layers",
        yaxis_type="log",
        template="plotly_white",
    )
    return fig


def lens_for(
    session: ModelSession, auto_fit_prompts: int = 0, progress: Progress = NO_PROGRESS
) -> JacobianLens:
    """The saved lens of ``session``'s model, or (``auto_fit_prompts`` > 0) an unsaved quick fit."""
    try:
        return JacobianLens.load(session)
    except FileNotFoundError:
        if auto_fit_prompts <= 0:
            raise
    from lenslab.probes.sae.corpus import corpus_texts

    texts = corpus_texts(QUICK_SPEC.corpus)
    docs = training_documents(len(texts))[:auto_fit_prompts]
    spec = FitSpec(
        **{**QUICK_SPEC.__dict__, "min_prompts": auto_fit_prompts, "max_prompts": auto_fit_prompts}
    )
    state = fit_shard(session, docs, spec, texts=texts, progress=progress)
    return JacobianLens.from_state(state)


@register
class JacobianLensProbe(Probe[JacobianLensConfig, JacobianLensResult]):
    """Read every state through the fitted average Jacobian J̄_l, beside the logit lens."""

    name = "jacobian_lens"
    title = "Jacobian lens (J-lens)"
    description = "Each state carried to the last layer by the corpus-average Jacobian, then decoded."
    config_cls = JacobianLensConfig
    result_cls = JacobianLensResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: JacobianLensConfig,
        progress: Progress = NO_PROGRESS,
    ) -> JacobianLensResult:
        """Both grids for ``prompt`` and, when asked, the J-gap at one state."""
        config.validate(session)
        lens = lens_for(
            session, config.auto_fit_prompts, lambda f, m="": progress(0.3 * f, f"quick fit: {m}")
        )
        layers = session.check_layers(config.layers)
        tokens = session.tokenize(prompt)
        names = [session.resid_name(layer) for layer in layers]
        with session.lock:
            run = session.run(tokens, names)
            final_ids = run.logits[0].argmax(-1)
            states = torch.stack([run.activations[name][0] for name in names])  # [layer, pos, d]
            j_probs, j_ids, l_probs, l_ids = decode_grids(
                session, lens, layers, states, config.k, lambda f, m="": progress(0.3 + 0.4 * f, m)
            )
        captured = dict(zip(layers, states, strict=True))
        gap = self._gap(session, tokens, lens, config, progress, captured) if config.gap else None
        j_np = to_numpy(j_ids).astype(np.int64)
        l_np = to_numpy(l_ids).astype(np.int64)
        n = len(INSTANCES)
        gap_layer, gap_position, frob, top1, overlap, inst, mean_tokens = gap or (
            -1,
            -1,
            np.full(n, np.nan),
            np.zeros(n, dtype=np.int64),
            np.full(n, np.nan),
            [[] for _ in range(n)],
            [],
        )
        progress(1.0, "done")
        return JacobianLensResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(tokens[0].tolist()),
            layers=np.asarray(layers, dtype=np.int64),
            jlens_ids=j_np,
            jlens_probs=to_numpy(j_probs).astype(np.float32),
            jlens_tokens=[[session.decode_each(cell) for cell in row] for row in j_np.tolist()],
            logit_ids=l_np,
            logit_probs=to_numpy(l_probs).astype(np.float32),
            logit_tokens=[[session.decode_each(cell) for cell in row] for row in l_np.tolist()],
            final_ids=to_numpy(final_ids).astype(np.int64),
            final_tokens=session.decode_each(final_ids.tolist()),
            gap_layer=int(gap_layer),
            gap_position=int(gap_position) if gap_layer >= 0 else -1,
            gap_rel_frobenius=np.asarray(frob, dtype=np.float64),
            gap_top1_agree=np.asarray(top1, dtype=np.int64),
            gap_topk_overlap=np.asarray(overlap, dtype=np.float64),
            gap_instance_tokens=inst,
            gap_mean_tokens=mean_tokens,
            lens=lens.describe(),
            fit_curve=np.asarray(lens.rel_change, dtype=np.float64),
        )

    @staticmethod
    def _gap(
        session: ModelSession,
        tokens: torch.Tensor,
        lens: JacobianLens,
        config: JacobianLensConfig,
        progress: Progress,
        captured: dict[int, torch.Tensor] | None = None,
    ) -> tuple[int, int, list[float], list[int], list[float], list[list[str]], list[str]]:
        """(layer, position, rel. Frobenius, same top-1, top-k overlap, instance tokens, J̄ tokens).

        ``captured`` maps layers to the states ``[pos, d_model]`` the grids' forward already read;
        the gap layer's state is taken from it when present (no second forward).
        """
        layer = session.n_layers // 2 if config.gap_layer == -1 else session.check_layer(config.gap_layer)
        position = session.check_position(config.gap_position, int(tokens.shape[1]))
        seq = int(tokens.shape[1])
        same, summed = instance_jacobians(
            session,
            tokens,
            layer,
            position,
            dim_batch=max(64, GAP_ROW_POSITIONS // seq),
            progress=lambda f, m="": progress(0.7 + 0.3 * f, m),
        )
        mean = lens.jacobians[layer].double()
        if captured is not None and layer in captured:
            h = captured[layer][position].double()
        else:
            h = session.capture(tokens, [session.resid_name(layer)])[session.resid_name(layer)][
                0, position
            ].double()
        mean_logits = session.decode_resid((mean @ h).to(session.dtype).to(session.device)).float()
        mean_top = mean_logits.topk(config.k).indices
        frob, top1, overlap, inst = [], [], [], []
        for jac in (same, summed):
            norm = float(torch.linalg.matrix_norm(jac))
            frob.append(float(torch.linalg.matrix_norm(jac - mean)) / norm if norm > 0 else math.nan)
            logits = session.decode_resid((jac @ h).to(session.dtype).to(session.device)).float()
            top = logits.topk(config.k).indices
            top1.append(int(top[0] == mean_top[0]))
            overlap.append(len(set(top.tolist()) & set(mean_top.tolist())) / config.k)
            inst.append(session.decode_each(top.tolist()))
        return layer, position, frob, top1, overlap, inst, session.decode_each(mean_top.tolist())


def _state_view(session: ModelSession, ref: StateRef, progress: Progress) -> JacobianLensResult:
    """The J-lens read-out of the state, without the J-gap.

    The gap needs this input's own Jacobian at the state: d_model backward rows through every
    layer after it at the last position, 2 × d_model elsewhere (640 to 1,280 on the embedded model,
    tens of seconds on a CPU), many times what every
    other lens in the inspector costs together. The inspector answers at once and says where the
    gap is computed (the J-lens page, with gap layer and position set to this state).
    """
    config = JacobianLensConfig(k=10, layers=(ref.layer,), gap=False)
    return JacobianLensProbe().run(session, ref.prompt, config, progress)


def _describe(result: JacobianLensResult, ref: StateRef) -> list[str]:
    cell = zip(
        result.jlens_tokens[0][ref.position], result.jlens_probs[0, ref.position].tolist(), strict=True
    )
    lines = ["J-lens tokens: " + ", ".join(f"{t!r} {p:.3f}" for t, p in cell)]
    if result.gap_layer >= 0:
        for i, name in enumerate(INSTANCES):
            lines.append(
                f"J-gap ({name}): ‖J−J̄‖/‖J‖ = {result.gap_rel_frobenius[i]:.3f}, top-{result.config.k} "
                f"overlap {result.gap_topk_overlap[i]:.2f}; J·h reads "
                + ", ".join(map(repr, result.gap_instance_tokens[i][:5]))
            )
    else:
        lines.append(
            f"J-gap not computed here (d_model to 2 × d_model backward rows, tens of seconds on a CPU): "
            f"on the Jacobian lens page set gap layer {ref.layer} and gap position {ref.position}"
        )
    lines.append(result.lens)
    return lines


register_state_view(
    StateView("jacobian_lens", "J-lens (average Jacobian)", _state_view, order=35, describe=_describe)
)
