"""Future Lens artefact files: safetensors with JSON metadata, refused when made for another model.

Trained artefacts (linear maps, soft prompts) live under ``artefacts_dir()/future_lens/<model>``.
Each file carries ``{"format", "kind", "model_id", "d_model", ...}`` in its metadata, so loading
checks what the file is and whom it belongs to before any tensor reaches the model.

Both kinds also carry their **provenance** (:func:`training_provenance`): the data key, source,
seed and split they were fitted on and a fingerprint of every training document. An evaluation
calls :func:`check_disjoint` for each artefact it uses and refuses (``ValueError``) to test on a
document the artefact was fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.future_lens.data import FutureLensData, cache_dir, document_fingerprints

ARTEFACT_FORMAT = 1
REFIT_HINT = (
    "refit it on this data's training documents: add `--config refit=true` to `lenslab run future_lens_eval` "
    "(or tick `refit` in the Future Lens page's evaluation form), or evaluate another seed/source whose "
    "test documents it never saw"
)


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


# ------------------------------------------------------------------------------- provenance
def training_provenance(data: FutureLensData, examples: np.ndarray) -> dict[str, Any]:
    """What an artefact fitted on ``data``'s rows ``examples`` was fitted on, for its metadata.

    Records the data key, source, seed and split, the example and document counts and the
    fingerprint (:func:`data.document_fingerprints`) of every document the rows come from, so
    any later evaluation can tell whether it would test on one of them.
    """
    docs = sorted({int(d) for d in data.doc_ids[examples]})
    prints = document_fingerprints(data)
    return {
        "data_key": data.key,
        "source": data.settings.source,
        "seed": data.settings.seed,
        "split": "train",
        "test_fraction": data.settings.test_fraction,
        "n_examples": len(examples),
        "n_documents": len(docs),
        "documents": sorted({prints[d] for d in docs}),
    }


def check_disjoint(meta: dict[str, Any], data: FutureLensData, what: str) -> None:
    """Refuse (``ValueError``) when ``data``'s test documents include one ``what`` was fitted on.

    ``meta`` is the artefact's metadata; its ``provenance`` lists fingerprints of the training
    documents. Artefacts without provenance (older files) are refused too: nothing shows they
    never saw the test documents.
    """
    provenance = meta.get("provenance")
    if not isinstance(provenance, dict) or "documents" not in provenance:
        raise ValueError(
            f"{what} records no training documents, so it may have seen the test set: {REFIT_HINT}"
        )
    prints = document_fingerprints(data)
    test_docs = sorted({int(d) for d in data.doc_ids[data.split(test=True)]})
    fitted = set(provenance["documents"])
    overlap = [d for d in test_docs if prints[d] in fitted]
    if overlap:
        shown = ", ".join(str(d) for d in overlap[:8]) + (" …" if len(overlap) > 8 else "")
        raise ValueError(
            f"{what} was fitted on {len(overlap)} of the {len(test_docs)} test documents of this evaluation "
            f"(document {shown} of {data.settings.source!r}; it was fitted on data "
            f"{provenance.get('data_key')} with seed {provenance.get('seed')}): {REFIT_HINT}"
        )
