"""SAE features: which sparse-autoencoder features fire on each token, and what each feature means.

Two probes share this module:

- ``sae_features`` (per prompt): the SAE encodes the activations at its hook point for every
  token; the result keeps each token's top features, a token × feature heatmap of the features
  that matter most on this prompt, and the SAE's quality on this prompt — L0, reconstruction
  MSE / explained variance, and next-token CE loss clean vs. with the SAE spliced in vs. with the
  activation zeroed (CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)). The BOS position
  is left out of every metric and never spliced: its activation is an outlier SAEs don't model.
- ``sae_feature`` (feature page, Neuronpedia / SAEDashboard style): top-activating corpus
  contexts with the activating token highlighted, examples from activation quantiles, the
  activation histogram, firing frequency and top/bottom logit effects (W_dec[f] read through the
  final norm's weight and W_U: ``session.decode_direction``). It reads
  dashboards built for all features in one streaming pass (``probes/sae/dashboards.py``) and
  cached per (model, SAE, corpus).

SAEs come from ``probes/sae/loading.py`` (trained here, on disk, or sae-lens' registry); the
shipped one is trained during set-up by :func:`prepare_default_artefacts`.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register, to_numpy
from lenslab.probes.inspector import StateRef, StateView, register_state_view
from lenslab.probes.plotting import label, unique_labels
from lenslab.probes.sae.corpus import PYTHON_DOCS, SUBSETS
from lenslab.probes.sae.dashboards import DashboardSettings, get_dashboards, logit_effects, quantile_groups
from lenslab.probes.sae.evaluation import splice_hook, zero_hook
from lenslab.probes.sae.loading import DEFAULT_SAE, LoadedSAE, load_sae
from lenslab.probes.sae.training import SAETrainingConfig, ensure_trained
from lenslab.progress import NO_PROGRESS, Progress

DEFAULT_TRAINING = SAETrainingConfig(name=DEFAULT_SAE, eval_windows=32)
"""The shipped SAE: TopK, 2048 features, k=32, on ``blocks.6.hook_out`` of the embedded model.

Its held-out evaluation reads 32 windows from 32 documents (2,016 tokens): the full-vocabulary
forwards per window (clean and SAE-spliced; the two ablations need one window each, see
``evaluation.evaluate_sae``) were the largest cost of set-up, and 64
windows only narrowed intervals that are already tight (explained variance 0.905 [0.900, 0.910],
CE recovered 0.967 [0.960, 0.974] on 64); the SAE itself does not depend on this setting."""


def prepare_default_artefacts(session: ModelSession, progress: Progress = NO_PROGRESS) -> LoadedSAE:
    """Train (once; idempotent) the shipped SAE for ``session``'s model and build its dashboards.

    Seeded, so repeated set-ups give the same SAE; an existing SAE trained with the same config
    is reused, and dashboards are cached on disk.
    """
    training = DEFAULT_TRAINING
    if training.layer >= session.n_layers:
        training = training.replace(layer=session.n_layers // 3)  # type: ignore[assignment]
    loaded = ensure_trained(session, training, lambda f, m="": progress(0.8 * f, m))  # type: ignore[arg-type]
    get_dashboards(session, loaded, DashboardSettings(), lambda f, m="": progress(0.8 + 0.2 * f, m))
    progress(1.0, "default SAE ready")
    return loaded


# --------------------------------------------------------------------------------- per prompt
@dataclass(frozen=True)
class SAEFeaturesConfig(Config):
    """Settings of the per-prompt SAE view."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "'default', 'trained:<name>', 'pretrained:<release>/<sae_id>' or an SAE folder"},
    )
    k: int = field(default=5, metadata={"help": "top features kept per token", "min": 1, "max": 64})
    n_heatmap: int = field(
        default=24, metadata={"help": "features shown in the heatmap", "min": 1, "max": 200}
    )

    def validate(self, session: ModelSession) -> None:
        """Check the numbers (the SAE itself is checked when loaded)."""
        super().validate(session)
        if not self.sae.strip():
            raise ValueError("choose an SAE ('default' is the shipped one)")


