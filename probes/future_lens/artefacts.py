"""Future Lens artefact files: safetensors with JSON metadata, refused when made for another model.

Trained artefacts (linear maps, soft prompts) live under ``artefacts_dir()/future_lens/<model>``.
Each file carries ``{"format", "kind", "model_id", "d_model", ...}`` in its metadata, so loading
checks what the file is and whom it belongs to before any tensor reaches the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.data import cache_dir

ARTEFACT_FORMAT = 1


def _check_owner(meta: dict[str, Any], session: ModelSession, path: Path) -> None:
    if meta.get("model_id") != session.model_id:
        raise ValueError(
            f"{path.name} was trained on {meta.get('model_id')!r}, not on the loaded model "
            f"{session.model_id!r}: train it again for this model"
        )
    if int(meta.get("d_model", -1)) != session.d_model:
        raise ValueError(
            f"{path.name} expects d_model={meta.get('d_model')}, the loaded model has {session.d_model}"
        )


def save_artefact(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (moved to CPU) with ``meta``; via a temporary file so a crash leaves no half file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), {"meta": json.dumps(meta)}
    )
    tmp.replace(path)
    return path


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no Future Lens artefact at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable Future Lens artefact: {exc}") from exc
    if meta.get("format") != ARTEFACT_FORMAT:
        raise ValueError(f"{path} has an unknown artefact format")
    return tensors, meta


def load_artefact(
    path: Path, session: ModelSession, kind: str, what: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors (CPU) and metadata of a ``kind`` artefact (``what`` names it in errors) of this model.

    Unreadable files, another format or kind, and artefacts of another model raise ``ValueError``.
    """
    tensors, meta = _read(path)
    if meta.get("kind") != kind:
        raise ValueError(f"{path.name} is not a {what} artefact")
    _check_owner(meta, session, path)
    return tensors, meta


def artefact_signature(session: ModelSession) -> tuple[tuple[str, int], ...]:
    """(file, mtime) of every saved artefact of the session's model: changes when one is (re)trained."""
    folder = cache_dir(session.model_id)
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors")))
