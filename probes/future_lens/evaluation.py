"""Future Lens evaluation: top-1 and precision@k per method × layer × N on the held-out documents.

Labels are the model's own greedy tokens t+1..t+4 (Pal et al. measure against what the model
itself would produce, not the corpus). A bigram baseline — the most frequent (token at t →
token at t+N+1) pairs of the training split, falling back to the most frequent tokens — is
computed on the same examples. The result is a table plus accuracy-vs-layer curves, one facet
per N, and saves into reports like any other result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register
from lenslab.probes.future_lens.data import HORIZONS, DataSettings, FutureLensData, build_dataset
from lenslab.probes.future_lens.linear import DEFAULT_RIDGE, ensure_linear
from lenslab.probes.future_lens.methods import Artefacts, method_topk
from lenslab.progress import NO_PROGRESS, Progress

COLOURS = {"direct": "#7f7f7f", "linear": "#1f77b4", "fixed": "#ff7f0e", "learned": "#2ca02c"}


def precision_at_k(
    top_ids: Int[np.ndarray, "n horizon k"], labels: Int[np.ndarray, "n horizon"], k: int
) -> np.ndarray:
    """Fraction of examples whose label is among the first ``k`` predictions, per horizon."""
    if k < 1 or k > top_ids.shape[-1]:
        raise ValueError(f"k={k} must be between 1 and {top_ids.shape[-1]}")
    hits = (top_ids[..., :k] == labels[..., None]).any(-1)
    return hits.mean(0)


def bigram_top_ids(
    train_current: np.ndarray, train_labels: np.ndarray, test_current: np.ndarray, k: int
) -> Int[np.ndarray, "n horizon k"]:
    """Bigram predictions: for each N, the k most frequent training labels after the current token.

    Unseen tokens (and short lists) are filled with the most frequent labels overall.
    """
    out = np.zeros((len(test_current), train_labels.shape[1], k), dtype=np.int64)
    for n in range(train_labels.shape[1]):
        table: dict[int, Counter] = defaultdict(Counter)
        for current, label in zip(train_current.tolist(), train_labels[:, n].tolist(), strict=True):
            table[current][label] += 1
        overall = [token for token, _ in Counter(train_labels[:, n].tolist()).most_common()]
        for i, current in enumerate(test_current.tolist()):
            ranked = [token for token, _ in table[current].most_common()] if current in table else []
            for token in overall:
                if len(ranked) >= k:
                    break
                if token not in ranked:
                    ranked.append(token)
            ranked += [-1] * (k - len(ranked))
            out[i, n] = ranked[:k]
    return out


def default_eval_layers(n_layers: int, count: int = 7) -> list[int]:
    """An even spread of ``count`` layers including the first and the last."""
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)}) if n_layers > 1 else [0]


@dataclass(frozen=True)
class FutureLensEvalConfig(Config):
    """Settings of the evaluation (the data settings are part of the data cache key)."""

    source: str = field(
        default="pydoc",
        metadata={
            "help": "'pydoc' (offline Python docs), a .txt/.jsonl file, or 'hf:<dataset>' (needs a hub)"
        },
    )
    n_examples: int = field(
        default=320, metadata={"help": "examples in total (train + test)", "min": 8, "max": 20000}
    )
    prefix_tokens: int = field(default=16, metadata={"help": "prefix length incl. BOS", "min": 4, "max": 256})
    test_fraction: float = field(
        default=0.25, metadata={"help": "share held out, by document", "min": 0.05, "max": 0.9}
    )
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "layers to evaluate (empty: 7 evenly spread layers)"}
    )
    fixed_prompt: bool = field(default=True, metadata={"help": "evaluate the fixed-prompt intervention"})
    learned_prompt: bool = field(
        default=True, metadata={"help": "evaluate saved learned prompts (layers without one: blank)"}
    )
    k: int = field(default=10, metadata={"help": "largest k of precision@k", "min": 1, "max": 10})
    ridge: float = field(
        default=DEFAULT_RIDGE,
        metadata={"help": "relative ridge of the linear fit (0: least squares)", "min": 0.0, "max": 100.0},
    )
    toward_identity: bool = field(
        default=True, metadata={"help": "shrink the linear maps toward the identity (else toward zero)"}
    )
    seed: int = field(default=0, metadata={"help": "sampling seed", "min": 0, "max": 2**31 - 1})

    def validate(self, session: ModelSession) -> None:
        """Check ranges, the layer selection and the data settings."""
        super().validate(session)
        session.check_layers(self.layers)
        self.data_settings().validate()

    def data_settings(self) -> DataSettings:
        """The dataset these settings describe."""
        return DataSettings(
            source=self.source,
            n_examples=self.n_examples,
            prefix_tokens=self.prefix_tokens,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )

    def layer_list(self, session: ModelSession) -> list[int]:
        """The evaluated layers."""
        return session.check_layers(self.layers) if self.layers else default_eval_layers(session.n_layers)


@dataclass(frozen=True)
class FutureLensEvalResult(Result):
    """Precision@k of each method per layer and N, with the bigram baseline."""

    probe = "future_lens_eval"
    config: FutureLensEvalConfig
    methods: list[str]
    layers: Int[np.ndarray, " layer"]
    ks: Int[np.ndarray, " k"]
    precision: Float[np.ndarray, "method layer horizon k"]  # NaN where a method was not run
    bigram: Float[np.ndarray, "horizon k"]
    n_train: int
    n_test: int
    notes: list[str]

    def top1(self, method: str) -> Float[np.ndarray, "layer horizon"]:
        """Top-1 accuracy of ``method`` per layer and N."""
        return self.precision[self.methods.index(method), :, :, 0]

    def table_rows(self) -> list[dict[str, object]]:
        """One row per (method, layer): top-1 and precision@k for each N (percent)."""
        rows = []
        k_max = int(self.ks[-1])
        for m, method in enumerate(self.methods):
            for i, layer in enumerate(self.layers.tolist()):
                row: dict[str, object] = {"method": method, "layer": layer}
                for n in range(self.precision.shape[2]):
                    row[f"N={n} top-1"] = _pct(self.precision[m, i, n, 0])
                    row[f"N={n} p@{k_max}"] = _pct(self.precision[m, i, n, -1])
                rows.append(row)
        row = {"method": "bigram", "layer": "—"}
        for n in range(self.bigram.shape[0]):
            row[f"N={n} top-1"] = _pct(self.bigram[n, 0])
            row[f"N={n} p@{k_max}"] = _pct(self.bigram[n, -1])
        rows.append(row)
        return rows

    def summary(self) -> dict[str, object]:
        """Best top-1 for N=1 per method (the paper's headline horizon) and the bigram baseline."""
        n = min(1, self.precision.shape[2] - 1)
        out: dict[str, object] = {}
        for m, method in enumerate(self.methods):
            values = self.precision[m, :, n, 0]
            if np.isfinite(values).any():
                best = int(np.nanargmax(values))
                out[f"{method} best N={n} top-1"] = f"{100 * values[best]:.1f}% (L{int(self.layers[best])})"
        out[f"bigram N={n} top-1"] = f"{100 * self.bigram[n, 0]:.1f}%"
        return out

    def figures(self) -> dict[str, go.Figure]:
        """Accuracy vs layer (facet per N, one line per method) and the full table."""
        horizons = self.precision.shape[2]
        fig = make_subplots(
            rows=1,
            cols=horizons,
            shared_yaxes=True,
            subplot_titles=[f"N={n} (t+{n + 1})" for n in range(horizons)],
        )
        layers = self.layers.tolist()
        for m, method in enumerate(self.methods):
            for n in range(horizons):
                values = self.precision[m, :, n, 0]
                fig.add_trace(
                    go.Scatter(
                        x=layers,
                        y=100 * values,
                        mode="lines+markers",
                        name=method,
                        legendgroup=method,
                        showlegend=n == 0,
                        line={"color": COLOURS.get(method)},
                        customdata=100 * self.precision[m, :, n, -1],
                        hovertemplate=f"{method}<br>layer %{{x}}<br>top-1 %{{y:.1f}}%<br>"
                        f"p@{int(self.ks[-1])} %{{customdata:.1f}}%<extra></extra>",
                    ),
                    row=1,
                    col=n + 1,
                )
        for n in range(horizons):
            fig.add_trace(
                go.Scatter(
                    x=[min(layers), max(layers)],
                    y=[100 * self.bigram[n, 0]] * 2,
                    mode="lines",
                    name="bigram",
                    legendgroup="bigram",
                    showlegend=n == 0,
                    line={"color": "black", "dash": "dash"},
                    hovertemplate=f"bigram top-1 {100 * self.bigram[n, 0]:.1f}%<extra></extra>",
                ),
                row=1,
                col=n + 1,
            )
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="top-1 accuracy (%)", row=1, col=1)
        fig.update_layout(
            title=f"Future Lens: top-1 vs layer ({self.n_test} held-out examples; labels: greedy tokens)",
            template="plotly_white",
            height=420,
        )
        rows = self.table_rows()
        columns = list(rows[0].keys())
        table = go.Figure(
            go.Table(
                header={"values": columns, "align": "left"},
                cells={"values": [[str(r[c]) for r in rows] for c in columns], "align": "left"},
            )
        )
        table.update_layout(
            title="Precision (%) per method, layer and N", height=max(300, 22 * len(rows) + 120)
        )
        return {"accuracy": fig, "table": table}