@dataclass(frozen=True)
class SAEFeaturesResult(Result):
    """Per-token SAE features and the SAE's reconstruction quality on one prompt."""

    probe = "sae_features"
    config: SAEFeaturesConfig
    sae_label: str
    hook_name: str
    d_sae: int
    tokens: list[str]
    top_ids: Int[np.ndarray, "pos k"]  # row 0 (BOS) is left at -1
    top_values: Float[np.ndarray, "pos k"]
    heatmap_ids: Int[np.ndarray, " feature"]
    heatmap: Float[np.ndarray, "pos feature"]
    l0: Float[np.ndarray, " pos"]
    mse: float
    explained_variance: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    seconds: float

    def summary(self) -> dict[str, object]:
        """SAE quality on this prompt."""
        body = self.l0[1:]
        if self.l0_constant():
            return {
                "L0": f"{body[0]:.0f} on every token (a TopK SAE: no per-token chart)",
                "explained variance": self.explained_variance,
                "CE clean → SAE": f"{self.ce_clean:.3f} → {self.ce_sae:.3f}",
                "CE recovered": self.ce_recovered,
            }
        return {
            "mean L0": float(body.mean()) if len(body) else 0.0,
            "explained variance": self.explained_variance,
            "CE clean → SAE": f"{self.ce_clean:.3f} → {self.ce_sae:.3f}",
            "CE recovered": self.ce_recovered,
        }

    def l0_constant(self) -> bool:
        """Whether every token after BOS has the same L0 (a TopK SAE): its chart would say nothing."""
        body = self.l0[1:]
        return len(body) > 0 and bool(np.all(body == body[0]))

    def token_features(self, position: int) -> list[tuple[int, float]]:
        """(feature, activation) pairs of the top features at ``position``, strongest first."""
        pos = ModelSession.check_position(position, len(self.tokens))
        return [
            (int(f), float(v)) for f, v in zip(self.top_ids[pos], self.top_values[pos], strict=True) if f >= 0
        ]

    def token_figure(self, position: int) -> go.Figure:
        """Bar chart of the top features at one token."""
        pos = ModelSession.check_position(position, len(self.tokens))
        pairs = self.token_features(pos)
        fig = go.Figure(go.Bar(x=[v for _, v in pairs], y=[f"f{f}" for f, _ in pairs], orientation="h"))
        fig.update_layout(
            title=f"Top features at position {pos} ({label(self.tokens[pos])})",
            xaxis_title="activation",
            yaxis={"title": "feature", "autorange": "reversed"},
            template="plotly_white",
            height=max(260, 40 * len(pairs) + 120),
        )
        return fig

    def figures(self) -> dict[str, go.Figure]:
        """Token × feature heatmap, L0 per token, and the last token's top features."""
        ids = [int(f) for f in self.heatmap_ids]
        hover = [
            [f"{label(tok)} · f{f}: {self.heatmap[p, j]:.3g}" for j, f in enumerate(ids)]
            for p, tok in enumerate(self.tokens)
        ]
        heat = go.Figure(
            go.Heatmap(
                z=self.heatmap.T,
                x=unique_labels(self.tokens),
                y=[f"f{f}" for f in ids],
                customdata=np.array(hover, dtype=object).T.tolist(),
                hovertemplate="%{customdata}<extra></extra>",
                colorscale="Blues",
                colorbar={"title": "activation"},
            )
        )
        heat.update_layout(
            title=f"SAE feature activations per token ({len(ids)} strongest features on this prompt)",
            xaxis={"title": "position · token", "tickangle": -45},
            yaxis={"title": "feature", "autorange": "reversed"},
            template="plotly_white",
            height=max(320, 18 * len(ids) + 180),
        )
        l0 = go.Figure(go.Bar(x=unique_labels(self.tokens), y=self.l0))
        l0.update_layout(
            title="Active features per token (L0)",
            xaxis_tickangle=-45,
            yaxis_title="L0",
            template="plotly_white",
        )
        if self.l0_constant():  # omitted: the summary says "L0 k on every token"
            return {"heatmap": heat, "last_token": self.token_figure(-1)}
        return {"heatmap": heat, "l0": l0, "last_token": self.token_figure(-1)}


