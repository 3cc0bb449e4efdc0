"""Future Lens evaluation: top-1 and precision@k per method × layer × N on the held-out documents.

Labels are the model's own greedy tokens t+1..t+4 (Pal et al. measure against what the model
itself would produce, not the corpus). A bigram baseline — the most frequent (token → token
N+1 later) pairs over every token of the training documents' text, falling back to the most
frequent tokens — is scored on the same examples. For N ≥ 1 the fixed and learned prompts
continue on their own greedy tokens by default (``protocol="free-running"``, the paper's);
``"teacher-forced"`` feeds them the original tokens instead, and every figure, table and summary
names the protocol.

Windows cut from one document are not independent, so every precision carries a 95% interval
from resampling whole test documents (``stats.bootstrap_by_group``), stored as data next to the
estimate. The result is a table plus accuracy-vs-layer curves with error bars, one facet per N,
and saves into reports like any other result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, register
from lenslab.probes.future_lens.artefacts import check_disjoint
from lenslab.probes.future_lens.continuation import MAX_ROWS
from lenslab.probes.future_lens.data import (
    HORIZONS,
    DataSettings,
    FutureLensData,
    build_dataset,
    load_documents,
)
from lenslab.probes.future_lens.linear import (
    DEFAULT_RIDGE,
    RIDGE_GRID,
    LinearMaps,
    ensure_linear,
    evaluation_linear_path,
)
from lenslab.probes.future_lens.methods import (
    BATCHED,
    Artefacts,
    batched,
    causal_grid,
    grid_topk,
    method_topk,
)
from lenslab.probes.future_lens.prompts import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    PromptTraining,
    SoftPrompt,
    evaluation_prompt_path,
    load_soft_prompt,
    train_soft_prompt,
)
from lenslab.probes.stats import bootstrap_by_group, format_interval
from lenslab.progress import NO_PROGRESS, Progress

PROMPT_FIELDS = {f.name for f in fields(PromptTraining)}

COLOURS = {"direct": "#7f7f7f", "linear": "#1f77b4", "fixed": "#ff7f0e", "learned": "#2ca02c"}


def precision_at_k(
    top_ids: Int[np.ndarray, "n horizon k"], labels: Int[np.ndarray, "n horizon"], k: int
) -> np.ndarray:
    """Fraction of examples whose label is among the first ``k`` predictions, per horizon."""
    if k < 1 or k > top_ids.shape[-1]:
        raise ValueError(f"k={k} must be between 1 and {top_ids.shape[-1]}")
    hits = (top_ids[..., :k] == labels[..., None]).any(-1)
    return hits.mean(0)


def hits_at_ks(
    top_ids: Int[np.ndarray, "n horizon k_max"], labels: Int[np.ndarray, "n horizon"], ks: list[int]
) -> Bool[np.ndarray, "n horizon k"]:
    """Whether each example's label is among the first ``k`` predictions, for every k in ``ks``."""
    if min(ks) < 1 or max(ks) > top_ids.shape[-1]:
        raise ValueError(f"every k must be between 1 and {top_ids.shape[-1]}, got {ks}")
    return np.stack([(top_ids[..., :k] == labels[..., None]).any(-1) for k in ks], -1)


