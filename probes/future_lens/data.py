"""Future Lens data: text sources, (prefix, greedy continuation) examples and their hidden states.

An example is a prefix of ``prefix_tokens`` tokens (BOS + a window of a document) and the model's
own greedy continuation of ``HORIZONS`` tokens (N = 0..3, i.e. t+1 .. t+4). Collection runs once
per (model, source, settings): batched forwards with the model's KV cache keep, at the prefix's
last position t, the residual stream of every layer (h_t^ℓ), and the final layer's state at
t+N for N = 0..3 (the linear model's target; decoding it gives the model's own distribution, the
KL target of the learned prompt). Everything lands in a cache folder keyed by a hash of the model
id, the source and the settings, so training epochs and evaluations never re-run the model.

The train/test split is by document (never by position): whole documents go to the test side
until it holds ``test_fraction`` of the tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from lenslab.models import hooknames
from lenslab.models.paths import family_dir
from lenslab.models.session import ModelSession
from lenslab.probes.base import to_numpy
from lenslab.progress import NO_PROGRESS, Progress

HORIZONS = 4  # N = 0..3: the tokens t+1 .. t+4
DEFAULT_SOURCE = "pydoc"
DATA_FORMAT = 1


# --------------------------------------------------------------------------------------- sources
def load_documents(source: str) -> list[str]:
    """Documents of a text source, one string per document.

    ``source`` is ``"pydoc"`` (Python's own documentation, one topic per document; always
    offline), a path to a ``.txt`` file (documents separated by blank lines: paragraphs are
    grouped), a ``.jsonl`` file (one document per line: a string or an object with ``"text"``),
    or ``"hf:<dataset name>"`` for a Hugging Face dataset with a ``text`` column (needs a hub).
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError("the text source is empty: use 'pydoc', a .txt/.jsonl file or 'hf:<dataset>'")
    source = source.strip()
    if source == "pydoc":
        from pydoc_data.topics import topics

        docs = [str(text) for _, text in sorted(topics.items())]
    elif source.startswith("hf:"):
        docs = _hub_documents(source[3:])
    else:
        docs = _file_documents(Path(source).expanduser())
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        raise ValueError(f"the text source {source!r} holds no text")
    return docs


def _file_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path} (use 'pydoc' for the built-in corpus)")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".jsonl":
        docs = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {number} is not JSON: {exc.msg}") from exc
            if isinstance(item, dict):
                if "text" not in item:
                    raise ValueError(f"{path.name} line {number} has no 'text' field")
                item = item["text"]
            if not isinstance(item, str):
                raise ValueError(f"{path.name} line {number}: expected a string or {{'text': ...}}")
            docs.append(item)
        return docs
    # Plain text: paragraphs separated by blank lines, grouped into documents of ~2000 characters.
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, current = [], ""
    for paragraph in paragraphs:
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= 2000:
            docs.append(current)
            current = ""
    if current:
        docs.append(current)
    return docs


def _hub_documents(name: str) -> list[str]:
    if not name.strip():
        raise ValueError("give a dataset name after 'hf:', e.g. 'hf:wikitext'")
    try:
        import datasets

        dataset = datasets.load_dataset(name.strip(), split="train")
    except Exception as exc:  # offline hubs raise many different errors
        raise ValueError(
            f"could not load the dataset {name!r} ({type(exc).__name__}): a Hugging Face hub must be "
            "reachable for 'hf:' sources; use 'pydoc' or a local .txt/.jsonl file offline"
        ) from exc
    if "text" not in dataset.column_names:
        raise ValueError(f"dataset {name!r} has no 'text' column (columns: {dataset.column_names})")
    return [str(t) for t in dataset["text"][:5000]]


def source_fingerprint(source: str) -> str:
    """What identifies a source's content for the cache key (files: path, size, mtime)."""
    source = source.strip()
    if source == "pydoc" or source.startswith("hf:"):
        import sys

        return f"{source}|py{sys.version_info.major}.{sys.version_info.minor}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path} (use 'pydoc' for the built-in corpus)")
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


