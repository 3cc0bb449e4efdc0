"""How often the J-lens and the logit lens agree with the model's own prediction, per layer.

On held-out documents (never fitted on: :func:`lenslab.probes.sae.corpus.split_documents`), each
document's first ``seq_len`` tokens are run once; at every position the fit averaged over
(``skip_first … seq_len − 2``) and every layer, the J-lens top-1 (``J̄_l h`` through the final
norm and unembedding) and the logit-lens top-1 (``h``, same decoding) are compared with the
model's top-1 next-token prediction. Rates carry 95% intervals from a bootstrap over documents
(positions of one document are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int

from lenslab.models.session import ModelSession
from lenslab.probes.jacobian_lens.artefacts import JacobianLens
from lenslab.probes.jacobian_lens.estimator import valid_positions
from lenslab.probes.jacobian_lens.fit import document_tokens
from lenslab.probes.stats import bootstrap_by_group, format_interval
from lenslab.progress import NO_PROGRESS, Progress

LENSES = ("J-lens", "logit lens")


@dataclass(frozen=True)
class AgreementResult:
    """Per-layer top-1 agreement with the model's final prediction, with 95% intervals."""

    model_id: str
    layers: Int[np.ndarray, " layer"]
    rate: Float[np.ndarray, "lens layer"]
    ci: Float[np.ndarray, "lens layer 2"]  # bootstrap over documents
    n_documents: int
    n_positions: int
    seq_len: int
    skip_first: int
    lens: str

    def table_markdown(self) -> str:
        """The table as Markdown: layer, J-lens, logit lens (``x [lo, hi]``)."""
        lines = ["| layer | J-lens top-1 = model | logit lens top-1 = model |", "|---|---|---|"]
        for i, layer in enumerate(self.layers.tolist()):
            cells = [
                format_interval(self.rate[j, i], self.ci[j, i, 0], self.ci[j, i, 1], percent=True)
                for j in range(len(LENSES))
            ]
            lines.append(f"| {layer} | {cells[0]} | {cells[1]} |")
        return "\n".join(lines)

    def figure(self) -> go.Figure:
        """Agreement per layer with 95% bands for both lenses."""
        fig = go.Figure()
        x = self.layers.tolist()
        for j, name in enumerate(LENSES):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=self.rate[j],
                    mode="lines+markers",
                    name=name,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": self.ci[j, :, 1] - self.rate[j],
                        "arrayminus": self.rate[j] - self.ci[j, :, 0],
                    },
                )
            )
        fig.update_layout(
            title=(
                f"Top-1 agreement with the model's prediction, held-out text "
                f"({self.n_documents} documents, {self.n_positions} positions; 95% bootstrap CI)"
            ),
            xaxis_title="layer",
            yaxis_title="agreement",
            template="plotly_white",
        )
        return fig


def evaluate_agreement(
    session: ModelSession,
    lens: JacobianLens,
    documents: list[int],
    texts: list[str],
    *,
    seq_len: int,
    skip_first: int,
    progress: Progress = NO_PROGRESS,
) -> AgreementResult:
    """Agreement of both lenses with the model on ``documents`` (indices into ``texts``)."""
    if not documents:
        raise ValueError("evaluate_agreement needs at least one document")
    layers = list(range(session.n_layers))
    names = [session.resid_name(layer) for layer in layers]
    hits: list[np.ndarray] = []  # [lens, layer, pos] per document
    groups: list[int] = []
    for i, doc in enumerate(documents):
        tokens = document_tokens(session, texts[doc], seq_len)
        if tokens.shape[1] - 1 <= skip_first:
            continue
        at = valid_positions(int(tokens.shape[1]), skip_first)
        with session.lock, torch.inference_mode():
            run = session.run(tokens, names)
            final = run.logits[0, at].argmax(-1)
            doc_hits = np.zeros((len(LENSES), len(layers), len(at)), dtype=bool)
            for layer in layers:
                h = run.activations[names[layer]][0, at]
                doc_hits[0, layer] = to_bool(lens.logits(session, h, layer).argmax(-1) == final)
                doc_hits[1, layer] = to_bool(session.decode_resid(h).argmax(-1) == final)
        hits.append(doc_hits)
        groups.extend([doc] * len(at))
        progress((i + 1) / len(documents), f"document {i + 1}/{len(documents)}")
    if not hits:
        raise ValueError("no held-out document is long enough for one valid position")
    allhits = np.concatenate(hits, axis=-1)  # [lens, layer, position]
    group_arr = np.asarray(groups)
    rate = allhits.mean(-1)
    ci = np.zeros((*rate.shape, 2))
    for j in range(len(LENSES)):
        for layer in layers:
            interval = bootstrap_by_group(allhits[j, layer].astype(float), group_arr, unit="documents")
            ci[j, layer] = (interval.low, interval.high)
    return AgreementResult(
        model_id=session.model_id,
        layers=np.asarray(layers, dtype=np.int64),
        rate=rate,
        ci=ci,
        n_documents=len(hits),
        n_positions=int(allhits.shape[-1]),
        seq_len=seq_len,
        skip_first=skip_first,
        lens=lens.describe(),
    )


def to_bool(mask: torch.Tensor) -> np.ndarray:
    """A boolean tensor as a numpy array (CPU)."""
    return mask.detach().cpu().numpy().astype(bool)
