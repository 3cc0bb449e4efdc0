"""Offline text for SAE training and feature dashboards, cut into fixed-length token windows.

No corpus package is available offline, so the built-in corpus is Python's own documentation
(``pydoc_data.topics``) plus docstrings of standard-library modules — always present, English
prose mixed with code. Users can point at their own ``.txt`` / ``.jsonl`` files instead.

A corpus is a list of documents, split once by index (:func:`split_documents`): every
``HELD_OUT_EVERY``-th document is held out. SAEs train on the others only, and their quality is
measured on held-out documents (:func:`held_out_windows`), so no evaluated token was trained on
and the uncertainty can be bootstrapped over documents. Every window records the document of
each of its tokens.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Int

from lenslab.models.session import ModelSession

PYTHON_DOCS = "python-docs"
HELD_OUT_EVERY = 4
"""Document ``i`` is held out (never trained on) when ``i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1``."""
HELD_OUT_RULE = f"document index % {HELD_OUT_EVERY} == {HELD_OUT_EVERY - 1}"
Subset = Literal["all", "train", "held-out"]
SUBSETS: tuple[Subset, ...] = ("all", "train", "held-out")
_DOCSTRING_MODULES = (
    "collections",
    "functools",
    "itertools",
    "json",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "datetime",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "heapq",
    "bisect",
    "argparse",
    "logging",
    "csv",
    "shutil",
    "subprocess",
    "threading",
    "unittest",
    "urllib.parse",
    "email.message",
    "http.client",
)


def python_docs_texts() -> list[str]:
    """Python's documentation topics and standard-library docstrings, in a fixed order."""
    from pydoc_data.topics import topics

    texts = [topics[key].strip() for key in sorted(topics) if topics[key].strip()]
    for module_name in _DOCSTRING_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a trimmed Python build: skip what is absent
            continue
        for _, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if callable(member) or inspect.ismodule(member) else None
            if doc and len(doc) > 200 and getattr(member, "__module__", module_name) == module_name:
                texts.append(doc.strip())
    return texts


def read_text_file(path: str | Path) -> list[str]:
    """Documents from a user file: ``.jsonl`` (a ``text`` field per line) or plain text (blank-line split)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"corpus file {str(file)!r} does not exist")
    raw = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file.name} line {number} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{file.name} line {number} has no string field 'text'")
            texts.append(record["text"])
    else:
        texts = [part.strip() for part in raw.split("\n\n") if part.strip()]
    if not texts:
        raise ValueError(f"corpus file {file.name} holds no text")
    return texts


def corpus_texts(corpus: str) -> list[str]:
    """Texts of the built-in corpus (``python-docs``) or of a user file path."""
    if corpus == PYTHON_DOCS:
        return python_docs_texts()
    return read_text_file(corpus)


def split_documents(n_documents: int) -> tuple[list[int], list[int]]:
    """(training, held-out) document indices: every ``HELD_OUT_EVERY``-th document is held out.

    A fixed rule on the document's index, so any SAE, dashboard or test can tell which documents
    are held out without reading the SAE. Needs at least two documents.
    """
    if n_documents < 2:
        raise ValueError(
            f"the corpus has {n_documents} document(s): at least 2 are needed to hold some out "
            "(in a .txt file, separate documents by a blank line)"
        )
    held = [i for i in range(n_documents) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1] or [n_documents - 1]
    kept = set(held)
    return [i for i in range(n_documents) if i not in kept], held


def subset_documents(n_documents: int, subset: Subset) -> list[int]:
    """Indices of the documents in ``subset`` (``all``, ``train`` or ``held-out``)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown document subset {subset!r}: use one of {', '.join(SUBSETS)}")
    if subset == "all":
        return list(range(n_documents))
    train, held = split_documents(n_documents)
    return train if subset == "train" else held


@dataclass(frozen=True)
class TokenWindows:
    """A corpus cut into ``n_seq`` windows of ``context_size`` tokens (BOS first), plus its digest.

    ``documents[i, j]`` is the index (in :func:`corpus_texts`) of the document token ``[i, j]``
    comes from; the BOS column repeats the document of the window's first text token.
    """

    corpus: str
    tokens: Int[np.ndarray, "n_seq context"]
    digest: str
    documents: Int[np.ndarray, "n_seq context"]

    @property
    def n_tokens(self) -> int:
        """Number of tokens, BOS included."""
        return int(self.tokens.size)

    def used_documents(self) -> list[int]:
        """Sorted indices of every document some token of the windows comes from."""
        return sorted(int(d) for d in np.unique(self.documents))