# -------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DataSettings:
    """How examples are drawn from a source; every field is part of the cache key."""

    source: str = DEFAULT_SOURCE
    n_examples: int = 320
    prefix_tokens: int = 16
    test_fraction: float = 0.25
    seed: int = 0
    batch_size: int = 32
    # Shortest prefix (incl. BOS); None: every prefix is prefix_tokens long. Otherwise each example's
    # length is drawn uniformly from [min_prefix_tokens, prefix_tokens], so t (and what is fitted on
    # it) spans the positions min_prefix_tokens − 1 .. prefix_tokens − 1.
    min_prefix_tokens: int | None = None

    def validate(self) -> None:
        """Reject settings that cannot produce a train and a test split."""
        if not 8 <= self.n_examples <= 100_000:
            raise ValueError(f"n_examples must be between 8 and 100000, got {self.n_examples}")
        if not 4 <= self.prefix_tokens <= 256:
            raise ValueError(f"prefix_tokens must be between 4 and 256, got {self.prefix_tokens}")
        if not 0.05 <= self.test_fraction <= 0.9:
            raise ValueError(f"test_fraction must be between 0.05 and 0.9, got {self.test_fraction}")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"batch_size must be between 1 and 1024, got {self.batch_size}")
        if self.min_prefix_tokens is not None and not 2 <= self.min_prefix_tokens <= self.prefix_tokens:
            raise ValueError(
                f"min_prefix_tokens must be between 2 and prefix_tokens={self.prefix_tokens}, "
                f"got {self.min_prefix_tokens}"
            )

    def key(self, model_id: str) -> str:
        """Hash of (model id, source content, settings) naming the cache entry."""
        payload = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        if self.min_prefix_tokens is None:  # fixed-length data keeps the key it had before the field
            payload.pop("min_prefix_tokens")
        payload.update(model=model_id, source=source_fingerprint(self.source), format=DATA_FORMAT)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FutureLensData:
    """Collected examples: tokens, greedy labels and hidden states (CPU numpy)."""

    model_id: str
    key: str
    settings: DataSettings
    prefix_ids: Int[np.ndarray, "example prefix"]
    doc_ids: Int[np.ndarray, " example"]
    is_test: np.ndarray  # bool [example]
    labels: Int[np.ndarray, "example horizon"]  # greedy tokens t+1 .. t+4
    resid: Float[np.ndarray, "example layer d_model"]  # h_t^ℓ (hooknames.resid(ℓ) at t)
    final: Float[np.ndarray, "example horizon d_model"]  # last block's output at t+N
    meta: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[int, str] | None = None  # document id → content hash (see document_fingerprints)

    @property
    def n_layers(self) -> int:
        """Layers collected."""
        return int(self.resid.shape[1])

    @property
    def d_model(self) -> int:
        """Residual width."""
        return int(self.resid.shape[2])

    @property
    def positions(self) -> Int[np.ndarray, " example"]:
        """The sequence position of t (the prefix's last token; BOS is position 0) per example.

        Shorter prefixes are padded with -1 (``DataSettings.min_prefix_tokens``).
        """
        return (self.prefix_ids >= 0).sum(1).astype(np.int64) - 1

    @property
    def current_ids(self) -> Int[np.ndarray, " example"]:
        """The token at position t (the prefix's last token), the bigram baseline's input."""
        return self.prefix_ids[np.arange(len(self.prefix_ids)), self.positions]

    def split(self, test: bool) -> np.ndarray:
        """Indices of the test (or train) examples."""
        return np.flatnonzero(self.is_test == test)


def fingerprint(text: str) -> str:
    """A short content hash of one document (what artefact provenance records)."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def document_fingerprints(data: FutureLensData) -> dict[int, str]:
    """Content hash of every document ``data`` draws examples from, by document id.

    Hashes name documents independently of the source's order or file, so an artefact fitted on
    one dataset can be checked against the test documents of any other. Computed once per data
    object (the source is read again) and kept on it.
    """
    if data.fingerprints is None:
        docs = load_documents(data.settings.source)
        wanted = sorted({int(d) for d in data.doc_ids})
        if wanted and wanted[-1] >= len(docs):
            raise ValueError(
                f"the source {data.settings.source!r} now has {len(docs)} documents, the data uses document "
                f"{wanted[-1]}: it changed since the data was collected; collect again"
            )
        data.fingerprints = {d: fingerprint(docs[d]) for d in wanted}
    return data.fingerprints


def cache_dir(model_id: str) -> Path:
    """``artefacts_dir()/future_lens/<model-slug>``: where this model's Future Lens files live."""
    return family_dir("future_lens", model_id)