@register
class SAEFeatures(Probe[SAEFeaturesConfig, SAEFeaturesResult]):
    """SAE features per token of a prompt, with the SAE's reconstruction quality."""

    name = "sae_features"
    title = "SAE features"
    description = "Sparse-autoencoder features per token, and how well the SAE reconstructs this prompt."
    config_cls = SAEFeaturesConfig
    result_cls = SAEFeaturesResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SAEFeaturesConfig,
        progress: Progress = NO_PROGRESS,
        *,
        loaded: LoadedSAE | None = None,
    ) -> SAEFeaturesResult:
        """Encode every token of ``prompt``; ``loaded`` skips loading ``config.sae`` again."""
        config.validate(session)
        progress(0.0, "loading the SAE")
        loaded = loaded or load_sae(session, config.sae)
        tokens = session.tokenize(prompt)
        started = time.perf_counter()
        progress(0.2, "forward pass")
        with session.lock:
            run = session.run(tokens, [loaded.hook_name])
            act = run.activations[loaded.hook_name][0].float()
            with torch.inference_mode():
                feats = loaded.encode(act)
                recon = loaded.decode(feats)
            progress(0.5, "CE with the SAE spliced in and with the activation zeroed")
            splice, zero = splice_hook(loaded), zero_hook()

            def counterfactuals(activation: torch.Tensor, hook: Any) -> torch.Tensor:
                """Row 0 with the SAE spliced in, row 1 zeroed: one forward serves both CEs."""
                return torch.cat([splice(activation[:1], hook), zero(activation[1:], hook)])

            both = session.logits(tokens.expand(2, -1), [(loaded.hook_name, counterfactuals)])
            logits_sae, logits_zero = both[:1], both[1:]
        seconds = time.perf_counter() - started
        ce = [_mean_ce(logits, tokens) for logits in (run.logits, logits_sae, logits_zero)]
        body, body_recon = act[1:], recon[1:]
        sq_err = float(((body_recon - body) ** 2).sum()) if len(body) else 0.0
        variance = float(((body - body.mean(0)) ** 2).sum()) if len(body) > 1 else float("nan")
        k = min(config.k, loaded.d_sae)
        values, ids = feats.topk(k, dim=-1)
        ids = torch.where(values > 0, ids, torch.full_like(ids, -1))
        ids[0] = -1
        values = torch.where(ids >= 0, values, torch.zeros_like(values))
        strength = feats[1:].max(0).values if len(feats) > 1 else feats.max(0).values
        n_heat = min(config.n_heatmap, loaded.d_sae)
        heat_ids = strength.topk(n_heat).indices
        heat_ids = heat_ids[strength[heat_ids] > 0] if bool((strength[heat_ids] > 0).any()) else heat_ids[:1]
        heatmap = feats[:, heat_ids].clone()
        heatmap[0] = 0.0
        progress(1.0, "done")
        ce_clean, ce_sae, ce_zero = ce
        return SAEFeaturesResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            sae_label=loaded.label,
            hook_name=loaded.hook_name,
            d_sae=loaded.d_sae,
            tokens=session.decode_each(tokens[0].tolist()),
            top_ids=to_numpy(ids).astype(np.int64),
            top_values=to_numpy(values).astype(np.float32),
            heatmap_ids=to_numpy(heat_ids).astype(np.int64),
            heatmap=to_numpy(heatmap).astype(np.float32),
            l0=to_numpy((feats > 0).sum(-1)).astype(np.float32)
            * np.r_[0.0, np.ones(len(feats) - 1)].astype(np.float32),
            mse=sq_err / max(body.numel(), 1),
            explained_variance=1.0 - sq_err / variance
            if variance == variance and variance > 0
            else float("nan"),
            ce_clean=ce_clean,
            ce_sae=ce_sae,
            ce_zero=ce_zero,
            ce_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
            seconds=seconds,
        )


def _mean_ce(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean next-token CE over positions 1..n-2 (predictions made after BOS)."""
    if tokens.shape[1] < 3:
        return float("nan")
    logprobs = logits[0, 1:-1].float().log_softmax(-1)
    return float(-logprobs.gather(-1, tokens[0, 2:, None]).mean())


# ------------------------------------------------------------------------------- feature page
@dataclass(frozen=True)
class SAEFeatureConfig(Config):
    """Which feature to show, and the corpus its dashboard is built from."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "'default', 'trained:<name>', 'pretrained:<release>/<sae_id>' or an SAE folder"},
    )
    feature: int = field(default=0, metadata={"help": "feature index", "min": 0})
    corpus: str = field(default=PYTHON_DOCS, metadata={"help": "'python-docs' or a .txt/.jsonl file"})
    documents: str = field(
        default="held-out",
        metadata={"help": "corpus documents scanned (held-out: never trained on)", "choices": SUBSETS},
    )
    n_seq: int = field(default=256, metadata={"help": "corpus windows scanned", "min": 1, "max": 100_000})
    context_size: int = field(default=64, metadata={"help": "tokens per window", "min": 4, "max": 1024})
    n_top: int = field(default=10, metadata={"help": "top contexts shown", "min": 1, "max": 20})
    window: int = field(default=12, metadata={"help": "tokens of context each side", "min": 1, "max": 64})


