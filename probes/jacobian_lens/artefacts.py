"""The fitted J-lens artefact: J̄ for every layer plus the fit's provenance, refused by other models.

One safetensors file under ``family_dir("jacobian_lens", model_id)`` holds ``jacobians``
[layer, d_model, d_model] (float32) and the convergence curve; its JSON metadata records the
owner (``model_id``, ``d_model``, ``n_layers``) and how the lens was fitted (corpus, documents,
window length, skipped positions, stopping rule, prompts, positions, seconds, deviations from
the reference). Loading checks the owner before any tensor reaches the model, as the Future
Lens and SAE artefacts do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.paths import family_dir
from lenslab.models.session import ModelSession
from lenslab.probes.jacobian_lens.fit import REFERENCE_MIN_PROMPTS, FitState

FAMILY = "jacobian_lens"
ARTEFACT_FORMAT = 1
KIND = "jacobian_lens"
DEFAULT_NAME = "lens.safetensors"


def lens_path(model_id: str, name: str = DEFAULT_NAME) -> Path:
    """Where the J-lens of ``model_id`` is saved."""
    return family_dir(FAMILY, model_id) / name


@dataclass(frozen=True)
class JacobianLens:
    """J̄_l for every layer of one model, and the fit's provenance."""

    model_id: str
    jacobians: Float[Tensor, "layer d_model d_model"]  # float32, CPU
    rel_change: Float[np.ndarray, " prompt"]
    provenance: dict[str, Any]

    @classmethod
    def from_state(cls, state: FitState) -> JacobianLens:
        """The lens of a finished (or merged) fit state."""
        spec = state.spec
        deviations = spec.deviations()
        if state.n_prompts < REFERENCE_MIN_PROMPTS:
            deviations.append(
                f"{state.n_prompts} prompts (reference: ≥ {REFERENCE_MIN_PROMPTS}, until converged)"
            )
        provenance = {
            "corpus": spec.corpus,
            "documents": list(state.documents),
            "skipped_documents": list(state.skipped),
            "seq_len": spec.seq_len,
            "skip_first": spec.skip_first,
            "estimator": (
                "reference: one-hot cotangent at every valid target position, mean over source positions"
            ),
            "stopping_rule": (
                f"smoothed (moving mean of {spec.smoothing}) relative change of the running mean "
                f"< {spec.tol:g} after ≥ {spec.min_prompts} prompts, at most {spec.max_prompts}"
            ),
            "spec": asdict(spec),
            "n_prompts": state.n_prompts,
            "n_positions": state.n_positions,
            "fit_seconds": round(state.seconds, 3),
            "converged": state.converged,
            "final_smoothed_change": state.smoothed_change(),
            "deviations": deviations,
        }
        return cls(
            model_id=state.model_id,
            jacobians=state.mean().float(),
            rel_change=np.asarray(state.rel_change, dtype=np.float64),
            provenance=provenance,
        )

    @property
    def n_layers(self) -> int:
        """Number of layers with a J̄."""
        return int(self.jacobians.shape[0])

    def transport(self, resid: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... d_model"]:
        """``J̄_l @ h``: a layer-``l`` state carried into the final residual stream's basis."""
        jac = self.jacobians[layer].to(resid.device, resid.dtype)
        return resid @ jac.T

    def logits(self, session: ModelSession, resid: Float[Tensor, "... d_model"], layer: int) -> Tensor:
        """J-lens logits: ``J̄_l @ h`` through the final norm and the unembedding."""
        return session.decode_resid(self.transport(resid, layer))

    def describe(self) -> str:
        """One line saying how the lens was fitted (shown wherever its readouts are)."""
        p = self.provenance
        dev = "; ".join(p.get("deviations") or []) or "reference specification"
        state = "converged" if p.get("converged") else "not converged"
        return (
            f"J̄ fitted on {p.get('n_prompts')} prompts / {p.get('n_positions')} positions of "
            f"{p.get('corpus')} training documents ({state}; {dev})"
        )

    # ------------------------------------------------------------------------------ files
    def save(self, path: Path | None = None) -> Path:
        """Write the lens atomically; default path :func:`lens_path`."""
        from safetensors.torch import save_file

        path = Path(path) if path is not None else lens_path(self.model_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        d_model = int(self.jacobians.shape[-1])
        meta = {
            "format": ARTEFACT_FORMAT,
            "kind": KIND,
            "model_id": self.model_id,
            "d_model": d_model,
            "n_layers": self.n_layers,
            "provenance": self.provenance,
        }
        tensors = {
            "jacobians": self.jacobians.detach().float().cpu().contiguous(),
            "rel_change": torch.from_numpy(self.rel_change.astype(np.float64)),
        }
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), {"meta": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, session: ModelSession, path: Path | None = None) -> JacobianLens:
        """The lens saved for ``session``'s model; refuses files of another model or shape."""
        from safetensors import safe_open

        path = Path(path) if path is not None else lens_path(session.model_id)
        if not path.is_file():
            raise FileNotFoundError(
                f"no Jacobian lens fitted for {session.model_id} at {path}: run `lenslab prepare` "
                "or press Fit on the J-lens page"
            )
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
        except Exception as exc:
            raise ValueError(f"{path} is not a readable Jacobian-lens artefact: {exc}") from exc
        if meta.get("format") != ARTEFACT_FORMAT or meta.get("kind") != KIND:
            raise ValueError(f"{path} is not a Jacobian-lens artefact of a known format")
        check_owner(meta, session, path)
        return cls(
            model_id=meta["model_id"],
            jacobians=tensors["jacobians"],
            rel_change=tensors["rel_change"].numpy(),
            provenance=meta.get("provenance", {}),
        )


def check_owner(meta: dict[str, Any], session: ModelSession, path: Path) -> None:
    """Refuse an artefact fitted on another model (by id) or of another shape."""
    if meta.get("model_id") != session.model_id:
        raise ValueError(
            f"{path.name} was fitted on {meta.get('model_id')!r}, not on the loaded model "
            f"{session.model_id!r}: fit the Jacobian lens again for this model"
        )
    if int(meta.get("d_model", -1)) != session.d_model or int(meta.get("n_layers", -1)) != session.n_layers:
        raise ValueError(
            f"{path.name} expects d_model={meta.get('d_model')}, {meta.get('n_layers')} layers; the loaded "
            f"model has d_model={session.d_model}, {session.n_layers} layers"
        )