# ------------------------------------------------------------------------------------ examples
def sample_windows(
    session: ModelSession, settings: DataSettings
) -> tuple[Int[np.ndarray, "example prefix"], Int[np.ndarray, " example"], np.ndarray]:
    """Draw prefixes (BOS + ``prefix_tokens - 1`` document tokens) split by document.

    With ``min_prefix_tokens`` each prefix's length is drawn from [min_prefix_tokens,
    prefix_tokens] and the rows are padded with -1 to ``prefix_tokens``.
    """
    docs = load_documents(settings.source)
    body = settings.prefix_tokens - 1
    tokenized = [session.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    usable = [i for i, ids in enumerate(tokenized) if len(ids) >= body]
    if len(usable) < 2:
        raise ValueError(
            f"the source has {len(usable)} document(s) of at least {body} tokens; a train/test split "
            "by document needs two or more (add text or lower prefix_tokens)"
        )
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(usable)
    total = sum(len(tokenized[i]) for i in usable)
    test_docs, held = set(), 0
    for i in order:
        if held >= settings.test_fraction * total and test_docs:
            break
        if len(test_docs) == len(usable) - 1:
            break
        test_docs.add(int(i))
        held += len(tokenized[i])
    n_test = max(1, round(settings.n_examples * settings.test_fraction))
    counts = {True: n_test, False: settings.n_examples - n_test}
    bos = bos_id(session)
    prefixes, doc_ids, is_test = [], [], []
    for test, count in counts.items():
        docs_here = [i for i in usable if (i in test_docs) == test]
        starts = [(i, s) for i in docs_here for s in range(len(tokenized[i]) - body + 1)]
        if len(starts) < count:
            raise ValueError(
                f"the {'test' if test else 'train'} documents hold only {len(starts)} distinct prefixes; "
                f"{count} were asked for (add text or lower n_examples)"
            )
        for j in rng.choice(len(starts), size=count, replace=False):
            doc, start = starts[int(j)]
            length = body
            if settings.min_prefix_tokens is not None:
                length = int(rng.integers(settings.min_prefix_tokens, settings.prefix_tokens + 1)) - 1
            window = tokenized[doc][start : start + length]
            prefixes.append([bos, *window] + [-1] * (body - length))
            doc_ids.append(doc)
            is_test.append(test)
    return np.asarray(prefixes, dtype=np.int64), np.asarray(doc_ids, dtype=np.int64), np.asarray(is_test)


def bos_id(session: ModelSession) -> int:
    """The model's BOS token id (the first token of a tokenized prompt when the tokenizer has none)."""
    bos = session.tokenizer.bos_token_id
    if bos is None:
        bos = int(session.tokenize("a")[0, 0])
    return int(bos)


def collect(
    session: ModelSession,
    prefix_ids: Int[np.ndarray, "example prefix"],
    batch_size: int = 32,
    progress: Progress = NO_PROGRESS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy continuation of every prefix plus the hidden states the four methods need.

    Returns ``labels [n, 4]``, ``resid [n, n_layers, d_model]`` (every layer at the prefix's last
    position) and ``final [n, 4, d_model]`` (the last block's output at t+N). Each batch is one
    KV-cached greedy generation (``session.generate_greedy``) with hooks on every layer: they keep
    all layers' states during the prefill and only the last layer's in the three greedy steps.
    """
    names = [hooknames.resid(layer) for layer in range(session.n_layers)]
    last = names[-1]
    n = len(prefix_ids)
    labels = np.zeros((n, HORIZONS), dtype=np.int64)
    resid = np.zeros((n, session.n_layers, session.d_model), dtype=np.float32)
    final = np.zeros((n, HORIZONS, session.d_model), dtype=np.float32)
    prefill_states: dict[str, torch.Tensor] = {}
    final_states: list[torch.Tensor] = []  # the last layer at t+N, one per forward
    state = {"prefill": True}

    def keep(tensor: torch.Tensor, *, hook: Any) -> None:
        if state["prefill"]:
            prefill_states[hook.name] = tensor[:, -1].detach()
        if hook.name == last:
            final_states.append(tensor[:, -1].detach())

    def prefill_done() -> None:
        state["prefill"] = False

    hooks = [(name, keep) for name in names]
    lengths = (prefix_ids >= 0).sum(1)  # rows padded with -1 are batched with rows of their length
    batches = [
        rows[begin : begin + batch_size]
        for length in np.unique(lengths)
        for rows in [np.flatnonzero(lengths == length)]
        for begin in range(0, len(rows), batch_size)
    ]
    done = 0
    for rows in batches:
        tokens = torch.as_tensor(prefix_ids[rows, : lengths[rows[0]]], device=session.device)
        state["prefill"] = True
        final_states.clear()
        chosen, _ = session.generate_greedy(tokens, HORIZONS, hooks=hooks, on_prefill=prefill_done)
        resid[rows] = to_numpy(torch.stack([prefill_states[name] for name in names], 1)).astype(np.float32)
        final[rows] = to_numpy(torch.stack(final_states, 1)).astype(np.float32)
        labels[rows] = to_numpy(chosen)
        done += len(rows)
        progress(done / n, f"collected {done}/{n} examples")
    return labels, resid, final


def build_dataset(
    session: ModelSession,
    settings: DataSettings | None = None,
    progress: Progress = NO_PROGRESS,
    *,
    use_cache: bool = True,
) -> FutureLensData:
    """Examples and hidden states for ``settings``, from the on-disk cache when present."""
    settings = settings or DataSettings()
    settings.validate()
    key = settings.key(session.model_id)
    folder = cache_dir(session.model_id) / "data" / key
    if use_cache and (folder / "meta.json").is_file():
        data = load_dataset(folder)
        if data.model_id != session.model_id or data.d_model != session.d_model:
            raise ValueError(f"cached data in {folder} belongs to {data.model_id}, not {session.model_id}")
        return data
    progress(0.0, "tokenizing the corpus")
    prefix_ids, doc_ids, is_test = sample_windows(session, settings)
    with session.lock:
        labels, resid, final = collect(session, prefix_ids, settings.batch_size, progress)
    data = FutureLensData(
        model_id=session.model_id,
        key=key,
        settings=settings,
        prefix_ids=prefix_ids,
        doc_ids=doc_ids,
        is_test=is_test,
        labels=labels,
        resid=resid,
        final=final,
        meta={"n_train": int((~is_test).sum()), "n_test": int(is_test.sum())},
    )
    if use_cache:
        save_dataset(data, folder)
    return data


def save_dataset(data: FutureLensData, folder: Path) -> None:
    """Write arrays (npz) then ``meta.json`` last, so a crash never leaves a readable half entry."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".arrays-{os.getpid()}.npz"
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            prefix_ids=data.prefix_ids,
            doc_ids=data.doc_ids,
            is_test=data.is_test,
            labels=data.labels,
            resid=data.resid,
            final=data.final,
        )
    os.replace(tmp, folder / "arrays.npz")
    meta = {
        "model_id": data.model_id,
        "key": data.key,
        "settings": asdict(data.settings),
        "d_model": data.d_model,
        "n_layers": data.n_layers,
        **data.meta,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_dataset(folder: Path) -> FutureLensData:
    """Read a cache entry written by :func:`save_dataset`."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"the Future Lens data cache {folder} is unreadable ({exc}); delete it") from exc
    settings = DataSettings(**meta["settings"])
    extra = {k: v for k, v in meta.items() if k in ("n_train", "n_test")}
    return FutureLensData(model_id=meta["model_id"], key=meta["key"], settings=settings, meta=extra, **arrays)