def document_intervals(
    hits: Bool[np.ndarray, "n ..."], doc_ids: Int[np.ndarray, " n"], seed: int = 0
) -> tuple[Float[np.ndarray, " ..."], Float[np.ndarray, "... 2"]]:
    """Hit rate per cell and its 95% interval from resampling whole documents.

    ``hits[i]`` belongs to document ``doc_ids[i]``; the interval is ``stats.bootstrap_by_group``
    over documents (the same resampled documents for every cell, so cells stay comparable). Cells
    with the same hits share one bootstrap (it is deterministic given the seed).
    """
    flat = np.asarray(hits, dtype=np.float64).reshape(len(hits), -1)
    estimate = flat.mean(0)
    ci = np.full((flat.shape[1], 2), np.nan)
    done: dict[bytes, tuple[float, float]] = {}
    for c in range(flat.shape[1]):
        column = flat[:, c]
        key = column.tobytes()
        if key not in done:
            interval = bootstrap_by_group(column, doc_ids, unit="documents", seed=seed)
            done[key] = (interval.low, interval.high)
        ci[c] = done[key]
    cells = hits.shape[1:]
    return estimate.reshape(cells), ci.reshape(*cells, 2)


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
    min_prefix_tokens: int | None = field(
        default=4,
        metadata={
            "help": "shortest prefix incl. BOS (lengths drawn uniformly up to prefix_tokens; empty: all "
            "prefix_tokens long)",
            "min": 2,
            "max": 256,
        },
    )
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
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata={
            "help": "fixed/learned at N ≥ 1: continue on the intervened run's own greedy tokens "
            "(free-running, the paper's) or feed the original tokens (teacher-forced)",
            "choices": PROTOCOLS,
        },
    )
    k: int = field(default=10, metadata={"help": "largest k of precision@k", "min": 1, "max": 10})
    ridge: float | None = field(
        default=DEFAULT_RIDGE,
        metadata={
            "help": f"relative ridge of the linear fit (0: least squares; empty: chosen per layer and N "
            f"from {list(RIDGE_GRID)} on held-out training documents)",
            "min": 0.0,
            "max": 100.0,
        },
    )
    refit: bool = field(
        default=False,
        metadata={
            "help": "retrain saved learned prompts that were fitted on a test document of this evaluation "
            "(else such an evaluation is refused)"
        },
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
            min_prefix_tokens=self.min_prefix_tokens,
        )

    def layer_list(self, session: ModelSession) -> list[int]:
        """The evaluated layers."""
        return session.check_layers(self.layers) if self.layers else default_eval_layers(session.n_layers)


