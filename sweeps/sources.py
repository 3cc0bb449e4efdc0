r"""Prompt sources of a sweep: a text file, a JSONL file, a built-in task set or the offline corpus.

Sources are named by one string so a manifest can record them:

- ``tasks:<name>`` — a built-in shared-neuron task set (``probes/shared_neurons/tasks.py``), its prompts;
- ``corpus:pydoc`` — the offline corpus of Python's documentation (as Future Lens uses it): the
  first ``CORPUS_CHARS`` characters of each document, cut at a word boundary;
- a ``.txt`` file — one prompt per line; ``\n`` in a line stands for a newline;
- a ``.jsonl`` file — per line a string, or an object with ``"prompt"`` (or ``"text"``).

Empty lines of a file are kept as items: a sweep reports them as failed items (the session refuses
empty prompts) instead of silently renumbering the rest. Malformed JSON lines are items too, with
the problem as their error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CORPUS_CHARS = 400
BAD_JSON = "\x00bad-json:"  # marks a line that could not be read; the worker reports it per item


@dataclass(frozen=True)
class Prompts:
    """The prompts of a source (in order) and a one-line description for the report."""

    texts: tuple[str, ...]
    description: str


def builtin_sources() -> list[str]:
    """Source names that need no file: the built-in task sets and the offline corpus."""
    from lenslab.probes.shared_neurons.tasks import builtin_names

    return [f"tasks:{name}" for name in builtin_names()] + ["corpus:pydoc"]


def load_prompts(source: str, limit: int = 0) -> Prompts:
    """The prompts of ``source`` (at most ``limit`` when > 0); unknown sources raise ``ValueError``."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source: give a prompt source, one of {builtin_sources()} or a .txt/.jsonl file")
    source = source.strip()
    if source.startswith("tasks:"):
        texts, description = _task_prompts(source[len("tasks:") :], limit)
    elif source.startswith("corpus:"):
        texts, description = _corpus_prompts(source[len("corpus:") :]), f"offline corpus {source}"
    else:
        texts, description = _file_prompts(Path(source).expanduser()), f"file {Path(source).name}"
    if limit > 0:
        texts = texts[:limit]
    if not texts:
        raise ValueError(f"source: {source!r} holds no prompts")
    return Prompts(tuple(texts), f"{description} ({len(texts)} prompts)")


def _task_prompts(name: str, limit: int) -> tuple[list[str], str]:
    from lenslab.probes.shared_neurons.tasks import BUILTIN, builtin_names

    if name not in BUILTIN:
        raise ValueError(f"source: unknown task set {name!r}; built-in sets: {builtin_names()}")
    task_set = BUILTIN[name](n=limit if limit > 0 else 24)
    return task_set.prompts, f"task set {name}"


def _corpus_prompts(name: str) -> list[str]:
    if name != "pydoc":
        raise ValueError(f"source: unknown corpus {name!r}; the offline corpus is 'corpus:pydoc'")
    from lenslab.probes.future_lens.data import load_documents

    return [_head(doc, CORPUS_CHARS) for doc in load_documents("pydoc")]


def _head(text: str, chars: int) -> str:
    """The first ``chars`` characters of ``text``, cut at the last space before the limit."""
    if len(text) <= chars:
        return text
    cut = text[:chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _file_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"source: no prompt file at {path} (or use one of {builtin_sources()})")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a trailing newline is not an empty prompt
        lines.pop()
    if path.suffix.lower() == ".jsonl":
        return [_json_prompt(line, number) for number, line in enumerate(lines, 1)]
    return [line.replace("\\n", "\n") for line in lines]


def _json_prompt(line: str, number: int) -> str:
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"{BAD_JSON}line {number} is not JSON ({exc.msg})"
    if isinstance(record, dict):
        record = record.get("prompt", record.get("text"))
    if not isinstance(record, str):
        return f"{BAD_JSON}line {number} is neither a string nor an object with a 'prompt' string"
    return record