def _pct(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{100 * value:.1f}"


def evaluate(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int],
    methods: list[str],
    artefacts: Artefacts,
    k: int = 10,
    progress: Progress = NO_PROGRESS,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Precision ``[method, layer, N, ks]`` and the bigram ``[N, ks]`` on the test split.

    Methods lacking an artefact for a layer get NaN there and a line in the returned notes.
    """
    ks = _ks(k)
    test, train = data.split(test=True), data.split(test=False)
    labels = data.labels[test]
    precision = np.full((len(methods), len(layers), HORIZONS, len(ks)), np.nan)
    notes: list[str] = []
    teacher = torch.as_tensor(data.labels[test, : HORIZONS - 1], device=session.device)
    jobs = [(m, i) for m in range(len(methods)) for i in range(len(layers))]
    with session.lock:
        for done, (m, i) in enumerate(jobs):
            method, layer = methods[m], layers[i]
            missing = artefacts.missing(method, [layer])
            if missing:
                notes.append(f"{method} L{layer}: {missing}")
                continue
            states = torch.as_tensor(data.resid[test, layer], device=session.device)
            top_ids, _ = method_topk(session, method, layer, states, teacher, artefacts, max(ks))
            for j, kk in enumerate(ks):
                precision[m, i, :, j] = precision_at_k(top_ids.numpy(), labels, kk)
            progress((done + 1) / len(jobs), f"evaluated {method} at layer {layer}")
    bigram_ids = bigram_top_ids(data.current_ids[train], data.labels[train], data.current_ids[test], max(ks))
    bigram = np.stack([precision_at_k(bigram_ids, labels, kk) for kk in ks], -1)
    return precision, bigram, notes


def _ks(k: int) -> list[int]:
    return sorted({1, *(x for x in (5, 10) if x <= k), k})


def run_evaluation(
    session: ModelSession, config: FutureLensEvalConfig, progress: Progress = NO_PROGRESS
) -> FutureLensEvalResult:
    """Build (or reuse) the data, fit (or reuse) the linear maps, evaluate every method."""
    config.validate(session)
    layers = config.layer_list(session)

    def part(start: float, stop: float) -> Progress:
        return lambda fraction, message="": progress(start + (stop - start) * fraction, message)

    data = build_dataset(session, config.data_settings(), part(0.0, 0.5))
    linear = ensure_linear(
        session, data, config.ridge, progress=part(0.5, 0.55), toward_identity=config.toward_identity
    )
    saved = Artefacts.saved(session)
    artefacts = Artefacts(linear=linear, prompts=saved.prompts)
    methods = ["direct", "linear"]
    if config.fixed_prompt:
        methods.append("fixed")
    if config.learned_prompt:
        methods.append("learned")
    precision, bigram, notes = evaluate(session, data, layers, methods, artefacts, config.k, part(0.55, 1.0))
    return FutureLensEvalResult(
        model_id=session.model_id,
        prompt=f"evaluation on {config.source}",
        config=config,
        methods=methods,
        layers=np.asarray(layers, dtype=np.int64),
        ks=np.asarray(_ks(config.k), dtype=np.int64),
        precision=precision,
        bigram=bigram,
        n_train=len(data.split(test=False)),
        n_test=len(data.split(test=True)),
        notes=notes,
    )


@register
class FutureLensEvaluation(Probe[FutureLensEvalConfig, FutureLensEvalResult]):
    """Score the four Future Lens methods against the model's own greedy continuations."""

    name = "future_lens_eval"
    title = "Future Lens evaluation"
    description = "Top-1 and precision@k of direct / linear / fixed-prompt / learned-prompt, per layer and N."
    config_cls = FutureLensEvalConfig
    result_cls = FutureLensEvalResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: FutureLensEvalConfig,
        progress: Progress = NO_PROGRESS,
    ) -> FutureLensEvalResult:
        """Evaluate on the corpus named in ``config`` (``prompt`` is not used)."""
        return run_evaluation(session, config, progress)