@dataclass(frozen=True)
class FutureLensEvalResult(Result):
    """Precision@k of each method per layer and N, with the bigram baseline and 95% intervals.

    Intervals come from resampling whole test documents (``n_documents`` of them, holding
    ``n_test`` examples). Fields added after the first release have defaults so that older
    reports still load: those reports were teacher-forced and carry no intervals (NaN).
    """

    probe = "future_lens_eval"
    config: FutureLensEvalConfig
    methods: list[str]
    layers: Int[np.ndarray, " layer"]
    ks: Int[np.ndarray, " k"]
    precision: Float[np.ndarray, "method layer horizon k"]  # NaN where a method was not run
    bigram: Float[np.ndarray, "horizon k"]
    n_train: int  # training examples
    n_test: int  # test examples
    notes: list[str]
    protocol: str = "teacher-forced"  # how fixed/learned reached N ≥ 1 (older reports: teacher-forced)
    precision_ci: Float[np.ndarray, "method layer horizon k 2"] | None = None  # 95%, over documents
    bigram_ci: Float[np.ndarray, "horizon k 2"] | None = None
    n_documents: int = 0  # test documents behind the intervals (0: not recorded)
    n_train_documents: int = 0
    bigram_pairs: int = 0  # (token, token at t+N+1) training pairs the bigram counts (0: not recorded)
    # Linear maps' relative ridge per evaluated layer and N, and its validation score (MSE after the
    # final norm on held-out training documents); NaN score: the ridge was fixed, not chosen.
    ridge_chosen: Float[np.ndarray, "layer horizon"] | None = None
    ridge_validation: Float[np.ndarray, "layer horizon"] | None = None
    ridge_grid: tuple[float, ...] = ()
    validation_examples: int = 0
    # Per test example (None in older reports): for paired comparisons of two cells on the same
    # examples, resampled by document (e.g. learned − fixed in the replications).
    hits: Bool[np.ndarray, "method layer example horizon k"] | None = None
    bigram_hits: Bool[np.ndarray, "example horizon k"] | None = None
    doc_ids: Int[np.ndarray, " example"] | None = None

    def __post_init__(self) -> None:
        """Old reports: NaN intervals, and a config that states the protocol actually computed."""
        if self.precision_ci is None:
            object.__setattr__(self, "precision_ci", np.full((*self.precision.shape, 2), np.nan))
        if self.bigram_ci is None:
            object.__setattr__(self, "bigram_ci", np.full((*self.bigram.shape, 2), np.nan))
        if self.config.protocol != self.protocol:
            object.__setattr__(self, "config", self.config.replace(protocol=self.protocol))

    def ridge_text(self) -> str:
        """How the linear maps' ridge was set, in one line (empty when not recorded)."""
        if self.ridge_chosen is None or "linear" not in self.methods:
            return ""
        values = sorted({float(v) for v in np.ravel(self.ridge_chosen)})
        shown = ", ".join(f"{v:g}" for v in values)
        if not self.ridge_grid:
            return f"fixed at {shown}"
        return (
            f"chosen per layer and N from {list(self.ridge_grid)} on {self.validation_examples} held-out "
            f"training examples (validation MSE after the final norm): {shown}"
        )

    @property
    def causal_note(self) -> str:
        """How fixed and learned reached N ≥ 1, for titles (empty when neither was evaluated)."""
        causal = [m for m in self.methods if m in ("fixed", "learned")]
        return f"{'/'.join(causal)} N ≥ 1 {self.protocol}" if causal else ""

    def split_text(self) -> str:
        """``80 test examples from 12 documents`` (what the intervals rest on)."""
        if self.n_documents == 1:
            return f"{self.n_test} test examples from 1 document (no interval: nothing to resample)"
        docs = f" from {self.n_documents} documents" if self.n_documents else ""
        return f"{self.n_test} test examples{docs}"

    def top1(self, method: str) -> Float[np.ndarray, "layer horizon"]:
        """Top-1 accuracy of ``method`` per layer and N."""
        return self.precision[self.methods.index(method), :, :, 0]

    def top1_ci(self, method: str) -> Float[np.ndarray, "layer horizon 2"]:
        """95% interval (over documents) of :meth:`top1`."""
        return self.precision_ci[self.methods.index(method), :, :, 0]  # type: ignore[index]

    def table_rows(self) -> list[dict[str, object]]:
        """One row per (method, layer): top-1 and precision@k for each N, as ``x% [lo, hi]``."""
        rows = []
        k_max = int(self.ks[-1])
        ci = self.precision_ci
        for m, method in enumerate(self.methods):
            for i, layer in enumerate(self.layers.tolist()):
                causal = method in ("fixed", "learned")
                name = f"{method} ({self.protocol} N ≥ 1)" if causal else method
                row: dict[str, object] = {"method": name, "layer": layer}
                for n in range(self.precision.shape[2]):
                    row[f"N={n} top-1"] = _cell(self.precision[m, i, n, 0], ci[m, i, n, 0])  # type: ignore[index]
                    row[f"N={n} p@{k_max}"] = _cell(self.precision[m, i, n, -1], ci[m, i, n, -1])  # type: ignore[index]
                rows.append(row)
        row = {"method": "bigram", "layer": "—"}
        for n in range(self.bigram.shape[0]):
            row[f"N={n} top-1"] = _cell(self.bigram[n, 0], self.bigram_ci[n, 0])  # type: ignore[index]
            row[f"N={n} p@{k_max}"] = _cell(self.bigram[n, -1], self.bigram_ci[n, -1])  # type: ignore[index]
        rows.append(row)
        return rows

    def summary(self) -> dict[str, object]:
        """Best top-1 for N=1 per method (the paper's headline horizon), the bigram, the protocol."""
        n = min(1, self.precision.shape[2] - 1)
        out: dict[str, object] = {}
        if self.causal_note:
            out["protocol"] = self.causal_note
        for m, method in enumerate(self.methods):
            values = self.precision[m, :, n, 0]
            if np.isfinite(values).any():
                best = int(np.nanargmax(values))
                interval = _cell(values[best], self.precision_ci[m, best, n, 0])  # type: ignore[index]
                out[f"{method} best N={n} top-1"] = f"{interval} (L{int(self.layers[best])})"
        out[f"bigram N={n} top-1"] = _cell(self.bigram[n, 0], self.bigram_ci[n, 0])  # type: ignore[index]
        out["test split"] = self.split_text()
        if self.ridge_text():
            out["linear ridge"] = self.ridge_text()
        return out

    def figures(self) -> dict[str, go.Figure]:
        """Accuracy vs layer with 95% error bars (facet per N, one line per method), and the table."""
        horizons = self.precision.shape[2]
        fig = make_subplots(
            rows=1,
            cols=horizons,
            shared_yaxes=True,
            subplot_titles=[f"N={n} (t+{n + 1})" for n in range(horizons)],
        )
        layers = self.layers.tolist()
        ci = 100 * self.precision_ci  # type: ignore[operator]
        for m, method in enumerate(self.methods):
            shown = f"{method} ({self.protocol} N ≥ 1)" if method in ("fixed", "learned") else method
            for n in range(horizons):
                values = 100 * self.precision[m, :, n, 0]
                low, high = ci[m, :, n, 0, 0], ci[m, :, n, 0, 1]
                fig.add_trace(
                    go.Scatter(
                        x=layers,
                        y=values,
                        mode="lines+markers",
                        name=shown,
                        legendgroup=method,
                        showlegend=n == 0,
                        line={"color": COLOURS.get(method)},
                        error_y={
                            "type": "data",
                            "array": np.nan_to_num(high - values),
                            "arrayminus": np.nan_to_num(values - low),
                            "visible": bool(np.isfinite(low).any()),
                            "thickness": 1,
                        },
                        customdata=np.stack([low, high, 100 * self.precision[m, :, n, -1]], -1),
                        hovertemplate=f"{shown}<br>layer %{{x}}<br>top-1 %{{y:.1f}}% "
                        "[%{customdata[0]:.1f}, %{customdata[1]:.1f}]<br>"
                        f"p@{int(self.ks[-1])} %{{customdata[2]:.1f}}%<extra></extra>",
                    ),
                    row=1,
                    col=n + 1,
                )
        bigram_ci: np.ndarray = self.bigram_ci  # type: ignore[assignment]
        for n in range(horizons):
            value = 100 * self.bigram[n, 0]
            low, high = 100 * bigram_ci[n, 0]
            x0, x1 = min(layers), max(layers)
            if np.isfinite(low):
                fig.add_trace(
                    go.Scatter(
                        x=[x0, x1, x1, x0, x0],
                        y=[low, low, high, high, low],
                        fill="toself",
                        mode="lines",
                        line={"width": 0},
                        fillcolor="rgba(0,0,0,0.08)",
                        legendgroup="bigram",
                        showlegend=False,
                        hoverinfo="skip",
                    ),
                    row=1,
                    col=n + 1,
                )
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[value] * 2,
                    mode="lines",
                    name="bigram",
                    legendgroup="bigram",
                    showlegend=n == 0,
                    line={"color": "black", "dash": "dash"},
                    hovertemplate=f"bigram top-1 {_cell(self.bigram[n, 0], bigram_ci[n, 0])}<extra></extra>",
                ),
                row=1,
                col=n + 1,
            )
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="top-1 accuracy (%)", row=1, col=1)
        protocol = f"; {self.causal_note}" if self.causal_note else ""
        fig.update_layout(
            title=f"Future Lens: top-1 vs layer ({self.split_text()}, 95% bootstrap over documents; "
            f"labels: greedy tokens{protocol})",
            template="plotly_white",
            height=440,
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
            title=f"Precision (%) [95% interval over {self.n_documents or '?'} test documents] per method, "
            f"layer and N{protocol}",
            height=max(300, 22 * len(rows) + 120),
        )
        return {"accuracy": fig, "table": table}