def _tokenize(session: ModelSession, text: str) -> list[int]:
    """Token ids of one document followed by EOS (when the tokenizer has one)."""
    ids = list(session.tokenizer(text, add_special_tokens=False)["input_ids"])
    eos = session.tokenizer.eos_token_id
    return [*ids, int(eos)] if eos is not None else ids


def _bos(session: ModelSession) -> int:
    bos = session.tokenizer.bos_token_id
    if bos is None:
        raise ValueError(f"{session.model_id}'s tokenizer has no BOS token; windows need one")
    return int(bos)


def _windows(corpus: str, body: np.ndarray, documents: np.ndarray, bos: int) -> TokenWindows:
    """Windows from their text tokens ``body`` [n_seq, context-1]: BOS prepended, digest of the tokens."""
    n_seq = len(body)
    tokens = np.concatenate([np.full((n_seq, 1), int(bos), dtype=np.int64), body.astype(np.int64)], axis=1)
    documents = np.concatenate([documents[:, :1], documents], axis=1).astype(np.int64)
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
    return TokenWindows(corpus=corpus, tokens=tokens, digest=digest, documents=documents)


def token_windows(
    session: ModelSession,
    corpus: str,
    *,
    context_size: int,
    n_seq: int,
    offset: int = 0,
    subset: Subset = "all",
) -> TokenWindows:
    """Tokenise ``corpus`` and cut it into ``n_seq`` windows of ``context_size`` tokens.

    The documents of ``subset`` (all, the training split or the held-out split) are joined in
    order, each ending with EOS; each window starts with BOS followed by ``context_size - 1``
    consecutive tokens (a window may run across a document boundary). ``offset`` skips that many
    windows first. Raises ``ValueError`` when the text is too short.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 tokens, got {context_size}")
    if n_seq < 1:
        raise ValueError(f"the number of windows must be at least 1, got {n_seq}")
    texts = corpus_texts(corpus)
    body = context_size - 1
    needed = (offset + n_seq) * body
    ids: list[int] = []
    docs: list[int] = []
    for index in subset_documents(len(texts), subset):
        part = _tokenize(session, texts[index])
        ids.extend(part)
        docs.extend([index] * len(part))
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        available = len(ids) // body - offset
        which = "" if subset == "all" else f" ({subset} documents)"
        raise ValueError(
            f"the corpus {corpus!r}{which} gives only {max(available, 0)} window(s) of {context_size} "
            f"tokens; {n_seq} were asked for (use fewer or shorter windows, or a larger corpus)"
        )
    flat = np.asarray(ids[offset * body : needed], dtype=np.int64).reshape(n_seq, body)
    flat_docs = np.asarray(docs[offset * body : needed], dtype=np.int64).reshape(n_seq, body)
    return _windows(corpus, flat, flat_docs, _bos(session))


def held_out_windows(session: ModelSession, corpus: str, *, context_size: int, n_seq: int) -> TokenWindows:
    """``n_seq`` windows cut inside held-out documents, spread over as many documents as possible.

    Each window lies within one held-out document. Round robin: the first window of every
    held-out document long enough, then the second window of each, and so on, so that the
    windows come from many distinct documents (the units of the bootstrap). Fewer windows are
    returned when the held-out documents hold fewer; none raises ``ValueError``.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 tokens, got {context_size}")
    texts = corpus_texts(corpus)
    body = context_size - 1
    per_document = []
    for index in subset_documents(len(texts), "held-out"):
        ids = _tokenize(session, texts[index])
        cuts = [ids[i * body : (i + 1) * body] for i in range(len(ids) // body)]
        if cuts:
            per_document.append((index, cuts))
    chosen: list[tuple[int, list[int]]] = []
    round_ = 0
    while len(chosen) < n_seq and any(len(cuts) > round_ for _, cuts in per_document):
        chosen.extend((index, cuts[round_]) for index, cuts in per_document if len(cuts) > round_)
        round_ += 1
    if not chosen:
        raise ValueError(
            f"no held-out document of {corpus!r} is {body} tokens long: "
            "use shorter windows or a larger corpus"
        )
    chosen = chosen[:n_seq]
    flat = np.asarray([cut for _, cut in chosen], dtype=np.int64)
    flat_docs = np.repeat(np.asarray([index for index, _ in chosen], dtype=np.int64)[:, None], body, axis=1)
    return _windows(corpus, flat, flat_docs, _bos(session))


def as_tensor(windows: TokenWindows, session: ModelSession) -> Int[torch.Tensor, "n_seq context"]:
    """The windows as a token tensor on the session's device."""
    return torch.from_numpy(windows.tokens).to(session.device)
