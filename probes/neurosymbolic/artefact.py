"""The neurosymbolic artefact: what is fitted, and how it is stored and found on disk.

:class:`TrainConfig` is part of the artefact's identity (its :meth:`~TrainConfig.key` names the
folder), so a changed setting is a different artefact rather than a stale one. The files are
``tensors.safetensors`` (codebook, encoders, decoder) and ``meta.json`` (model id, config,
penalties, chosen layers, metrics), versioned by :data:`FORMAT`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenslab.models.paths import family_dir
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config
from lenslab.probes.neurosymbolic.fit import LinearMap
from lenslab.probes.neurosymbolic.gate import GateThreshold
from lenslab.probes.neurosymbolic.tasks import ALL_OPERATIONS, OPERATIONS, TaskSet, generate_tasks
from lenslab.probes.neurosymbolic.vsa import Codebook

# 3: encoders carry the radius of their training states (out-of-distribution gate)
# 4: a calibrated read-out confidence threshold per encoder layer; metrics with 95% intervals
FORMAT = 4


@dataclass(frozen=True)
class TrainConfig(Config):
    """What the encoders/decoder are fitted on (part of the artefact's identity)."""

    operations: tuple[str, ...] = field(default=ALL_OPERATIONS, metadata={"help": "task types"})
    bound: int = field(default=100, metadata={"help": "operands are 0..bound-1", "min": 4, "max": 1000})
    n_train_per_operation: int = field(default=24, metadata={"help": "training problems", "min": 4})
    n_test_per_operation: int = field(default=20, metadata={"help": "test problems", "min": 2})
    n_calibration_per_operation: int = field(
        default=30, metadata={"help": "calibration problems (the gate's threshold)", "min": 2}
    )
    shots: int = field(default=1, metadata={"help": "solved examples before the query", "min": 0, "max": 8})
    vsa_dim: int = field(default=2048, metadata={"help": "VSA dimension", "min": 64, "max": 16384})
    seed: int = field(default=0, metadata={"help": "codebook and task seed"})
    merge_layer: int = field(
        default=-1,
        metadata={"help": "decoder layer (-1: best decoder R² at/after the encoder layer)", "min": -1},
    )
    threshold: float = field(default=0.8, metadata={"help": "evaluation: act above this score"})
    gate_target: float = field(
        default=0.95,
        metadata={
            "help": "gate: least precision (Wilson lower bound on calibration)",
            "min": 0.5,
            "max": 0.999,
        },
    )
    merge_weight: float = field(default=0.5, metadata={"help": "evaluation: w in (1-w)h + w·decoded"})
    # 64 short few-shot sequences per forward: on 2 CPU threads 0.45-0.65x the CPU time of 16 (the
    # per-forward overhead of hooks and small ops dominates short batches); 128 gains nothing more
    batch_size: int = field(default=64, metadata={"help": "sequences per forward", "min": 1, "max": 256})

    def validate(self, session: ModelSession) -> None:
        """Check operations and the merge layer against the model."""
        super().validate(session)
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"unknown or no operations {unknown}; choose from {list(OPERATIONS)}")
        if self.merge_layer != -1:
            session.check_layer(self.merge_layer)
        if not 0.0 <= self.merge_weight <= 1.0:
            raise ValueError(f"merge_weight must be in [0, 1], got {self.merge_weight}")

    def tasks(self) -> TaskSet:
        """The train and test problems this config fits and evaluates on (deterministic in ``seed``)."""
        return generate_tasks(
            self.operations,
            self.bound,
            self.n_train_per_operation,
            self.n_test_per_operation,
            shots=self.shots,
            seed=self.seed,
            n_calibration_per_operation=self.n_calibration_per_operation,
        )

    def key(self) -> str:
        """Short stable id of the fields that change the fitted maps."""
        fields = asdict(self)
        for runtime in ("batch_size",):
            fields.pop(runtime)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Artefact:
    """Fitted encoders (one per layer), the decoder, the codebook and their test metrics."""

    model_id: str
    d_model: int
    n_layers: int
    config: TrainConfig
    codebook: Codebook
    encoders: dict[int, LinearMap]
    decoder: LinearMap
    chosen_layer: int
    merge_layer: int
    metrics: dict[str, Any]  # layer curve + evaluation table (plain JSON)
    gates: dict[int, GateThreshold] = field(default_factory=dict)  # calibrated per encoder layer

    def gate(self, layer: int) -> float:
        """The calibrated read-out confidence threshold at ``layer`` (``math.inf``: never acts)."""
        return self.gates[layer].threshold if layer in self.gates else math.inf

    @property
    def operand_digits(self) -> int:
        """Digits an operand can have."""
        return len(str(self.config.bound - 1))

    def check_session(self, session: ModelSession) -> None:
        """Refuse maps fitted on another model."""
        if session.model_id != self.model_id or session.d_model != self.d_model:
            raise ValueError(
                f"these neurosymbolic encoders were fitted on {self.model_id!r} (d_model {self.d_model}); "
                f"the loaded model is {session.model_id!r} (d_model {session.d_model}). Fit them for this "
                "model first (prepare_default_artefacts or the page's 'Fit encoders' button)."
            )

    # ------------------------------------------------------------------------------- save/load
    def save(self, folder: Path) -> Path:
        """Write ``tensors.safetensors`` + ``meta.json`` (meta last, so a crash leaves no half)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for name in ("digit_atoms", "positions", "roles", "operation_atoms", "step_atoms", "end_atom"):
            tensors[f"codebook.{name}"] = getattr(self.codebook, name)
        for layer, encoder in self.encoders.items():
            _put(tensors, f"encoder.{layer}", encoder)
        _put(tensors, "decoder", self.decoder)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / "tensors.safetensors"
        )
        meta = {
            "format": FORMAT,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "config": self.config.to_dict(),
            "codebook": {
                "dim": self.codebook.dim,
                "seed": self.codebook.seed,
                "n_digits": self.codebook.n_digits,
                "operations": list(self.codebook.operations),
            },
            "encoder_alphas": {str(k): v.alpha for k, v in self.encoders.items()},
            "encoder_radii": {str(k): v.input_radius for k, v in self.encoders.items()},
            "decoder_alpha": self.decoder.alpha,
            "chosen_layer": self.chosen_layer,
            "merge_layer": self.merge_layer,
            "gates": {str(k): v.to_json() for k, v in self.gates.items()},
            "metrics": self.metrics,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path, session: ModelSession | None = None) -> Artefact:
        """Read a saved artefact; with ``session``, refuse it if it was fitted on another model."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "meta.json").is_file() or not (folder / "tensors.safetensors").is_file():
            raise FileNotFoundError(f"no neurosymbolic encoders in {folder} (meta.json/tensors.safetensors)")
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"the neurosymbolic encoders in {folder} are format {meta.get('format')}, older than this "
                f"lenslab's format {FORMAT} (which adds the calibrated gate): refit them with "
                "`lenslab prepare`, prepare_default_artefacts(session) or the page's 'Fit encoders' button"
            )
        if session is not None and (
            meta["model_id"] != session.model_id or meta["d_model"] != session.d_model
        ):
            raise ValueError(
                f"the neurosymbolic encoders in {folder} were fitted on {meta['model_id']!r}; the loaded "
                f"model is {session.model_id!r}. Fit them for this model first."
            )
        device = session.device if session is not None else torch.device("cpu")
        tensors = {k: v.to(device) for k, v in load_file(folder / "tensors.safetensors").items()}
        book = meta["codebook"]
        codebook = Codebook(
            dim=book["dim"],
            seed=book["seed"],
            n_digits=book["n_digits"],
            operations=tuple(book["operations"]),
            **{
                name: tensors[f"codebook.{name}"]
                for name in ("digit_atoms", "positions", "roles", "operation_atoms", "step_atoms", "end_atom")
            },
        )
        encoders = {
            int(layer): _get(tensors, f"encoder.{layer}", alpha)
            for layer, alpha in meta["encoder_alphas"].items()
        }
        for layer, radius in meta.get("encoder_radii", {}).items():
            encoders[int(layer)].input_radius = radius
        return cls(
            model_id=meta["model_id"],
            d_model=meta["d_model"],
            n_layers=meta["n_layers"],
            config=TrainConfig.from_dict(meta["config"]),  # type: ignore[arg-type]
            codebook=codebook,
            encoders=encoders,
            decoder=_get(tensors, "decoder", meta["decoder_alpha"]),
            chosen_layer=meta["chosen_layer"],
            merge_layer=meta["merge_layer"],
            metrics=meta["metrics"],
            gates={int(k): GateThreshold.from_json(v) for k, v in meta["gates"].items()},
        )


def _put(tensors: dict[str, Tensor], prefix: str, linear: LinearMap) -> None:
    tensors[f"{prefix}.weight"] = linear.weight
    tensors[f"{prefix}.input_mean"] = linear.input_mean
    tensors[f"{prefix}.output_mean"] = linear.output_mean


def _get(tensors: dict[str, Tensor], prefix: str, alpha: float) -> LinearMap:
    return LinearMap(
        tensors[f"{prefix}.weight"], tensors[f"{prefix}.input_mean"], tensors[f"{prefix}.output_mean"], alpha
    )


def artefact_folder(model_id: str, config: TrainConfig) -> Path:
    """``artefacts_dir()/neurosymbolic/<model-slug>/<config key>``."""
    return family_dir("neurosymbolic", model_id) / config.key()