def _pct(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{100 * value:.1f}"


def _cell(value: float, interval: Float[np.ndarray, " 2"]) -> str:
    """``41.2% [35.0, 47.0]``; the bare percentage when no interval exists (old reports, one document)."""
    low, high = (float(x) for x in interval)
    if not np.isfinite(value) or not (np.isfinite(low) and np.isfinite(high)):
        return _pct(value) + ("%" if np.isfinite(value) else "")
    return format_interval(float(value), low, high, percent=True)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured on the test split: estimates, intervals and notes."""

    precision: Float[np.ndarray, "method layer horizon k"]  # NaN where a method was not run
    precision_ci: Float[np.ndarray, "method layer horizon k 2"]
    bigram: Float[np.ndarray, "horizon k"]
    bigram_ci: Float[np.ndarray, "horizon k 2"]
    notes: list[str]
    n_documents: int
    bigram_pairs: int
    hits: Bool[np.ndarray, "method layer example horizon k"]  # per test example, for paired comparisons
    bigram_hits: Bool[np.ndarray, "example horizon k"]
    doc_ids: Int[np.ndarray, " example"]  # the test examples' documents (the bootstrap's groups)


def evaluate(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int],
    methods: list[str],
    artefacts: Artefacts,
    k: int = 10,
    progress: Progress = NO_PROGRESS,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    seed: int = 0,
) -> Evaluation:
    """Precision ``[method, layer, N, ks]`` and the bigram ``[N, ks]`` on the test split, with CIs.

    Methods lacking an artefact for a layer get NaN there and a line in the notes. ``protocol``
    chooses how fixed and learned reach N ≥ 1; the intervals resample test documents. Linear
    maps and learned prompts fitted on any of the test documents are refused (``ValueError``)
    before anything runs; the linear maps are applied only if fitted at the examples' position.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    artefacts.check_disjoint(data, methods, layers)
    _check_positions(artefacts.linear if "linear" in methods else None, data)
    ks = _ks(k)
    test = data.split(test=True)
    labels = data.labels[test]
    docs = data.doc_ids[test]
    precision = np.full((len(methods), len(layers), HORIZONS, len(ks)), np.nan)
    precision_ci = np.full((*precision.shape, 2), np.nan)
    all_hits = np.zeros((len(methods), len(layers), len(test), HORIZONS, len(ks)), dtype=bool)
    notes: list[str] = []
    teacher = torch.as_tensor(data.labels[test, : HORIZONS - 1], device=session.device)
    with session.lock:
        for m, method in enumerate(methods):
            ran = []  # the layers this method has its artefacts for; the others get a note
            for i, layer in enumerate(layers):
                missing = artefacts.missing(method, [layer])
                if missing:
                    notes.append(f"{method} L{layer}: {missing}")
                else:
                    ran.append(i)
            if not ran:
                continue
            states = {
                layers[i]: torch.as_tensor(data.resid[test, layers[i]], device=session.device) for i in ran
            }

            def step(fraction: float, message: str = "", m: int = m) -> None:
                progress((m + fraction) / len(methods), message)

            top_ids = layers_topk(
                session,
                method,
                [layers[i] for i in ran],
                states,
                artefacts,
                max(ks),
                protocol=protocol,
                teacher=teacher if protocol == "teacher-forced" else None,
                progress=step,
            )
            for j, i in enumerate(ran):
                hits = hits_at_ks(top_ids[j].numpy(), labels, ks)
                all_hits[m, i] = hits
                precision[m, i], precision_ci[m, i] = document_intervals(hits, docs, seed)
            progress((m + 1) / len(methods), f"evaluated {method} at layers {[layers[i] for i in ran]}")
    current, following = bigram_training_pairs(session, data)
    bigram_ids = bigram_top_ids(current, following, data.current_ids[test], max(ks))
    bigram_hits = hits_at_ks(bigram_ids, labels, ks)
    bigram, bigram_ci = document_intervals(bigram_hits, docs, seed)
    return Evaluation(
        precision=precision,
        precision_ci=precision_ci,
        bigram=bigram,
        bigram_ci=bigram_ci,
        notes=notes,
        n_documents=len(np.unique(docs)),
        bigram_pairs=len(current),
        hits=all_hits,
        bigram_hits=bigram_hits,
        doc_ids=docs,
    )


def layers_topk(
    session: ModelSession,
    method: str,
    layers: list[int],
    states: dict[int, Float[Tensor, "example d_model"]],
    artefacts: Artefacts,
    k: int,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    teacher: Int[Tensor, "example fed"] | None = None,
    progress: Progress = NO_PROGRESS,
) -> Int[Tensor, "layer example horizon k"]:
    """Top-k ids (CPU) of every layer's test states by ``method``, all layers batched where possible.

    The same numbers as :func:`~lenslab.probes.future_lens.methods.method_topk` layer by layer, with
    the work shared across layers as the Future Lens page's grid shares it: direct and linear decode
    every layer's rows in one chunked product (``grid_topk``); fixed and learned free-running run
    every layer's rows as one KV-cached continuation (``causal_grid``: the fixed context's prefix
    once, each layer's learned prefix once), in blocks of at most ``MAX_ROWS`` examples. Teacher-forced
    fixed / learned stay layer by layer (``method_topk``).
    """
    if method in BATCHED:
        return grid_topk(session, method, layers, states, HORIZONS, artefacts, k)[0]
    if batched(method, protocol):
        n = next(iter(states.values())).shape[0]
        blocks = []
        for start in range(0, n, MAX_ROWS):
            part = {layer: rows[start : start + MAX_ROWS] for layer, rows in states.items()}

            def step(fraction: float, message: str = "", start: int = start) -> None:
                progress((start + fraction * min(MAX_ROWS, n - start)) / n, message)

            blocks.append(causal_grid(session, method, layers, part, HORIZONS, artefacts, k, step)[0])
        return torch.cat(blocks, 1)
    per_layer = []
    for i, layer in enumerate(layers):
        ids, _ = method_topk(
            session, method, layer, states[layer], HORIZONS, artefacts, k, protocol=protocol, teacher=teacher
        )
        per_layer.append(ids)
        progress((i + 1) / len(layers), f"{method} at layer {layer}")
    return torch.stack(per_layer)


def _check_positions(linear: LinearMaps | None, data: FutureLensData) -> None:
    """Refuse linear maps fitted at other positions t than the test examples'."""
    if linear is None:
        return
    outside = sorted({int(p) for p in data.positions[data.split(test=True)] if not linear.fitted_at(int(p))})
    if outside:
        raise ValueError(
            f"the linear maps were fitted at positions {linear.positions}, the test examples sit at "
            f"{outside}: fit them on data with the same prefix lengths"
        )


def learned_prompts(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int],
    refit: bool,
    progress: Progress = NO_PROGRESS,
) -> dict[int, SoftPrompt]:
    """The learned prompts an evaluation on ``data`` uses for ``layers``, retrained where ``refit`` asks.

    Per layer, a prompt fitted on ``data`` itself (on its training split) is used first: the
    evaluation's own (:func:`evaluation_prompt_path`), then the page's (:func:`soft_prompt_path`).
    Otherwise the page's prompt is used as it is (or, without one, the evaluation's). With
    ``refit``, a chosen prompt fitted on a test document of ``data`` (or recording no training
    documents) is retrained on its training split with its old settings and saved to the
    evaluation's file: an evaluation never replaces the prompts the page's learned method reads.
    """
    prompts: dict[int, SoftPrompt] = {}
    for layer in layers:
        own = load_soft_prompt(session, layer, evaluation_prompt_path(session.model_id, layer))
        page = load_soft_prompt(session, layer)
        here = [p for p in (own, page) if p is not None and _fitted_on(p, data)]
        chosen = here[0] if here else (page or own)
        if chosen is not None:
            prompts[layer] = chosen
    stale = []
    for layer, prompt in prompts.items():
        try:
            check_disjoint(prompt.meta, data, f"the learned prompt of layer {layer}")
        except ValueError:
            stale.append(layer)
    if refit:
        for i, layer in enumerate(stale):
            old = prompts[layer].meta.get("training", {})
            training = PromptTraining(
                **{k: (tuple(v) if k == "horizons" else v) for k, v in old.items() if k in PROMPT_FIELDS}
            )

            def step(fraction: float, message: str = "", i: int = i) -> None:
                progress((i + fraction) / len(stale), message)

            prompts[layer] = train_soft_prompt(session, data, layer, training, step)
            prompts[layer].save(evaluation_prompt_path(session.model_id, layer))
    return prompts


