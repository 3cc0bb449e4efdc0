"""The four Future Lens methods, their trained artefacts and the transplant intervention.

1. direct projection: decode h_t^ℓ (final norm + unembed) as if it were the prediction for t+N+1;
2. linear model: a d_model×d_model map h_t^ℓ → last block's output at t+N, fitted in closed form
   (ridge on centred data, float64), decoded through final norm + unembed;
3. fixed prompt: run a generic context, overwrite the layer-ℓ state at its last position with
   h_t^ℓ, feed the model's own next tokens (teacher forcing) and read N = 0..3;
4. learned prompt: as 3 with a trainable soft prompt (10 vectors) trained with KL(original ‖
   intervened) at t+N, AdamW lr 5e-4 (Pal et al., 2023).

Trained artefacts are safetensors files with JSON metadata (model id, d_model, settings, data
key) under ``artefacts_dir()/future_lens/<model>``; loading one for another model is refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Progress
from lenslab.probes.future_lens_data import HORIZONS, FutureLensData, cache_dir

METHODS = ("direct", "linear", "fixed", "learned")
FIXED_CONTEXT = 'Hello! Could you please tell me more about "'
ARTEFACT_FORMAT = 1
# Relative ridge of the linear fit, chosen on the embedded model (0.03/0.3/3 tried, docs/notes/issue-3.md).
DEFAULT_RIDGE = 0.3


# ------------------------------------------------------------------------------------ artefacts
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


def _save(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), {"meta": json.dumps(meta)}
    )
    tmp.replace(path)
    return path


def _load(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
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


# ---------------------------------------------------------------------------------- linear model
@dataclass
class LinearMaps:
    """Per layer and horizon: ŷ = (h − x_mean) @ weight + y_mean (float32 on the model's device)."""

    layers: list[int]
    horizons: list[int]
    weight: Float[Tensor, "layer horizon d_model d_model"]
    x_mean: Float[Tensor, "layer d_model"]
    y_mean: Float[Tensor, "horizon d_model"]
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(
        self, resid: Float[Tensor, "batch d_model"], layer: int
    ) -> Float[Tensor, "batch horizon d_model"]:
        """Predicted last-block states at t+N for every fitted N."""
        if layer not in self.layers:
            raise ValueError(f"no linear map for layer {layer}; fitted layers: {self.layers}")
        i = self.layers.index(layer)
        weight = self.weight[i].to(resid)
        centred = resid - self.x_mean[i].to(resid)
        return torch.einsum("bd,nde->bne", centred, weight) + self.y_mean.to(resid)

    def save(self, path: Path) -> Path:
        """Write the maps with their metadata."""
        tensors = {"weight": self.weight, "x_mean": self.x_mean, "y_mean": self.y_mean}
        return _save(path, tensors, {**self.meta, "layers": self.layers, "horizons": self.horizons})

    @classmethod
    def load(cls, path: Path, session: ModelSession) -> LinearMaps:
        """Read maps saved by :meth:`save`; maps of another model are refused."""
        tensors, meta = _load(path)
        if meta.get("kind") != "linear":
            raise ValueError(f"{path.name} is not a linear-map artefact")
        _check_owner(meta, session, path)
        return cls(
            layers=[int(x) for x in meta["layers"]],
            horizons=[int(x) for x in meta["horizons"]],
            weight=tensors["weight"].to(session.device),
            x_mean=tensors["x_mean"].to(session.device),
            y_mean=tensors["y_mean"].to(session.device),
            meta=meta,
        )


def fit_linear_map(
    x: Float[Tensor, "n d_in"],
    y: Float[Tensor, "n d_out"],
    ridge: float = 0.0,
    *,
    toward_identity: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form least squares on centred data: returns ``(weight, x_mean, y_mean)``.

    ``ridge`` is relative: λ = ridge · trace(XᵀX)/d, so one value suits residual streams of any
    scale (Gemma's are ~10³). ``ridge=0`` is ordinary least squares (minimum-norm when n < d).
    ``toward_identity`` shrinks W toward I instead of 0 (minimises ‖Y − XW‖² + λ‖W − I‖²): with
    few examples per dimension the map then falls back to the (mean-shifted) direct projection
    instead of to the mean prediction. Computed in float64.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("a linear fit needs at least two examples")
    if ridge < 0 or not math.isfinite(ridge):
        raise ValueError(f"ridge must be a finite number ≥ 0, got {ridge}")
    x64, y64 = x.double(), y.double()
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    if ridge == 0:
        weight = torch.linalg.lstsq(xc, yc, driver="gelsd" if xc.device.type == "cpu" else None).solution
    else:
        gram = xc.T @ xc
        lam = ridge * torch.trace(gram) / gram.shape[0]
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        rhs = xc.T @ yc
        if toward_identity:
            if x.shape[1] != y.shape[1]:
                raise ValueError("shrinking toward the identity needs d_in == d_out")
            rhs = rhs + lam * eye
        weight = torch.linalg.solve(gram + lam * eye, rhs)
    return weight.float(), x_mean.float(), y_mean.float()


def fit_linear_maps(
    session: ModelSession,
    data: FutureLensData,
    layers: list[int] | None = None,
    ridge: float = DEFAULT_RIDGE,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
) -> LinearMaps:
    """Fit h_t^ℓ → last-block state at t+N on the training split for each layer and N = 0..3.

    ``toward_identity`` (default) shrinks the ridge toward W = I (see :func:`fit_linear_map`).
    """
    layers = session.check_layers(layers)
    train = data.split(test=False)
    device = session.device
    weights, x_means = [], []
    y_mean = torch.as_tensor(data.final[train].mean(0), device=device)
    for i, layer in enumerate(layers):
        x = torch.as_tensor(data.resid[train, layer], device=device)
        per_n = []
        for n in range(HORIZONS):
            y = torch.as_tensor(data.final[train, n], device=device)
            weight, x_mean, _ = fit_linear_map(x, y, ridge, toward_identity=toward_identity)
            per_n.append(weight)
        weights.append(torch.stack(per_n))
        x_means.append(x_mean)
        progress((i + 1) / len(layers), f"fitted linear maps for layer {layer}")
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "linear",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "ridge": ridge,
        "toward_identity": toward_identity,
        "data_key": data.key,
        "n_train": len(train),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return LinearMaps(layers, list(range(HORIZONS)), torch.stack(weights), torch.stack(x_means), y_mean, meta)


def linear_path(model_id: str) -> Path:
    """Where the linear maps of ``model_id`` are saved."""
    return cache_dir(model_id) / "linear_maps.safetensors"


def load_linear(session: ModelSession) -> LinearMaps | None:
    """The saved linear maps of the session's model, or None when none were trained."""
    path = linear_path(session.model_id)
    return LinearMaps.load(path, session) if path.is_file() else None


def ensure_linear(
    session: ModelSession,
    data: FutureLensData,
    ridge: float = DEFAULT_RIDGE,
    layers: list[int] | None = None,
    progress: Progress = NO_PROGRESS,
    *,
    toward_identity: bool = True,
) -> LinearMaps:
    """Reuse the saved maps when they were fitted on the same data and settings, else fit and save."""
    wanted = session.check_layers(layers)
    saved = load_linear(session)
    if (
        saved is not None
        and saved.meta.get("data_key") == data.key
        and saved.meta.get("ridge") == ridge
        and saved.meta.get("toward_identity") == toward_identity
        and set(wanted) <= set(saved.layers)
    ):
        return saved
    maps = fit_linear_maps(session, data, wanted, ridge, progress, toward_identity=toward_identity)
    maps.save(linear_path(session.model_id))
    return maps


# ----------------------------------------------------------------------------- causal methods
def transplant_hook(states: Float[Tensor, "batch d_model"], position: int) -> Callable[..., Tensor]:
    """A hook writing ``states`` into sequence ``position`` of a residual stream (nothing else)."""

    def hook(resid: Tensor, *, hook: Any) -> Tensor:
        resid = resid.clone()
        resid[:, position] = states.to(resid.dtype)
        return resid

    return hook


def embedding_multiplier(session: ModelSession) -> float:
    """How much the model scales token embeddings (√d_model for Gemma, 1 for Llama/GPT-2)."""
    embed = session.bridge.original_model.get_input_embeddings()
    ids = torch.tensor([[1, 2, 3]], device=session.device)
    with torch.no_grad():
        out = embed(ids)[0].float()
        raw = embed.weight[ids[0]].float()
    return float(out.norm() / raw.norm().clamp_min(1e-12))


@dataclass
class SoftPrompt:
    """A learned context for layer ``layer``: raw embeddings (multiplied by the model's scale)."""

    layer: int
    vectors: Float[Tensor, "n_prompt d_model"]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        """Write the prompt with its metadata."""
        return _save(path, {"vectors": self.vectors}, {**self.meta, "layer": self.layer})

    @classmethod
    def load(cls, path: Path, session: ModelSession) -> SoftPrompt:
        """Read a prompt saved by :meth:`save`; prompts of another model are refused."""
        tensors, meta = _load(path)
        if meta.get("kind") != "soft_prompt":
            raise ValueError(f"{path.name} is not a soft-prompt artefact")
        _check_owner(meta, session, path)
        return cls(layer=int(meta["layer"]), vectors=tensors["vectors"].to(session.device), meta=meta)


def soft_prompt_path(model_id: str, layer: int) -> Path:
    """Where the soft prompt for ``layer`` of ``model_id`` is saved."""
    return cache_dir(model_id) / f"soft_prompt_L{layer}.safetensors"


def load_soft_prompt(session: ModelSession, layer: int) -> SoftPrompt | None:
    """The saved soft prompt of this model for ``layer``, or None."""
    path = soft_prompt_path(session.model_id, layer)
    return SoftPrompt.load(path, session) if path.is_file() else None


def trained_prompt_layers(session: ModelSession) -> list[int]:
    """Layers with a saved soft prompt for the session's model."""
    return [layer for layer in range(session.n_layers) if soft_prompt_path(session.model_id, layer).is_file()]


def artefact_signature(session: ModelSession) -> tuple[tuple[str, int], ...]:
    """(file, mtime) of every saved artefact of the session's model: changes when one is (re)trained."""
    folder = cache_dir(session.model_id)
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors")))


def _bos(session: ModelSession) -> int:
    bos = session.tokenizer.bos_token_id
    return int(bos if bos is not None else session.tokenize("a")[0, 0])


def fixed_context_ids(session: ModelSession, context: str = FIXED_CONTEXT) -> Int[Tensor, " ctx"]:
    """Token ids (BOS first) of the generic context prompt."""
    return session.tokenize(context)[0]


def causal_logits(
    session: ModelSession,
    states: Float[Tensor, "batch d_model"],
    layer: int,
    teacher: Int[Tensor, "batch fed"],
    *,
    context_ids: Int[Tensor, " ctx"] | None = None,
    soft_prompt: Tensor | None = None,
    multiplier: float = 1.0,
) -> Float[Tensor, "batch horizon vocab"]:
    """Logits for N = 0..fed after transplanting ``states`` into the context's last position.

    The context is ``context_ids`` (fixed prompt) or BOS + ``soft_prompt`` (learned prompt,
    raw embeddings scaled by ``multiplier``); ``teacher`` holds the tokens fed after it (the
    model's own continuation t+1..t+fed). Differentiable w.r.t. ``soft_prompt`` (callers choose
    ``no_grad``/``inference_mode``). Runs the HF forward under ``session.hooks`` so only the
    last fed+1 positions are unembedded.
    """
    batch = states.shape[0]
    device = session.device
    if soft_prompt is not None:
        n_soft = soft_prompt.shape[0]
        context_ids = torch.full((n_soft + 1,), _bos(session), dtype=torch.long, device=device)
    if context_ids is None:
        raise ValueError("give a context (fixed prompt) or a soft prompt")
    context_ids = context_ids.to(device)
    position = context_ids.shape[0] - 1
    tokens = torch.cat([context_ids.expand(batch, -1), teacher.to(device)], 1)
    hooks = [(session.resid_name(layer), transplant_hook(states, position))]
    if soft_prompt is not None:

        def insert_soft(embedded: Tensor, *, hook: Any) -> Tensor:
            prompt = (soft_prompt * multiplier).to(embedded.dtype)
            return torch.cat(
                [embedded[:, :1], prompt.expand(embedded.shape[0], -1, -1), embedded[:, 1 + n_soft :]], 1
            )

        hooks.append(("embed.hook_out", insert_soft))
    with session.hooks(hooks):
        out = session.bridge.original_model(
            input_ids=tokens, use_cache=False, logits_to_keep=teacher.shape[1] + 1
        )
    return out.logits


def kl_original_intervened(target_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean KL(p_original ‖ p_intervened) over all leading dims."""
    target = torch.log_softmax(target_logits.float(), -1)
    pred = torch.log_softmax(logits.float(), -1)
    return (target.exp() * (target - pred)).sum(-1).mean()


@dataclass(frozen=True)
class PromptTraining:
    """Settings of learned-prompt training (defaults: the paper's, epochs raised for small corpora)."""

    n_prompt: int = 10
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 16
    init_std: float = 0.02
    horizons: tuple[int, ...] = (0, 1, 2, 3)
    seed: int = 0
    max_examples: int | None = None

    def validate(self) -> None:
        """Reject settings that cannot train."""
        if not 1 <= self.n_prompt <= 64:
            raise ValueError(f"n_prompt must be between 1 and 64, got {self.n_prompt}")
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs must be between 1 and 100, got {self.epochs}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 1 <= self.batch_size <= 512:
            raise ValueError(f"batch_size must be between 1 and 512, got {self.batch_size}")
        if not self.horizons or any(not 0 <= n < HORIZONS for n in self.horizons):
            raise ValueError(f"horizons must be a non-empty subset of 0..{HORIZONS - 1}, got {self.horizons}")


def train_soft_prompt(
    session: ModelSession,
    data: FutureLensData,
    layer: int,
    settings: PromptTraining | None = None,
    progress: Progress = NO_PROGRESS,
) -> SoftPrompt:
    """Train a soft prompt for ``layer`` on the training split (KL objective, AdamW).

    The prompt lives in the raw embedding table's space and is multiplied by the model's embedding
    scale (√d_model = 25.3 for Gemma), so the paper's N(0, 0.02) init and lr 5e-4 keep their
    meaning relative to real token embeddings. Only the prompt gets gradients
    (``torch.autograd.grad``), the model's weights are untouched.
    """
    settings = settings or PromptTraining()
    settings.validate()
    layer = session.check_layer(layer)
    train = data.split(test=False)
    if settings.max_examples is not None:
        train = train[: settings.max_examples]
    if len(train) == 0:
        raise ValueError("the training split is empty")
    generator = torch.Generator().manual_seed(settings.seed)
    vectors = (torch.randn(settings.n_prompt, session.d_model, generator=generator) * settings.init_std).to(
        session.device, torch.float32
    )
    vectors.requires_grad_(True)
    optimizer = torch.optim.AdamW([vectors], lr=settings.lr)
    multiplier = embedding_multiplier(session)
    horizons = list(settings.horizons)
    fed = max(horizons)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    with session.lock:
        for epoch in range(settings.epochs):
            order = rng.permutation(train)
            for begin in range(0, len(order), settings.batch_size):
                idx = np.sort(order[begin : begin + settings.batch_size])
                states = torch.as_tensor(data.resid[idx, layer], device=session.device)
                teacher = torch.as_tensor(data.labels[idx, :fed], device=session.device)
                with torch.no_grad():
                    target = session.decode_resid(
                        torch.as_tensor(data.final[idx][:, horizons], device=session.device)
                    )
                logits = causal_logits(
                    session, states, layer, teacher, soft_prompt=vectors, multiplier=multiplier
                )
                loss = kl_original_intervened(target, logits[:, horizons])
                (grad,) = torch.autograd.grad(loss, [vectors])
                vectors.grad = grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step += 1
                progress(
                    step / total, f"layer {layer} · epoch {epoch + 1}/{settings.epochs} · KL {losses[-1]:.3f}"
                )
    seconds = time.perf_counter() - started
    meta = {
        "format": ARTEFACT_FORMAT,
        "kind": "soft_prompt",
        "model_id": session.model_id,
        "d_model": session.d_model,
        "multiplier": multiplier,
        "data_key": data.key,
        "n_train": len(train),
        "training": {**asdict(settings), "horizons": horizons},
        "losses": losses,
        "seconds": seconds,
        "examples_per_second": len(train) * settings.epochs / max(seconds, 1e-9),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return SoftPrompt(layer=layer, vectors=vectors.detach(), meta=meta)


# --------------------------------------------------------------------------------- predictions
@dataclass
class Artefacts:
    """What the trained methods need: linear maps and soft prompts by layer (either may be absent)."""

    linear: LinearMaps | None = None
    prompts: dict[int, SoftPrompt] = field(default_factory=dict)

    @classmethod
    def saved(cls, session: ModelSession) -> Artefacts:
        """Everything saved for the session's model."""
        prompts = {}
        for layer in trained_prompt_layers(session):
            prompt = load_soft_prompt(session, layer)
            if prompt is not None:
                prompts[layer] = prompt
        return cls(linear=load_linear(session), prompts=prompts)

    def missing(self, method: str, layers: list[int]) -> str | None:
        """A sentence naming what ``method`` lacks for ``layers``, or None when it can run."""
        if method == "linear":
            if self.linear is None:
                return "no linear maps are trained for this model yet: train them (Train / evaluate)"
            lacking = [layer for layer in layers if layer not in self.linear.layers]
            if lacking:
                return f"no linear maps for layer(s) {lacking}: train them (Train / evaluate)"
        if method == "learned":
            lacking = [layer for layer in layers if layer not in self.prompts]
            if lacking:
                return f"no learned prompt for layer(s) {lacking}: train one per layer (Train / evaluate)"
        return None


def method_logits(
    session: ModelSession,
    method: str,
    layer: int,
    states: Float[Tensor, "batch d_model"],
    teacher: Int[Tensor, "batch fed"],
    artefacts: Artefacts,
) -> Float[Tensor, "batch horizon vocab"]:
    """Logits for t+1 .. t+1+fed predicted from single states h_t^ℓ by ``method``."""
    horizon = teacher.shape[1] + 1
    if method == "direct":
        return session.decode_resid(states)[:, None].expand(-1, horizon, -1)
    if method == "linear":
        if artefacts.missing("linear", [layer]):
            raise ValueError(artefacts.missing("linear", [layer]))
        return session.decode_resid(artefacts.linear.predict(states, layer)[:, :horizon])  # type: ignore[union-attr]
    if method == "fixed":
        return causal_logits(session, states, layer, teacher, context_ids=fixed_context_ids(session))
    if method == "learned":
        if artefacts.missing("learned", [layer]):
            raise ValueError(artefacts.missing("learned", [layer]))
        prompt = artefacts.prompts[layer]
        multiplier = float(prompt.meta.get("multiplier", embedding_multiplier(session)))
        return causal_logits(
            session, states, layer, teacher, soft_prompt=prompt.vectors, multiplier=multiplier
        )
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def method_topk(
    session: ModelSession,
    method: str,
    layer: int,
    states: Float[Tensor, "batch d_model"],
    teacher: Int[Tensor, "batch fed"],
    artefacts: Artefacts,
    k: int,
    chunk: int = 32,
) -> tuple[Tensor, Tensor]:
    """Top-k ids and probabilities ``[batch, horizon, k]`` (CPU), computed in chunks."""
    ids, probs = [], []
    horizon = teacher.shape[1] + 1
    with torch.inference_mode():
        for begin in range(0, states.shape[0], chunk):
            part, fed = states[begin : begin + chunk], teacher[begin : begin + chunk]
            if method == "direct":  # one distribution per state: the same guess for every N
                logits = session.decode_resid(part)[:, None]
            else:
                logits = method_logits(session, method, layer, part, fed, artefacts)
            logits = logits.float()
            # top-k of the logits and exp(logit − logsumexp): no 262k-wide softmax is materialised
            values, top = logits.topk(k, dim=-1)
            values = (values - logits.logsumexp(-1, keepdim=True)).exp()
            ids.append(top.expand(-1, horizon, -1).cpu())
            probs.append(values.expand(-1, horizon, -1).cpu())
    return torch.cat(ids), torch.cat(probs)
