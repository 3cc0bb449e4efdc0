"""ModelSession: the one owner of a loaded model.

Every probe talks to the model through a session. The session knows the device and dtype, turns
prompts into tokens (with BOS handling and a length limit), returns only the activations asked
for, and owns a fair re-entrant lock (``models/scheduler.py``) so that several browser sessions
sharing one model never interleave their forward passes or see each other's hooks, while a short
job does not wait for a long one to finish: long runs give the model up between forward passes.
Hooks are only ever attached inside ``session.hooks(...)``, which removes them on exit, also
when the probe raises.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import guards, hooknames, loading
from lenslab.models.scheduler import FairLock

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
    lock: FairLock = field(default_factory=FairLock, repr=False)  # fair, re-entrant; see scheduler.py
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

    def __post_init__(self) -> None:
        skip_unhooked_norm_statistics(self.bridge)

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
    def check_position(position: int, seq_len: int, name: str = "position") -> int:
        """Return ``position`` (negative counts from the end) or raise a ValueError naming field ``name``."""
        if not isinstance(position, int | float) or int(position) != position:
            raise ValueError(f"{name} must be an integer, got {position!r}")
        position = int(position)
        if not -seq_len <= position < seq_len:
            raise ValueError(
                f"{name} {position} out of range: the prompt has {seq_len} tokens "
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
            names = frozenset(self._hook_table().points)
            self.__dict__["_hook_names"] = names
        return names

    def _hook_table(self) -> _HookTable:
        """Every hook point by name (aliases included) and the alias → canonical map, built once.

        The hook points are fixed once the bridge is built. The bridge's own ``hooks()`` rebuilds
        this table (a copy plus ≈ 9,000 alias resolutions for Gemma 3 270M, ≈ 16 ms on one CPU
        thread) up to three times per context, more than a forward stopped at a middle layer.
        """
        table = self.__dict__.get("_hook_table_cache")
        if table is None:
            from transformer_lens.model_bridge.bridge import build_alias_to_canonical_map

            points = dict(self.bridge.hook_dict)
            table = _HookTable(points=points, canonical=build_alias_to_canonical_map(points))
            self.__dict__["_hook_table_cache"] = table
        return table

    def _resolve_hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
    ) -> list[_Attachment]:
        """The hook points each ``(name or filter, fn)`` pair attaches to, as the bridge resolves them.

        Same rules as ``TransformerBridge.hooks``: a string name is resolved through the alias map
        and refused (``ValueError``) when gated off (e.g. ``attn.hook_result`` without
        ``use_attn_result``); a filter is applied to every name, aliases included, attaches once
        per hook point under its canonical name and skips gated-off points with a warning.
        """
        table = self._hook_table()
        bridge = self.bridge
        compat = bool(getattr(bridge, "compatibility_mode", False))
        out: list[_Attachment] = []
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for target, fn in pairs:
                if isinstance(target, str):
                    name = table.canonical.get(target, target)
                    point = table.points.get(name, table.points[target])
                    bridge.check_hooks_to_add(name)
                    aliases = [n for n in (point.name, name) if n] if compat and name != point.name else None
                    out.append(_Attachment(point, _HookCall(fn), direction, aliases))
                    continue
                seen: set[int] = set()
                for name, point in table.points.items():
                    if not target(name) or id(point) in seen:
                        continue
                    seen.add(id(point))
                    use = point.name or name
                    if bridge._gated_hook_reason(use) is not None:
                        warnings.warn(
                            f"hooks(): filter matched gated-off hook name {use!r}, skipped",
                            stacklevel=3,
                        )
                        continue
                    aliases = [n for n in (point.name, use) if n] if compat and use != point.name else None
                    out.append(_Attachment(point, _HookCall(fn), direction, aliases))
        return out

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
    ) -> Iterator[HookedModel]:
        """Hold the model lock with ``fwd_hooks`` attached; always removes them on exit.

        Hook functions follow TransformerLens' signature ``fn(tensor, *, hook)``. Yields a
        :class:`HookedModel` whose forwards each pass the memory and time guards; a hook may
        raise :class:`StopForward` to end a forward early (the runner swallows it).
        """
        known = self.hook_names
        for name, _ in [*fwd_hooks, *bwd_hooks]:
            if isinstance(name, str) and name not in known:
                raise ValueError(f"unknown hook point {name!r} for {self.model_id}")
        resolved = self._resolve_hooks(fwd_hooks, bwd_hooks)
        guards.check_deadline()
        with self.lock.exclusive():  # no other job runs while these hooks are attached
            live: list[_AttachedHooks] = self.__dict__.setdefault("_live_hooks", [])
            attached = _AttachedHooks(resolved)
            live.append(attached)
            try:
                attached.attach()
                yield HookedModel(self, attached)
            finally:
                attached.detach()
                live.remove(attached)
                # The full reset walks every module (≈0.1 s, more than a short prompt's forward),
                # so it runs only when something was left attached; inside an enclosing context
                # only the hooks no live context owns come off.
                if self.active_hook_count() > sum(a.count for a in live):
                    if live:
                        _remove_unowned(self._hook_table(), live)
                    else:
                        self.bridge.reset_hooks(including_permanent=False)
        self.lock.yield_point()  # between forward passes a waiting shorter job may go first

    def capture(
        self,
        tokens: Int[Tensor, "batch seq"],
        names: Sequence[str],
        *,
        hooks: Sequence[tuple[str, HookFn]] = (),
        stop_early: bool = True,
    ) -> dict[str, Tensor]:
        """Activations ``names`` for ``tokens`` from one forward that stops once all have fired.

        Layers after the last wanted hook never run, which makes collecting early and middle
        activations several times cheaper than a full forward (capturing ``FINAL_NORM`` skips
        the unembedding). ``hooks`` (interventions such as an SAE splice) run in the same pass.
        Captured tensors are detached copies on the model's device.
        """
        wanted = list(dict.fromkeys(names))
        if not wanted:
            raise ValueError("capture needs at least one hook name")
        box: dict[str, Tensor] = {}

        def grab(activation: Tensor, *, hook: Any) -> None:
            box[hook.name] = activation.detach().clone()
            if stop_early and len(box) == len(wanted):
                raise StopForward

        unknown = [name for name in wanted if name not in self.hook_names]
        if unknown:
            raise ValueError(f"unknown hook point(s) {unknown} for {self.model_id}")
        # One name filter for all the wanted names: a single hook function, called once per point.
        wanted_set = frozenset(wanted)
        with self.hooks([*hooks, (wanted_set.__contains__, grab)]) as model, torch.inference_mode():
            model.forward(tokens, return_type=None, cached=wanted)
        missing = [name for name in wanted if name not in box]
        if missing:
            raise ValueError(f"hook point(s) {missing} did not fire during the forward pass")
        return box

    def logits(
        self, tokens: Int[Tensor, "batch seq"], hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> Float[Tensor, "batch seq vocab"]:
        """Logits of one (guarded, inference-mode) forward with intervention ``hooks`` attached."""
        with self.hooks(hooks) as model, torch.inference_mode():
            return model.forward(tokens)

    def generate_greedy(
        self,
        tokens: Int[Tensor, "batch seq"],
        n_new: int,
        *,
        hooks: Sequence[tuple[str, HookFn]] = (),
        on_prefill: Callable[[], None] | None = None,
        logits_to_keep: int = 1,
    ) -> tuple[Int[Tensor, "batch n_new"], list[Float[Tensor, "batch keep vocab"]]]:
        """Greedy continuation of ``tokens`` with the KV cache, under ``hooks``.

        Returns the ``n_new`` chosen tokens and each step's kept logits (step 0 is the prefill,
        keeping its last ``logits_to_keep`` positions; 0 keeps all). ``on_prefill`` is called
        after the prefill so that hooks can tell the prefill from the incremental steps.
        """
        if n_new < 1:
            raise ValueError(f"n_new must be ≥ 1, got {n_new}")
        chosen: list[Tensor] = []
        kept: list[Tensor] = []
        with self.hooks(hooks) as model, torch.inference_mode():
            out = model.hf(input_ids=tokens, use_cache=True, logits_to_keep=logits_to_keep)
            if on_prefill is not None:
                on_prefill()
            for step in range(n_new):
                kept.append(out.logits)
                chosen.append(out.logits[:, -1].float().argmax(-1))
                if step + 1 < n_new:
                    out = model.hf(
                        input_ids=chosen[-1][:, None],
                        past_key_values=out.past_key_values,
                        use_cache=True,
                        logits_to_keep=1,
                    )
        return torch.stack(chosen, 1), kept

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
        self.lock.yield_point()
        return ActivationRun(tokens=tokens, logits=logits, activations=activations)

    # ------------------------------------------------------------------ weights and final logits
    @property
    def hf_config(self) -> Any:
        """The Hugging Face config of the loaded model (read-only facts such as soft-caps)."""
        return self.bridge.original_model.config

    def final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm applied to residual-stream vectors.

        Calls the HF module, not the bridge's ``ln_final``: the bridge component carries hook points,
        and a job running in another thread may have hooks attached to them at this moment.
        """
        return self.hf_final_norm()(resid)

    def final_logits(self, final_hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-norm outputs: the unembedding, then the model's logit soft-cap if any.

        The one place lenslab turns a last hidden state into logits, so every probe decodes the
        same way the model does (Gemma 2 soft-caps its logits; Gemma 3, Llama and GPT-2 don't).
        """
        head = self.output_embedding()  # its weights, not its forward: that passes the bridge's hooks
        logits = torch.nn.functional.linear(final_hidden, head.weight, getattr(head, "bias", None))
        cap = getattr(self.hf_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def decode_resid(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from a residual-stream vector: final norm, then :meth:`final_logits` (logit lens)."""
        with torch.inference_mode():
            return self.final_logits(self.final_norm(resid))

    def answer_logits(
        self, final_hidden: Float[Tensor, "... d_model"], token_ids: Sequence[int]
    ) -> Float[Tensor, "... k"]:
        """Logits of ``token_ids`` only: those rows of the unembedding (and bias), then the soft-cap.

        Equal to ``final_logits(final_hidden)[..., token_ids]`` without the full-vocabulary product
        (262k columns for Gemma), for probes that score a few answer tokens over many runs.
        """
        ids = [int(t) for t in token_ids]
        if not ids or not all(0 <= t < self.d_vocab for t in ids):
            raise ValueError(f"token ids must be 1 or more ids in 0-{self.d_vocab - 1}, got {ids}")
        head = self.output_embedding()
        index = torch.tensor(ids, device=head.weight.device)
        with torch.inference_mode():
            logits = final_hidden.to(head.weight.dtype) @ head.weight[index].T
            bias = getattr(head, "bias", None)
            if bias is not None:
                logits = logits + bias[index]
            cap = getattr(self.hf_config, "final_logit_softcapping", None)
            return torch.tanh(logits / cap) * cap if cap else logits

    @property
    def unembed_matrix(self) -> Float[Tensor, "d_model vocab"]:
        """The unembedding W_U (detached)."""
        return self.bridge.unembed.W_U.detach()

    def input_embedding(self) -> torch.nn.Module:
        """The token-embedding module (applies the model's embedding scale, e.g. √d for Gemma)."""
        return self.bridge.original_model.get_input_embeddings()

    def output_embedding(self) -> torch.nn.Module:
        """The unembedding module (``lm_head``)."""
        return self.bridge.original_model.get_output_embeddings()

    def hf_layers(self) -> Sequence[torch.nn.Module]:
        """The HF decoder layers, for code that reads weights to compile its own operator."""
        model = self.bridge.original_model
        inner = getattr(model, "model", None) or getattr(model, "transformer", None)
        layers = getattr(inner, "layers", None)
        return layers if layers is not None else inner.h

    def block_component(self, layer: int, path: str) -> torch.nn.Module:
        """The HF module behind bridge component ``blocks.<layer>.<path>`` (e.g. ``mlp.out``)."""
        module: Any = self.bridge.blocks[self.check_layer(layer)]
        for part in path.split("."):
            module = getattr(module, part)
        return getattr(module, "original_component", module)

    def named_weights(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The model's parameters by HF name (for fingerprints and weight statistics)."""
        return self.bridge.original_model.named_parameters()

    def active_hook_count(self) -> int:
        """Number of user hooks currently attached to hook points (0 when the model is clean)."""
        tables = self.__dict__.get("_hook_point_tables")
        if tables is None:  # the hook points (and their hook dicts) are fixed once the bridge is built
            points = {id(hp): hp for hp in self._hook_table().points.values()}.values()
            tables = tuple(
                t for hp in points for t in (hp._forward_hooks, hp._forward_pre_hooks, hp._backward_hooks)
            )
            self.__dict__["_hook_point_tables"] = tables
        return sum(map(len, tables))  # one C-level pass: it runs at every hook context's exit

    def resid_name(self, layer: int) -> str:
        """Hook name of the residual stream after block ``layer`` (validated)."""
        return hooknames.resid(self.check_layer(layer))

    # ------------------------------------------------------------------ names, norms, dtype copies
    def canonical_hook_name(self, name: str) -> str:
        """The bridge's own name of hook point ``name``, resolving TransformerLens aliases.

        SAEs from sae-lens' registry name TransformerLens hooks (``blocks.0.hook_resid_pre``);
        hooks report, and :meth:`capture` keys, the canonical name (``blocks.0.hook_in``).
        """
        if name not in self.hook_names:
            raise ValueError(f"unknown hook point {name!r} for {self.model_id}")
        canonical = getattr(self.bridge.hook_dict[name], "name", None) or name
        return canonical if canonical in self.hook_names else name

    def hf_final_norm(self) -> torch.nn.Module:
        """The HF final norm (``model.norm`` / ``transformer.ln_f``), for code that reads its weights."""
        return getattr(self.bridge.ln_final, "original_component", self.bridge.ln_final)

    def converted(self, dtype: str | torch.dtype) -> ModelSession:
        """The session with its weights in ``dtype``: a copy made once and cached (self if already).

        The copy costs the parameters again at the new width (+2.1 GB for Gemma 3 270M in float64),
        stays on the same device and lives as long as this session; it has a lock of its own.
        """
        import copy
        import dataclasses

        target = _as_dtype(dtype)
        if self.dtype == target:
            return self
        with self.lock:
            copies: dict[torch.dtype, ModelSession] = self.__dict__.setdefault("_converted", {})
            if target not in copies:
                bridge = copy.deepcopy(self.bridge)
                # What ``bridge.to(target)`` does, without its loop that rebuilds (and discards)
                # the whole state dict once per parameter: seconds on the embedded model.
                if hasattr(bridge.cfg, "dtype"):
                    bridge.cfg.dtype = target
                torch.nn.Module.to(bridge, target)
                bridge.original_model = bridge.original_model.to(target)
                bridge.eval()
                copies[target] = dataclasses.replace(self, bridge=bridge, lock=FairLock())
            return copies[target]

    # ------------------------------------------------------------------------ decoding directions
    def decode_direction(self, direction: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logit effect per unit of residual-stream ``direction``: the final norm's weight, then W_U.

        The one way lenslab reads a direction (an SAE decoder row, a singular vector) as tokens:
        scaled elementwise by the final norm's weight (``1 + w`` for Gemma's RMSNorm), then
        multiplied by the unembedding, as the Jacobian probe does. The norm's per-token
        ``1/rms`` scale (positive), its bias and any logit soft-cap are left out: they do not
        depend on the direction, so the ranking of tokens is the model's.
        """
        final = self.hf_final_norm()
        weight = getattr(final, "weight", None)
        w_u = self.output_embedding().weight  # [vocab, d_model]
        dtype = torch.promote_types(torch.promote_types(direction.dtype, w_u.dtype), torch.float32)
        with torch.inference_mode():
            scaled = direction.to(w_u.device, dtype)
            if weight is not None:
                gemma_style = type(final).__name__.startswith("Gemma")  # x · (1 + w)
                scaled = scaled * (weight.to(dtype) + 1.0 if gemma_style else weight.to(dtype))
            return scaled @ w_u.to(dtype).T

    # ------------------------------------------------------------------ attention layout, norm parts
    def attention_windows(self) -> list[int | None]:
        """Per layer: the sliding-window size of a local attention layer, None for a global one.

        Read from the HF config: ``layer_types`` (``"sliding_attention"`` / ``"full_attention"``,
        Gemma 3 interleaves 5 local : 1 global) and ``sliding_window``; a model with a window and no
        ``layer_types`` slides in every layer unless ``use_sliding_window`` is off.
        """
        cfg = self.hf_config
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)
        if types:
            return [int(window) if t == "sliding_attention" and window else None for t in types]
        slides = bool(window) and getattr(cfg, "use_sliding_window", True) is not False
        return [int(window) if slides else None for _ in range(self.n_layers)]

    @staticmethod
    def norm_parts(module: torch.nn.Module) -> NormParts:
        """What a norm does after dividing by its scale: the elementwise weight, bias and centring.

        With its scale frozen, a norm is affine: ``(x − mean(x)·centers) / scale · weight + bias``.
        Gemma's RMSNorm multiplies by ``1 + w``, LayerNorm (GPT-2) centres and adds a bias, Llama's
        RMSNorm multiplies by ``w``. Direct logit attribution pushes each component through it.
        """
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        name = type(module).__name__
        if weight is not None:
            weight = weight.detach() + 1.0 if name.startswith("Gemma") else weight.detach()
        return NormParts(
            weight=weight,
            bias=None if bias is None else bias.detach(),
            centers=isinstance(module, torch.nn.LayerNorm) or name == "LayerNorm",
        )


@dataclass(frozen=True)
class NormParts:
    """A norm's affine part (:meth:`ModelSession.norm_parts`): weight (None: 1), bias (None: 0), centring."""

    weight: Float[Tensor, " d_model"] | None
    bias: Float[Tensor, " d_model"] | None
    centers: bool


class StopForward(Exception):
    """Raised by a hook to end a forward pass early; :class:`HookedModel` swallows it.

    The one stop-the-forward mechanism: layers after the hook never run.
    """


@dataclass(frozen=True)
class _HookTable:
    """The bridge's hook points by name (aliases included) and its alias → canonical name map."""

    points: dict[str, Any]  # name → transformer_lens HookPoint
    canonical: dict[str, str]


class _HookCall:
    """A hook function with a constant ``repr``.

    ``HookPoint.add_hook`` names its wrapper after ``repr(fn)``, which for a bound method of an
    object holding tensors formats the tensors on every attach.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: HookFn) -> None:
        self.fn = fn

    def __call__(self, tensor: Tensor, *, hook: Any) -> Tensor | None:
        return self.fn(tensor, hook=hook)

    def __repr__(self) -> str:
        return f"lenslab hook {getattr(self.fn, '__qualname__', type(self.fn).__name__)}"


@dataclass(frozen=True)
class _Attachment:
    """One hook function on one hook point (``aliases``: names it is called under, compatibility mode)."""

    point: Any  # transformer_lens HookPoint
    fn: _HookCall
    direction: str  # "fwd" | "bwd"
    aliases: list[str] | None = None


class _AttachedHooks:
    """The hooks of one ``session.hooks(...)`` context on the bridge; they come off between passes.

    Attaches straight to the hook points resolved once by the session (``HookPoint.add_hook``) and
    removes exactly the handles it added, so attaching costs microseconds instead of the bridge's
    hook-table rebuild, and hooks attached by an enclosing context stay.

    Taking them off lets the context lend the model to a shorter job between two of its forward
    passes (``FairLock.yield_pinned``) without that job's passes firing them. Backward hooks stay
    (a pending autograd graph may still need them), and so the context does not yield then.
    """

    def __init__(self, attachments: list[_Attachment]) -> None:
        self._attachments = attachments
        self._handles: list[tuple[Any, Any, str]] = []  # (hook point, LensHandle, direction)

    @property
    def movable(self) -> bool:
        """Whether the hooks may come off between passes (forward hooks only)."""
        return all(a.direction == "fwd" for a in self._attachments)

    def attach(self) -> None:
        for a in self._attachments:
            a.point.add_hook(a.fn, dir=a.direction, alias_names=a.aliases)
            handles = a.point.fwd_hooks if a.direction == "fwd" else a.point.bwd_hooks
            self._handles.append((a.point, handles[-1], a.direction))

    @property
    def count(self) -> int:
        """How many hooks this context has on the model now (0 while lent out)."""
        return len(self._handles)

    def owns(self, handle: Any) -> bool:
        """Whether ``handle`` (a TransformerLens ``LensHandle``) is one of this context's."""
        return any(mine is handle for _, mine, _ in self._handles)

    def detach(self) -> None:
        handles, self._handles = self._handles, []
        for point, handle, direction in reversed(handles):
            handle.hook.remove()
            attr = "fwd_hooks" if direction == "fwd" else "bwd_hooks"
            setattr(point, attr, [h for h in getattr(point, attr) if h is not handle])


def _remove_unowned(table: _HookTable, live: list[_AttachedHooks]) -> None:
    """Remove every non-permanent hook that no live ``session.hooks`` context attached."""
    for point in {id(p): p for p in table.points.values()}.values():
        for attr in ("fwd_hooks", "bwd_hooks"):
            kept = []
            for handle in getattr(point, attr):
                if handle.is_permanent or any(a.owns(handle) for a in live):
                    kept.append(handle)
                else:
                    handle.hook.remove()
            setattr(point, attr, kept)


class HookedModel:
    """The model as seen inside ``session.hooks(...)``: every forward is guarded.

    Each call checks the time limit and the memory budget, turns out-of-memory into a readable
    error and ends quietly when a hook raises :class:`StopForward`. Probes run the model only
    through this object or the session's own methods, never through the bridge.
    """

    def __init__(self, session: ModelSession, attached: _AttachedHooks | None = None) -> None:
        self._session = session
        self._attached = attached
        self._passes = 0

    def _guard(self, tokens: Tensor | None, embeds: Tensor | None, cached: Sequence[str]) -> None:
        if self._passes and self._attached is not None and self._attached.movable:
            # between two passes of this context: a shorter job may use the model, hooks off
            self._session.lock.yield_pinned(self._attached.detach, self._attached.attach)
        self._passes += 1
        shape = tokens.shape if tokens is not None else embeds.shape[:-1]  # type: ignore[union-attr]
        batch, seq = (int(shape[0]), int(shape[-1])) if len(shape) > 1 else (1, int(shape[-1]))
        guards.check_deadline()
        guards.check_run(self._session, seq, list(cached), batch=batch)

    def forward(
        self,
        tokens: Int[Tensor, "batch seq"],
        *,
        return_type: str | None = "logits",
        cached: Sequence[str] = (),
    ) -> Any:
        """The bridge forward (``return_type`` as TransformerLens: ``"logits"``, ``"loss"``, None).

        Returns None when a hook stopped the pass early. ``cached`` names the activations the
        caller's hooks keep, for the memory estimate.
        """
        self._guard(tokens, None, cached)
        with guards.oom_guard("the forward pass"):
            try:
                return self._session.bridge(tokens, return_type=return_type)
            except StopForward:
                return None

    __call__ = forward

    def hf(
        self,
        *,
        input_ids: Int[Tensor, "batch seq"] | None = None,
        inputs_embeds: Float[Tensor, "batch seq d_model"] | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Any:
        """The Hugging Face forward (KV cache, ``logits_to_keep``) with the session's hooks live.

        Returns HF's output (``.logits``, ``.past_key_values``), or None if a hook stopped it.
        """
        self._guard(input_ids, inputs_embeds, ())
        with guards.oom_guard("the forward pass"):
            try:
                inputs = {
                    "input_ids": input_ids,
                    "inputs_embeds": inputs_embeds,
                    "attention_mask": attention_mask,
                }
                cache = {"past_key_values": past_key_values, "use_cache": use_cache}
                return self._session.bridge.original_model(**inputs, **cache, logits_to_keep=logits_to_keep)
            except StopForward:
                return None


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


# ----------------------------------------------------------------------- norms without hooks inside
def skip_unhooked_norm_statistics(bridge: Any) -> int:
    """Let the bridge's norms skip the statistics only their inner hook points show; returns how many.

    TransformerBridge's ``NormalizationBridge`` computes every norm twice: once in Python for its
    ``hook_scale`` / ``hook_normalized`` points (x², mean, rsqrt, sqrt, x·rsqrt on the whole
    tensor), then HF's own module, whose output it returns unless a hook edited one of those two
    points. With no hook on either, the first computation is discarded, and on a CPU it was about
    a sixth of a forward stopped at a middle layer of Gemma 3 270M (six norms per block). Each norm
    gets a bound ``forward`` that returns HF's output directly (``hook_in`` and ``hook_out`` still
    fire) while both inner points are unhooked, and the bridge's own forward otherwise: the same
    tensors bit for bit (checked against the bridge's forward in the session tests). A bound method,
    so ``copy.deepcopy`` of the bridge (``converted``) rebinds it to the copy.
    """
    import types

    try:
        from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
    except ImportError:  # pragma: no cover - transformer-lens without the bridge
        return 0
    if not isinstance(bridge, torch.nn.Module):
        return 0
    count = 0
    for module in bridge.modules():
        kind = type(module)
        if (
            isinstance(module, NormalizationBridge)
            and kind.forward is NormalizationBridge.forward
            and kind._hf_autograd_forward_with_hooks is NormalizationBridge._hf_autograd_forward_with_hooks
        ):
            # object.__setattr__: the bridge's own __setattr__ would forward it to the HF module
            object.__setattr__(module, "forward", types.MethodType(_norm_forward_skipping_statistics, module))
            count += 1
    return count


def _norm_forward_skipping_statistics(self: Any, hidden_states: Tensor, **kwargs: Any) -> Tensor:
    """``NormalizationBridge.forward`` when ``hook_scale`` and ``hook_normalized`` carry no hook."""
    native = self.use_native_layernorm_autograd or getattr(self.config, "layer_norm_folding", False)
    inner = (self.hook_scale, self.hook_normalized)
    if (
        kwargs
        or not native
        or self.original_component is None
        or isinstance(self.original_component, torch.nn.Identity)
        or any(point.fwd_hooks or point.bwd_hooks for point in inner)
    ):
        return type(self).forward(self, hidden_states, **kwargs)
    hidden_states = self.hook_in(hidden_states)
    result = self.original_component(hidden_states)
    if result.dtype != hidden_states.dtype:
        result = result.to(hidden_states.dtype)
    return self.hook_out(result)