def _fitted_on(prompt: SoftPrompt, data: FutureLensData) -> bool:
    """Whether ``prompt`` was trained on ``data`` (its data key, with the provenance recorded)."""
    return prompt.meta.get("data_key") == data.key and "provenance" in prompt.meta


def bigram_training_pairs(
    session: ModelSession, data: FutureLensData
) -> tuple[Int[np.ndarray, " n"], Int[np.ndarray, "n horizon"]]:
    """Every training token and the tokens N+1 later in its document's text, for N = 0..3.

    The baseline counts all positions of the training documents (not only the sampled windows'
    last tokens), like the paper's corpus bigram; it never sees a test document.
    """
    docs = load_documents(data.settings.source)
    current, following = [], []
    for doc in np.unique(data.doc_ids[data.split(test=False)]).tolist():
        ids = np.asarray(session.tokenizer(docs[doc], add_special_tokens=False)["input_ids"], dtype=np.int64)
        n = len(ids) - HORIZONS
        if n > 0:
            current.append(ids[:n])
            following.append(np.stack([ids[1 + h : 1 + h + n] for h in range(HORIZONS)], 1))
    if not current:
        return data.current_ids[data.split(test=False)], data.labels[data.split(test=False)]
    return np.concatenate(current), np.concatenate(following)