@dataclass(frozen=True)
class FeatureContext:
    """One corpus context: tokens around the activating one (``focus`` indexes into ``tokens``)."""

    tokens: list[str]
    focus: int
    value: float


@dataclass(frozen=True)
class SAEFeatureResult(Result):
    """A feature's dashboard: contexts, quantile examples, histogram, frequency, logit effects."""

    probe = "sae_feature"
    config: SAEFeatureConfig
    sae_label: str
    feature: int
    n_tokens: int
    frequency: float
    mean_activation: float
    max_activation: float
    top_contexts: list[FeatureContext]
    quantile_labels: list[str]
    quantile_contexts: list[list[FeatureContext]]
    hist_edges: Float[np.ndarray, " edge"]
    hist_counts: Int[np.ndarray, " bin"]
    logit_top: list[str]
    logit_top_values: Float[np.ndarray, " k"]
    logit_bottom: list[str]
    logit_bottom_values: Float[np.ndarray, " k"]

    def summary(self) -> dict[str, object]:
        """Firing frequency and activation scale."""
        return {
            "feature": self.feature,
            "firing frequency": self.frequency,
            "max activation": self.max_activation,
            "mean when firing": self.mean_activation,
        }

    @staticmethod
    def context_html(context: FeatureContext) -> str:
        """The context as escaped HTML with the activating token highlighted."""
        parts = []
        for i, token in enumerate(context.tokens):
            text = html.escape(token.replace("\n", "⏎"))
            if i == context.focus:
                text = f'<span style="background:#fdd835;font-weight:bold">{text}</span>'
            parts.append(text)
        return "".join(parts)

    def figures(self) -> dict[str, go.Figure]:
        """Activation histogram, logit effects and the top contexts as a table."""
        nonzero = np.nonzero(self.hist_counts)[0]
        lo, hi = (int(nonzero.min()), int(nonzero.max()) + 1) if nonzero.size else (0, len(self.hist_counts))
        centers = np.sqrt(self.hist_edges[lo:hi] * self.hist_edges[lo + 1 : hi + 1])
        hist = go.Figure(go.Bar(x=centers, y=self.hist_counts[lo:hi]))
        hist.update_layout(
            title=f"Feature {self.feature}: activation histogram (fires on {100 * self.frequency:.3g}% of "
            f"{self.n_tokens} tokens)",
            xaxis={"title": "activation", "type": "log"},
            yaxis_title="tokens",
            template="plotly_white",
        )
        logits = go.Figure()
        logits.add_bar(
            x=self.logit_top_values, y=[label(t) for t in self.logit_top], orientation="h", name="promoted"
        )
        logits.add_bar(
            x=self.logit_bottom_values,
            y=[label(t) for t in self.logit_bottom],
            orientation="h",
            name="suppressed",
        )
        logits.update_layout(
            title="Logit effects of the feature's decoder direction (final norm's weight, then W_U)",
            xaxis_title="logit contribution per unit activation (before the norm's 1/rms scale)",
            template="plotly_white",
            height=max(320, 22 * (len(self.logit_top) + len(self.logit_bottom)) + 120),
        )
        rows = [("top", c) for c in self.top_contexts] + [
            (q, c)
            for q, group in zip(self.quantile_labels, self.quantile_contexts, strict=True)
            for c in group
        ]
        table = go.Figure(
            go.Table(
                columnwidth=[140, 60, 600],
                header={"values": ["example", "activation", "context (activating token in [[ ]])"]},
                cells={
                    "values": [
                        [kind for kind, _ in rows],
                        [f"{c.value:.3g}" for _, c in rows],
                        [_context_text(c) for _, c in rows],
                    ],
                    "align": "left",
                },
            )
        )
        table.update_layout(
            title=f"Feature {self.feature}: contexts ({self.config.documents} documents)",
            height=max(320, 40 * len(rows) + 120),
        )
        return {"histogram": hist, "logits": logits, "contexts": table}


def _context_text(context: FeatureContext) -> str:
    """Escaped plain text of a context with the activating token marked [[like this]] in bold."""
    parts = [
        label(t) if t.strip() == "" else html.escape(t.replace("\n", "⏎"), quote=False)
        for t in context.tokens
    ]
    parts[context.focus] = f"<b>[[{parts[context.focus]}]]</b>"
    return "".join(parts)


def _context(
    session: ModelSession, tokens: np.ndarray, flat_index: int, value: float, window: int
) -> FeatureContext:
    seq, pos = divmod(int(flat_index), tokens.shape[1])
    start, stop = max(1, pos - window), min(tokens.shape[1], pos + window + 1)
    return FeatureContext(
        tokens=session.decode_each(tokens[seq, start:stop].tolist()), focus=pos - start, value=value
    )


