"""Offline text for SAE training and feature dashboards, cut into fixed-length token windows.

No corpus package is available offline, so the built-in corpus is Python's own documentation
(``pydoc_data.topics``) plus docstrings of standard-library modules — always present, English
prose mixed with code. Users can point at their own ``.txt`` / ``.jsonl`` files instead.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int

from lenslab.models.session import ModelSession

PYTHON_DOCS = "python-docs"
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


@dataclass(frozen=True)
class TokenWindows:
    """A corpus cut into ``n_seq`` windows of ``context_size`` tokens (BOS first), plus its digest."""

    corpus: str
    tokens: Int[np.ndarray, "n_seq context"]
    digest: str

    @property
    def n_tokens(self) -> int:
        """Number of tokens, BOS included."""
        return int(self.tokens.size)


def token_windows(
    session: ModelSession, corpus: str, *, context_size: int, n_seq: int, offset: int = 0
) -> TokenWindows:
    """Tokenise ``corpus`` and cut it into ``n_seq`` windows of ``context_size`` tokens.

    Each window starts with BOS followed by ``context_size - 1`` consecutive corpus tokens;
    ``offset`` skips that many windows first (so training and dashboards can use disjoint text).
    Raises ``ValueError`` when the corpus is too short.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 tokens, got {context_size}")
    if n_seq < 1:
        raise ValueError(f"the number of windows must be at least 1, got {n_seq}")
    texts = corpus_texts(corpus)
    body = context_size - 1
    needed = (offset + n_seq) * body
    ids: list[int] = []
    tokenizer = session.tokenizer
    eos = tokenizer.eos_token_id
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        available = len(ids) // body - offset
        raise ValueError(
            f"the corpus {corpus!r} gives only {max(available, 0)} windows of {context_size} tokens; "
            f"{n_seq} were asked for (use fewer or shorter windows, or a larger corpus)"
        )
    flat = np.asarray(ids[offset * body : needed], dtype=np.int64).reshape(n_seq, body)
    bos = session.tokenizer.bos_token_id
    if bos is None:
        raise ValueError(f"{session.model_id}'s tokenizer has no BOS token; windows need one")
    tokens = np.concatenate([np.full((n_seq, 1), int(bos), dtype=np.int64), flat], axis=1)
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
    return TokenWindows(corpus=corpus, tokens=tokens, digest=digest)


def as_tensor(windows: TokenWindows, session: ModelSession) -> Int[torch.Tensor, "n_seq context"]:
    """The windows as a token tensor on the session's device."""
    return torch.from_numpy(windows.tokens).to(session.device)
