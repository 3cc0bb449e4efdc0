"""ModelSession: the one owner of a loaded model.

Every probe talks to the model through a session. The session knows the device and dtype, turns
prompts into tokens (with BOS handling and a length limit), returns only the activations asked
for, and owns a re-entrant lock so that several browser sessions sharing one model never
interleave their forward passes or see each other's hooks. Hooks are only ever attached inside
``session.hooks(...)``, which removes them on exit, also when the probe raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import guards, loading

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
HookFn = Callable[..., Tensor | None]


def default_device() -> torch.device:
    """CUDA when present (the model then stays resident there), else CPU."""
    forced = os.environ.get("LENSLAB_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class ActivationRun:
    """What one forward pass returned: the tokens, the logits and the requested activations."""

    tokens: Int[Tensor, "batch seq"]
    logits: Float[Tensor, "batch seq vocab"]
    activations: dict[str, Tensor]


@dataclass
class ModelSession:
    """A loaded model plus everything needed to run it safely from probes, the app and notebooks.

    Build one with :meth:`load` (by name: embedded model, HF id or local folder) or
    :meth:`from_bridge` (tests and notebooks that already hold a ``TransformerBridge``).
    """

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    model_id: str
    max_tokens: int = 512
    prepend_bos: bool = True  # the model's convention; False for tokenizers that add no BOS
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    load_seconds: float = 0.0

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        name: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_tokens: int = 512,
        trust_remote_code: bool = False,
    ) -> ModelSession:
        """Load ``name`` (default: the embedded Gemma 3 270M) into a TransformerBridge.

        ``name`` may be an embedded model (``lenslab.models.loading.EMBEDDED``), a local HF
        folder or a Hugging Face id (needs a hub or the HF cache). Unknown names raise
        ``FileNotFoundError`` listing what is available offline.
        """
        from transformer_lens.model_bridge import TransformerBridge

        started = time.perf_counter()
        torch_dtype = _as_dtype(dtype)
        target = torch.device(device) if device is not None else default_device()
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
        resolved = loading.resolve(name)
        hf_model, tokenizer = loading.load_hf(resolved, torch_dtype, trust_remote_code)
        bridge = TransformerBridge.boot_transformers(
            resolved.bridge_name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=target,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
        )
        bridge.eval()
        session = cls(
            bridge=bridge,
            model_id=resolved.model_id,
            max_tokens=max_tokens,
            prepend_bos=resolved.prepend_bos,
        )
        session.load_seconds = time.perf_counter() - started
        return session

    @classmethod
    def from_bridge(cls, bridge: Any, model_id: str, max_tokens: int = 512) -> ModelSession:
        """Wrap an existing TransformerBridge (tests build tiny random ones)."""
        bridge.eval()
        return cls(bridge=bridge, model_id=model_id, max_tokens=max_tokens)

    # ------------------------------------------------------------------------------- properties
    @property
    def cfg(self) -> Any:
        """The bridge config (``n_layers``, ``d_model``, ``d_vocab`` ...)."""
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        """Vocabulary size."""
        return int(self.cfg.d_vocab)

    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return next(self.bridge.parameters()).dtype

    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer the bridge uses."""
        return self.bridge.tokenizer

    @property
    def architecture(self) -> str:
        """HF architecture class name, e.g. ``Gemma3ForCausalLM``."""
        archs = getattr(self.bridge.original_model.config, "architectures", None) or []
        return archs[0] if archs else type(self.bridge.original_model).__name__

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded model for sidebars and report provenance."""
        return {
            "model": self.model_id,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_vocab": self.d_vocab,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_params": sum(p.numel() for p in self.bridge.original_model.parameters()),
        }

    # ---------------------------------------------------------------------------------- tokens
    def tokenize(self, prompt: str, *, prepend_bos: bool | None = None) -> Int[Tensor, "1 seq"]:
        """Token ids for ``prompt`` on the model's device; validates emptiness and length.

        ``prepend_bos`` defaults to the model's own convention (``self.prepend_bos``).
        """
        text = validate_prompt(prompt)
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        tokens = self.bridge.to_tokens(text, prepend_bos=bos)
        if tokens.shape[-1] > self.max_tokens:
            raise ValueError(
                f"the prompt is {tokens.shape[-1]} tokens long; the limit is {self.max_tokens} "
                "tokens (shorten it or raise max_tokens)"
            )
        return tokens.to(self.device)

    def str_tokens(self, prompt: str | Tensor, *, prepend_bos: bool | None = None) -> list[str]:
        """Display strings of the prompt's tokens (BOS included), one per position."""
        tokens = self.tokenize(prompt, prepend_bos=prepend_bos) if isinstance(prompt, str) else prompt
        return self.decode_each(tokens.reshape(-1).tolist())

    def decode_each(self, token_ids: Iterable[int]) -> list[str]:
        """Decode each token id on its own (not joined), for labels and hovers."""
        return [self.tokenizer.decode([int(t)]) for t in token_ids]

    # ------------------------------------------------------------------------------- validation
    def check_layer(self, layer: int) -> int:
        """Return ``layer`` (negative counts from the end) or raise a readable ValueError."""
        if not isinstance(layer, int | float) or int(layer) != layer:
            raise ValueError(f"layer must be an integer, got {layer!r}")
        layer = int(layer)
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})"
            )
        return layer % self.n_layers

    def check_layers(self, layers: Sequence[int] | None) -> list[int]:
        """Validate a layer selection; ``None`` means all layers."""
        if layers is None:
            return list(range(self.n_layers))
        if len(layers) == 0:
            raise ValueError("choose at least one layer")
        return sorted({self.check_layer(layer) for layer in layers})

    @staticmethod
    def check_position(position: int, seq_len: int) -> int:
        """Return ``position`` (negative counts from the end) or raise a readable ValueError."""
        if not isinstance(position, int | float) or int(position) != position:
            raise ValueError(f"position must be an integer, got {position!r}")
        position = int(position)
        if not -seq_len <= position < seq_len:
            raise ValueError(
                f"position {position} out of range: the prompt has {seq_len} tokens "
                f"(0-{seq_len - 1}, or -1 for the last)"
            )
        return position % seq_len

    # ---------------------------------------------------------------------------------- running
    @property
    def hook_names(self) -> frozenset[str]:
        """Every hook point name (aliases included), computed once per session.

        The bridge rebuilds ``hook_dict`` on each access (≈4 ms for Gemma 3 270M); checking 18
        names against it one by one cost more than the forward pass it guarded.
        """
        names = self.__dict__.get("_hook_names")
        if names is None:
            names = frozenset(self.bridge.hook_dict)
            self.__dict__["_hook_names"] = names
        return names

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
    ) -> Iterator[Any]:
        """Hold the model lock with ``fwd_hooks`` attached; always removes them on exit.

        Hook functions follow TransformerLens' signature ``fn(tensor, *, hook)``. Yields the
        bridge so the caller can run forwards while the hooks are live.
        """
        known = self.hook_names
        for name, _ in [*fwd_hooks, *bwd_hooks]:
            if isinstance(name, str) and name not in known:
                raise ValueError(f"unknown hook point {name!r} for {self.model_id}")
        guards.check_deadline()
        with self.lock:
            try:
                with self.bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
                    yield self.bridge
            finally:
                self.bridge.reset_hooks(including_permanent=False)

    def run(
        self,
        prompt: str | Tensor,
        names: Iterable[str] = (),
        *,
        prepend_bos: bool | None = None,
    ) -> ActivationRun:
        """One forward pass returning logits and only the activations named in ``names``.

        Activations stay on the model's device (GPU when there is one); callers move the small
        results they keep to CPU.
        """
        tokens = self.tokenize(prompt, prepend_bos=prepend_bos) if isinstance(prompt, str) else prompt
        wanted = list(dict.fromkeys(names))
        known = self.hook_names
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"unknown hook point(s) {unknown} for {self.model_id}")
        guards.check_run(
            self, int(tokens.shape[-1]), wanted, batch=int(tokens.shape[0]) if tokens.ndim > 1 else 1
        )
        guards.check_deadline()
        with self.lock, torch.inference_mode(), guards.oom_guard("the forward pass"):
            if wanted:
                logits, cache = self.bridge.run_with_cache(tokens, names_filter=wanted)
                skipped = [n for n in wanted if n not in cache.cache_dict]
                if skipped:  # gated-off hook points exist in hook_dict but never fire
                    raise ValueError(f"hook point(s) {skipped} are not computed by {self.model_id}")
                activations = {n: cache[n] for n in wanted}
            else:
                logits, activations = self.bridge(tokens), {}
        return ActivationRun(tokens=tokens, logits=logits, activations=activations)

    def decode_resid(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from a residual-stream vector: final norm, then unembedding (logit lens)."""
        with torch.inference_mode():
            return self.bridge.unembed(self.bridge.ln_final(resid))

    def active_hook_count(self) -> int:
        """Number of user hooks currently attached to hook points (0 when the model is clean)."""
        return sum(
            len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks)
            for hp in set(self.bridge.hook_dict.values())
        )

    def resid_name(self, layer: int) -> str:
        """Hook name of the residual stream after block ``layer``."""
        return f"blocks.{self.check_layer(layer)}.hook_out"


def validate_prompt(prompt: Any) -> str:
    """Reject prompts that cannot be analysed, with a message a user understands."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: type some text to analyse")
    if "\x00" in prompt:
        raise ValueError("the prompt contains a NUL character; remove control characters")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates crash the tokenizer with a TypeError
        raise ValueError(
            f"the prompt contains a character that is not valid text ({exc.object[exc.start]!r} at "
            f"position {exc.start}); remove it"
        ) from None
    return prompt


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]