@register
class SAEFeature(Probe[SAEFeatureConfig, SAEFeatureResult]):
    """The dashboard of one SAE feature over a corpus (the prompt is not used)."""

    name = "sae_feature"
    title = "SAE feature page"
    description = "Top contexts, quantile examples, histogram and logit effects of one SAE feature."
    config_cls = SAEFeatureConfig
    result_cls = SAEFeatureResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: SAEFeatureConfig,
        progress: Progress = NO_PROGRESS,
        *,
        loaded: LoadedSAE | None = None,
    ) -> SAEFeatureResult:
        """Build (or load cached) dashboards for all features and extract ``config.feature``'s."""
        config.validate(session)
        loaded = loaded or load_sae(session, config.sae)
        feature = loaded.check_feature(config.feature)
        settings = DashboardSettings(
            corpus=config.corpus,
            documents=config.documents,  # type: ignore[arg-type]  # checked by the choices
            n_seq=config.n_seq,
            context_size=config.context_size,
        )
        dash = get_dashboards(session, loaded, settings, progress)
        fires = int(dash.fire_count[feature])
        top = [
            _context(session, dash.tokens, i, float(v), config.window)
            for i, v in zip(dash.top_index[feature], dash.top_values[feature], strict=True)
            if i >= 0
        ][: config.n_top]
        groups = quantile_groups(dash.sample_values[feature], dash.sample_index[feature])
        top_i, top_v, bot_i, bot_v = logit_effects(session, loaded, [feature])
        return SAEFeatureResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            sae_label=loaded.label,
            feature=feature,
            n_tokens=dash.n_tokens,
            frequency=fires / max(dash.n_tokens, 1),
            mean_activation=float(dash.act_sum[feature] / fires) if fires else 0.0,
            max_activation=float(dash.top_values[feature, 0]),
            top_contexts=top,
            quantile_labels=[g["label"] for g in groups],
            quantile_contexts=[
                [
                    _context(session, dash.tokens, i, float(v), config.window)
                    for i, v in zip(g["index"], g["values"], strict=True)
                ]
                for g in groups
            ],
            hist_edges=dash.bin_edges.astype(np.float32),
            hist_counts=dash.hist_counts[feature].astype(np.int64),
            logit_top=session.decode_each(top_i[0].tolist()),
            logit_top_values=top_v[0],
            logit_bottom=session.decode_each(bot_i[0].tolist()),
            logit_bottom_values=bot_v[0],
        )


def top_features_by_frequency(
    session: ModelSession, loaded: LoadedSAE, settings: DashboardSettings | None = None, n: int = 20
) -> list[tuple[int, float, float]]:
    """(feature, firing frequency, max activation) of the ``n`` most frequent live features.

    Reads the cached dashboards (built on a miss).
    """
    dash = get_dashboards(session, loaded, settings or DashboardSettings())
    freq = dash.frequency()
    order = np.argsort(-freq, kind="stable")[:n]
    return [(int(f), float(freq[f]), float(dash.top_values[f, 0])) for f in order if freq[f] > 0]


# ------------------------------------------------------------------------ inspector view
def _sae_view(session: ModelSession, ref: StateRef, progress: Progress) -> SAEFeaturesResult:
    loaded = load_sae(session, SAEFeaturesConfig().sae)
    layer = hooknames.layer_of(loaded.hook_name)
    if layer != ref.layer:
        raise ValueError(
            f"the SAE reads {loaded.hook_name} (layer {layer}); open the inspector at layer {layer} "
            "or train an SAE for this layer on the SAE page"
        )
    return SAEFeatures().run(session, ref.prompt, SAEFeaturesConfig(k=10), progress, loaded=loaded)


def _sae_describe(result: SAEFeaturesResult, ref: StateRef) -> list[str]:
    if ref.position == 0:
        return ["position 0 is BOS: the SAE view leaves it out"]
    pairs = result.token_features(ref.position)
    return [
        f"SAE {result.sae_label}",
        "top features: " + ", ".join(f"f{f} ({value:.3g})" for f, value in pairs),
        f"L0 here {float(result.l0[ref.position]):.0f}; explained variance on the prompt "
        f"{result.explained_variance:.3f}",
    ]


register_state_view(StateView("sae_features", "SAE features", _sae_view, order=40, describe=_sae_describe))
