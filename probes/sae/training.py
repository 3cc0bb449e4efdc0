"""Train a TopK SAE for the loaded model offline with sae-lens' own ``SAETrainer``.

Activations are collected once (forward passes stop at the hook) and the trainer streams
shuffled batches of them: on a CPU this is several times faster than sae-lens' language-model
runner, which re-runs the model for every batch. Activations are normalised to unit expected
norm during training (``expected_average_only_in``; Gemma's residual norms are in the
thousands) and sae-lens folds that scale back into the weights at the end, so the saved SAE
reads raw activations. Progress (and cancel) goes through the batch iterator the trainer pulls
from. The result is saved in sae-lens' format plus ``lenslab.json`` with the training config,
model id, corpus digest and held-out metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import ModelSession
from lenslab.probes.base import Config
from lenslab.probes.sae.corpus import (
    HELD_OUT_RULE,
    PYTHON_DOCS,
    TokenWindows,
    as_tensor,
    corpus_texts,
    held_out_windows,
    token_windows,
)
from lenslab.probes.sae.evaluation import HeldOutEvaluation, evaluate_sae
from lenslab.probes.sae.loading import INFO_FILE, LoadedSAE, load_sae, trained_dir
from lenslab.progress import NO_PROGRESS, Progress

HOOKS: dict[str, Callable[[int], str]] = {
    "resid_post": hooknames.resid,
    "mlp_out": hooknames.mlp_out,
    "attn_out": hooknames.attn_out,
}


@dataclass(frozen=True)
class SAETrainingConfig(Config):
    """Settings for training a TopK SAE on one hook point of the loaded model."""

    name: str = field(default="my-sae", metadata={"help": "folder name of the trained SAE"})
    layer: int = field(default=6, metadata={"help": "block whose output the SAE reads", "min": 0})
    hook: str = field(default="resid_post", metadata={"help": "which activation", "choices": tuple(HOOKS)})
    d_sae: int = field(default=2048, metadata={"help": "number of features", "min": 8, "max": 65536})
    k: int = field(default=32, metadata={"help": "active features per token (TopK)", "min": 1, "max": 512})
    n_tokens: int = field(
        default=12_000,
        metadata={"help": "activation vectors collected for training", "min": 256, "max": 2_000_000},
    )
    context_size: int = field(
        default=64, metadata={"help": "tokens per corpus window", "min": 8, "max": 1024}
    )
    steps: int = field(default=300, metadata={"help": "optimiser steps", "min": 1, "max": 100_000})
    batch_size: int = field(default=256, metadata={"help": "activations per step", "min": 8, "max": 16384})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate", "min": 1e-6, "max": 1e-1})
    seed: int = field(default=0, metadata={"help": "random seed (init, shuffling)", "min": 0})
    corpus: str = field(default=PYTHON_DOCS, metadata={"help": "'python-docs' or a .txt/.jsonl file path"})
    eval_windows: int = field(
        default=64,
        metadata={
            "help": "windows of held-out documents (never trained on) for the metrics",
            "min": 1,
            "max": 1024,
        },
    )

    def hook_name(self) -> str:
        """The hook point this config trains on."""
        return HOOKS[self.hook](self.layer)

    def validate(self, session: ModelSession) -> None:
        """Check numbers, the layer, the name and that k fits d_sae."""
        super().validate(session)
        session.check_layer(self.layer)
        trained_dir(session, self.name)
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} cannot exceed the number of features d_sae={self.d_sae}")
        if self.hook_name() not in session.hook_names:
            raise ValueError(f"{session.model_id} has no hook point {self.hook_name()!r}")


def collect_activations(
    session: ModelSession,
    hook_name: str,
    windows: TokenWindows,
    *,
    batch_size: int = 32,
    progress: Progress = NO_PROGRESS,
    span: tuple[float, float] = (0.0, 1.0),
) -> Float[Tensor, "n d_in"]:
    """Activations at ``hook_name`` for every non-BOS token of ``windows`` (float32, model device).

    32 windows of 64 tokens per forward took about half the CPU time of 8 on 2 CPU threads, with
    bit-identical activations (the forward's per-call overhead dominates small batches).
    """
    tokens = as_tensor(windows, session)
    chunks = []
    n_batches = math.ceil(len(tokens) / batch_size)
    for i in range(n_batches):
        batch = tokens[i * batch_size : (i + 1) * batch_size]
        act = session.capture(batch, [hook_name])[hook_name][:, 1:]
        chunks.append(act.reshape(-1, act.shape[-1]).float())
        progress(
            span[0] + (span[1] - span[0]) * (i + 1) / n_batches, f"collecting activations {i + 1}/{n_batches}"
        )
    return torch.cat(chunks)


def _batches(
    activations: Tensor, batch_size: int, seed: int, total: int, progress: Progress, span: tuple[float, float]
) -> Iterator[Tensor]:
    """Endless shuffled batches; reports progress per batch (raising ``Cancelled`` stops training)."""
    generator = torch.Generator().manual_seed(seed)
    drawn = 0
    while True:
        order = torch.randperm(len(activations), generator=generator).to(activations.device)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            drawn += 1
            if drawn % 10 == 0 or drawn == total:
                fraction = span[0] + (span[1] - span[0]) * min(drawn / total, 1.0)
                progress(fraction, f"training step {min(drawn, total)}/{total}")
            yield activations[order[start : start + batch_size]]


def train_sae(
    session: ModelSession,
    config: SAETrainingConfig,
    progress: Progress = NO_PROGRESS,
    *,
    overwrite: bool = False,
) -> LoadedSAE:
    """Train, evaluate and save a TopK SAE; returns it loaded back from disk.

    Refuses to replace an existing SAE of the same name unless ``overwrite``.
    """
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    config.validate(session)
    target = trained_dir(session, config.name)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"an SAE named {config.name!r} already exists for {session.model_id}: pick another name"
        )
    hook_name = config.hook_name()
    started = time.perf_counter()
    cpu_started = time.process_time()
    n_seq = math.ceil(config.n_tokens / (config.context_size - 1))
    progress(0.0, "tokenising the corpus")
    train_windows = token_windows(
        session, config.corpus, context_size=config.context_size, n_seq=n_seq, subset="train"
    )
    eval_windows = held_out_windows(
        session, config.corpus, context_size=config.context_size, n_seq=config.eval_windows
    )
    documents = {
        "split": f"held out: {HELD_OUT_RULE}",
        "n_corpus_documents": len(corpus_texts(config.corpus)),
        "train": train_windows.used_documents(),
    }
    if set(documents["train"]) & set(eval_windows.used_documents()):  # the split rule guarantees this
        raise RuntimeError("held-out documents overlap the training documents")
    with session.lock:
        activations = collect_activations(
            session, hook_name, train_windows, progress=progress, span=(0.0, 0.3)
        )
    collect_seconds = time.perf_counter() - started

    torch.manual_seed(config.seed)
    device = str(session.device)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=activations.shape[-1],
        d_sae=config.d_sae,
        k=config.k,
        device=device,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(
            model_name=session.model_id,
            hook_name=hook_name,
            context_size=config.context_size,
            prepend_bos=True,
        ),
    )
    sae = TopKTrainingSAE(sae_cfg)
    n_norm_batches = min(20, max(1, len(activations) // config.batch_size))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=config.steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr / 10,
        lr_warm_up_steps=min(50, config.steps // 10),
        lr_decay_steps=config.steps // 5,
        device=device,
        dead_feature_window=max(1, config.steps // 4),
        feature_sampling_window=config.steps + 1,
        n_batches_for_norm_estimate=n_norm_batches,
        logger=LoggingConfig(log_to_wandb=False),
    )
    provider = _batches(
        activations, config.batch_size, config.seed, config.steps + n_norm_batches, progress, (0.3, 0.9)
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    # sae-lens' own scale (√d_in / mean norm), set here so that b_dec can start at the scaled mean:
    # with b_dec = 0 the residual stream's large shared mean direction makes the same features win
    # the top-k on every token and most features die (measured: 1748/2048 dead on Gemma layer 6).
    scaling = activations.shape[-1] ** 0.5 / float(activations.norm(dim=-1).mean())
    trainer.activation_scaler.scaling_factor = scaling
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0) * scaling)
    trained = trainer.fit()
    train_seconds = time.perf_counter() - started - collect_seconds
    dead = int(trainer.dead_neurons.sum().item())

    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        trained.save_inference_model(tmp)
        info = {
            "model_id": session.model_id,
            "hook_name": hook_name,
            "architecture": "topk",
            "training_config": config.to_dict(),
            "corpus_digest": train_windows.digest,
            "documents": documents,
            "n_train_activations": len(activations),
            "seconds": {"collect": round(collect_seconds, 2), "train": round(train_seconds, 2)},
            "dead_features": dead,
            "sae_lens": _sae_lens_version(),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    loaded = load_sae(session, "default" if config.name == "default" else f"trained:{config.name}")
    progress(0.92, "evaluating on held-out documents")
    with session.lock:
        evaluation = evaluate_sae(
            session,
            loaded,
            eval_windows,
            mean_activation=activations.mean(0),
            progress=lambda f, m="": progress(0.92 + 0.07 * f, m),
        )
    info["metrics"] = evaluation.metrics()
    info["held_out"] = evaluation.to_info()
    info["seconds"]["total"] = round(time.perf_counter() - started, 2)
    info["seconds"]["cpu_process"] = round(time.process_time() - cpu_started, 2)
    (target / INFO_FILE).write_text(json.dumps(info, indent=2))
    loaded.info = info
    progress(1.0, f"trained: held-out explained variance {evaluation.text('explained_variance')}")
    return loaded


def _sae_lens_version() -> str:
    import sae_lens

    return getattr(sae_lens, "__version__", "unknown")


def ensure_trained(
    session: ModelSession, config: SAETrainingConfig, progress: Progress = NO_PROGRESS
) -> LoadedSAE:
    """Load the SAE ``config.name`` if it exists and was trained with this config; else train it."""
    target = trained_dir(session, config.name)
    spec = "default" if config.name == "default" else f"trained:{config.name}"
    info_file = target / INFO_FILE
    if info_file.is_file() and (target / "cfg.json").is_file():
        info = json.loads(info_file.read_text())
        measured = HeldOutEvaluation.from_info(info) is not None
        if info.get("training_config") == config.to_dict() and measured:
            progress(1.0, "SAE already trained")
            return load_sae(session, spec)
    return train_sae(session, config, progress, overwrite=True)