def _ks(k: int) -> list[int]:
    return sorted({1, *(x for x in (5, 10) if x <= k), k})


def run_evaluation(
    session: ModelSession, config: FutureLensEvalConfig, progress: Progress = NO_PROGRESS
) -> FutureLensEvalResult:
    """Build (or reuse) the data, fit (or reuse) the evaluated layers' linear maps, evaluate every method."""
    config.validate(session)
    layers = config.layer_list(session)

    def part(start: float, stop: float) -> Progress:
        return lambda fraction, message="": progress(start + (stop - start) * fraction, message)

    data = build_dataset(session, config.data_settings(), part(0.0, 0.45))
    # Only the evaluated layers (each layer's maps are fitted independently), kept apart from the
    # page's maps: the page's are reused when they were fitted on this data, never replaced.
    linear = ensure_linear(
        session,
        data,
        config.ridge,
        layers,
        part(0.45, 0.5),
        toward_identity=config.toward_identity,
        path=evaluation_linear_path(session.model_id),
    )
    prompts = learned_prompts(session, data, layers, config.refit and config.learned_prompt, part(0.5, 0.55))
    artefacts = Artefacts(linear=linear, prompts=prompts)
    methods = ["direct", "linear"]
    if config.fixed_prompt:
        methods.append("fixed")
    if config.learned_prompt:
        methods.append("learned")
    scores = evaluate(
        session, data, layers, methods, artefacts, config.k, part(0.55, 1.0), protocol=config.protocol
    )
    train = data.split(test=False)
    return FutureLensEvalResult(
        model_id=session.model_id,
        prompt=f"evaluation on {config.source}",
        config=config,
        methods=methods,
        layers=np.asarray(layers, dtype=np.int64),
        ks=np.asarray(_ks(config.k), dtype=np.int64),
        precision=scores.precision,
        bigram=scores.bigram,
        n_train=len(train),
        n_test=len(data.split(test=True)),
        notes=scores.notes,
        protocol=config.protocol,
        precision_ci=scores.precision_ci,
        bigram_ci=scores.bigram_ci,
        n_documents=scores.n_documents,
        n_train_documents=len(np.unique(data.doc_ids[train])),
        bigram_pairs=scores.bigram_pairs,
        hits=scores.hits,
        bigram_hits=scores.bigram_hits,
        doc_ids=np.asarray(scores.doc_ids, dtype=np.int64),
        **ridge_record(linear, layers),
    )


def ridge_record(linear: LinearMaps, layers: list[int]) -> dict[str, object]:
    """The ridge each evaluated layer's maps were fitted with and its validation MSE (result fields)."""
    rows = [linear.layers.index(layer) for layer in layers]
    chosen = linear.meta.get("ridge_chosen")
    if chosen is None:  # maps saved before the ridge was recorded per map
        chosen = [[linear.meta.get("ridge", np.nan)] * HORIZONS for _ in linear.layers]
    grid = tuple(float(g) for g in linear.meta.get("ridge_grid") or ())
    scores = (linear.meta.get("validation") or {}).get("scores") or []
    validation = np.full((len(layers), HORIZONS), np.nan)
    for i, row in enumerate(rows):
        if grid and row < len(scores) and scores[row]:
            for n in range(HORIZONS):
                validation[i, n] = scores[row][n][grid.index(float(chosen[row][n]))]
    return {
        "ridge_chosen": np.asarray([chosen[row] for row in rows], dtype=np.float64),
        "ridge_validation": validation,
        "ridge_grid": grid,
        "validation_examples": int((linear.meta.get("validation") or {}).get("n_examples", 0)),
    }


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
