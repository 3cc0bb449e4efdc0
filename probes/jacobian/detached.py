"""The detached forward: the model made exactly linear in its input embeddings for one input.

Golden ("Large Language Models are Locally Linear Mappings", 2025) freezes every nonlinear
*coefficient* of the forward pass at the value it takes on the real input: the normalisation
scale (RMSNorm / LayerNorm), the gate activation of gated MLPs (GeGLU, SwiGLU) or the ratio
act(z)/z of plain MLPs (GPT-2), and the softmax attention pattern (which also freezes Q, K,
RoPE cos/sin and any Q/K norms, since they only reach the output through the pattern). What is
left — embeddings → V → pattern·V → O, the up projection, the down projection, norm weights —
is linear, so with no additive biases ``y = Σ_i J_i x_i`` exactly, and with biases (GPT-2)
``y = Σ_i J_i x_i + b`` where ``b`` is the output for all-zero inputs.

How: TransformerBridge hooks, attached only through ``session.hooks`` (so they are removed on
exit, also after an exception) and named by :mod:`lenslab.models.hooknames`. The bridge
reimplements attention and fires ``hook_pattern`` on the post-softmax weights *before*
multiplying by V, and its norms fire ``hook_scale`` and rebuild their output from the hooked
scale; the MLP projections are LinearBridges with ``hook_out`` / ``hook_in``. So every
coefficient has a hook point where a recorded constant can replace it, and no HF module or
module-level function is monkey-patched (patching HF classes would be global state shared by
every session in the process). Pass 1 (:func:`record_coefficients`) runs the model normally and
records the coefficients; pass 2 (:class:`DetachedModel`, inside :func:`detached`) replaces them
with the recorded constants. The detached network is then run through the session's HF forward
with ``inputs_embeds``, stopped at the final norm (no unembedding: 60% of a Gemma forward is the
262k-wide unembedding, useless for hidden-state targets), on any batch of inputs: the constants
broadcast over the batch, so one forward on ``seq`` copies gives every token's exact
contribution.

x_i is the residual stream's input at position i (``blocks.0.hook_in``): for Gemma the token
embedding after its √d scaling, for GPT-2 token + position embedding (so the position embedding
is part of token i's contribution and ``b`` holds only the layers' biases).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models import hooknames
from lenslab.models.session import HookedModel, ModelSession, StopForward

SUPPORTED: dict[str, str] = {
    "Gemma3ForCausalLM": "gemma3",
    "LlamaForCausalLM": "llama",
    "GPT2LMHeadModel": "gpt2",
}
"""HF architecture class → family the detached forward knows how to linearise."""

COMPONENTS = ("resid", "attn", "mlp")


def model_family(session: ModelSession) -> str:
    """The detached-forward family of ``session``'s model, or a ValueError naming the supported ones."""
    family = SUPPORTED.get(session.architecture)
    if family is None:
        raise ValueError(
            f"the detached Jacobian does not support {session.architecture} ({session.model_id}); "
            f"supported architectures: {', '.join(sorted(SUPPORTED))} (Gemma 3, Llama/SmolLM, GPT-2)"
        )
    return family


def target_hook(session: ModelSession, layer: int | None, component: str = "resid") -> str:
    """Hook name of a Jacobian target: the final-norm state (``layer=None``) or a layer's part.

    ``resid`` is the residual stream after block ``layer``; ``attn`` and ``mlp`` are what the block
    adds to the residual stream (for Gemma after its post-attention / post-feed-forward norms), so
    ``resid[l] = resid[l-1] + attn[l] + mlp[l]`` holds exactly.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
    if layer is None:
        if component != "resid":
            raise ValueError("the final-norm target has no attention/MLP part: choose a layer")
        return hooknames.FINAL_NORM
    layer = session.check_layer(layer)
    if component == "resid":
        return hooknames.resid(layer)
    gemma = model_family(session) == "gemma3"
    if component == "attn":
        return hooknames.attn_post_norm(layer) if gemma else hooknames.attn_out(layer)
    return hooknames.mlp_post_norm(layer) if gemma else hooknames.mlp_out(layer)


@dataclass
class FrozenCoefficients:
    """Everything the detached forward holds constant, recorded from one real forward pass."""

    family: str
    tokens: Int[Tensor, "1 seq"]
    inputs: Float[Tensor, "1 seq d_model"]  # x_i: the residual stream's input (hooknames.resid_pre(0))
    logits: Float[Tensor, "1 seq vocab"] | None  # None when recorded up to a last layer only
    final_hidden: Float[Tensor, "1 seq d_model"] | None
    scales: dict[str, Tensor] = field(default_factory=dict)  # norm hook_scale → recorded value
    patterns: dict[str, Tensor] = field(default_factory=dict)  # attn hook_pattern → recorded value
    gates: dict[int, Tensor] = field(default_factory=dict)  # layer → act(gate) or act(z)/z
    outputs: dict[str, Tensor] = field(default_factory=dict)  # every Jacobian target, real forward

    @property
    def seq_len(self) -> int:
        """Number of input tokens."""
        return int(self.tokens.shape[-1])


def _recorded(name: str, n_layers: int, last_layer: int | None) -> bool:
    """Whether a per-layer coefficient ``name`` is recorded when layers ``0..n_layers-1`` run."""
    layer = hooknames.layer_of(name)
    return last_layer is None or (layer is not None and layer < n_layers)


def _mlp_act(session: ModelSession, layer: int) -> Any:
    hf_mlp = session.block_component(layer, "mlp")
    act = getattr(hf_mlp, "act_fn", None) or getattr(hf_mlp, "act", None)
    if act is None:
        raise ValueError(f"cannot find the MLP activation of layer {layer} in {session.model_id}")
    return act


def record_coefficients(
    session: ModelSession, tokens: Int[Tensor, "1 seq"], last_layer: int | None = None
) -> FrozenCoefficients:
    """Pass 1: run the model normally on ``tokens`` and record every coefficient to freeze.

    With ``last_layer`` the forward stops after that block (no later layers, no unembedding) and
    only layers ``0..last_layer`` are recorded: enough for targets up to that layer, and what
    a probe reading one middle layer needs (``logits`` and ``final_hidden`` are then None).
    """
    family = model_family(session)
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError("record_coefficients takes one prompt (tokens of shape [1, seq])")
    n_layers = session.n_layers if last_layer is None else session.check_layer(last_layer) + 1
    store: dict[str, Tensor] = {}

    def keep(tensor: Tensor, *, hook: Any) -> None:
        store[hook.name] = tensor.detach().clone()

    def keep_and_stop(tensor: Tensor, *, hook: Any) -> None:
        keep(tensor, hook=hook)
        raise StopForward

    def keep_scale(tensor: Tensor, *, hook: Any) -> Tensor:
        # Returning a new tensor makes the bridge rebuild the norm output from the scale in the
        # model's dtype (HF's RMSNorm upcasts to float32, which would cap float64 checks at 1e-7).
        store[hook.name] = tensor.detach().clone()
        return store[hook.name]

    names = sorted(
        n
        for n in session.hook_names
        if (hooknames.is_scale(n) or hooknames.is_pattern(n)) and _recorded(n, n_layers, last_layer)
    )
    for layer in range(n_layers):
        names += [hooknames.mlp_pre(layer), hooknames.mlp_hidden(layer)]
        if family != "gpt2":
            names.append(hooknames.mlp_gate(layer))
    targets = [hooknames.FINAL_NORM] if last_layer is None else []
    targets += [target_hook(session, layer, part) for layer in range(n_layers) for part in COMPONENTS]
    names += [hooknames.resid_pre(0), *targets]
    table = {name: keep_scale if hooknames.is_scale(name) else keep for name in names}
    if last_layer is not None:  # the block's output is its last hook: stop the forward there
        table[hooknames.resid(n_layers - 1)] = keep_and_stop
    with session.hooks(dispatch_hooks(session, table)) as model, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns when a hook returns a new norm scale
        logits = model(tokens)
    gates: dict[int, Tensor] = {}
    with torch.no_grad():
        for layer in range(n_layers):
            if family == "gpt2":
                pre = store[hooknames.mlp_pre(layer)]
                post = store[hooknames.mlp_hidden(layer)]
                # act(z) = z · (act(z)/z); at z = 0 the ratio's limit for GELU is 1/2.
                safe = torch.where(pre == 0, torch.ones_like(pre), pre)
                gates[layer] = torch.where(pre == 0, torch.full_like(pre, 0.5), post / safe)
            else:
                gates[layer] = _mlp_act(session, layer)(store[hooknames.mlp_gate(layer)])
    return FrozenCoefficients(
        family=family,
        tokens=tokens,
        inputs=store[hooknames.resid_pre(0)],
        logits=None if logits is None else logits.detach(),
        final_hidden=store.get(hooknames.FINAL_NORM),
        scales={k: v for k, v in store.items() if hooknames.is_scale(k)},
        patterns={k: v for k, v in store.items() if hooknames.is_pattern(k)},
        gates=gates,
        outputs={name: store[name] for name in targets},
    )


class DetachedModel:
    """The detached network as a function of the input embeddings (valid inside :func:`detached`).

    Call it on a batch of inputs ``x`` [batch, seq, d_model]; it returns the requested target
    activations, each [batch, seq, d]. Every batch row sees the same frozen coefficients, so the
    map is linear (affine for GPT-2) in each row's ``x``.
    """

    def __init__(self, session: ModelSession, coefficients: FrozenCoefficients) -> None:
        """Bind a session and recorded coefficients; hooks are attached by :func:`detached`."""
        self.session = session
        self.coefficients = coefficients
        self.model: HookedModel | None = None  # the hooked model, set by detached()
        self._captured: dict[str, Tensor] | None = None
        self._wanted: set[str] = set()
        self._stash: dict[int, Tensor] = {}

    # ------------------------------------------------------------------ hooks (live in detached())
    def hooks(self) -> list[tuple[str, Any]]:
        """The hook list that freezes every coefficient and captures requested targets."""
        coeffs = self.coefficients
        hooks: list[tuple[str, Any]] = []
        for name, value in coeffs.scales.items():
            hooks.append((name, _constant(value)))
        for name, value in coeffs.patterns.items():
            hooks.append((name, _constant(value)))
        for layer, gate in coeffs.gates.items():
            hooks.append((hooknames.mlp_pre(layer), self._stash_hook(layer)))
            hooks.append((hooknames.mlp_hidden(layer), self._gate_hook(layer, gate)))
        if coeffs.family == "gpt2":
            hooks.append((hooknames.POS_EMBED, lambda tensor, *, hook: torch.zeros_like(tensor)))
        return hooks

    def capture_hooks(self, names: Sequence[str]) -> list[tuple[str, Any]]:
        """Hooks that record the target activations of each call (the final norm's output always)."""
        return [(name, self._capture(name)) for name in dict.fromkeys([*names, hooknames.FINAL_NORM])]

    def _stash_hook(self, layer: int) -> Any:
        def stash(tensor: Tensor, *, hook: Any) -> None:
            self._stash[layer] = tensor

        return stash

    def _gate_hook(self, layer: int, gate: Tensor) -> Any:
        def apply(tensor: Tensor, *, hook: Any) -> Tensor:
            # Gated MLP: act(gate(x)) · up(x) with act(gate(x)) frozen; GPT-2: z · (act(z)/z).
            return gate * self._stash.pop(layer)

        return apply

    def _capture(self, name: str) -> Any:
        def capture(tensor: Tensor, *, hook: Any) -> None:
            if self._captured is not None and name in self._wanted:
                self._captured[name] = tensor
            if self._captured is not None and name == hooknames.FINAL_NORM:
                raise StopForward  # the last hidden state is all a call returns: skip the unembedding

        return capture

    # ----------------------------------------------------------------------------------- running
    def __call__(
        self, inputs: Float[Tensor, "batch seq d_model"], targets: Sequence[str] = (hooknames.FINAL_NORM,)
    ) -> dict[str, Float[Tensor, "batch seq d"]]:
        """Run the detached network on ``inputs``; returns ``{target hook: activation}``."""
        if self.model is None:
            raise RuntimeError("a DetachedModel runs only inside `with detached(session, coefficients)`")
        self._captured, self._wanted = {}, set(targets)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the bridge warns on every edited norm scale
                self.model.hf(inputs_embeds=inputs)
            captured = self._captured
        finally:
            self._captured, self._stash = None, {}
        return {name: captured[name] for name in targets}

    def logits(self, inputs: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq vocab"]:
        """Logits of the detached network (final norm + unembedding of the detached state)."""
        return self.session.final_logits(self(inputs)[hooknames.FINAL_NORM])


@contextmanager
def detached(
    session: ModelSession, coefficients: FrozenCoefficients, targets: Sequence[str] = ()
) -> Iterator[DetachedModel]:
    """Context manager: the model with every coefficient frozen at ``coefficients``.

    Holds the session lock; the hooks are attached through ``session.hooks`` and therefore
    removed on exit, also when the body raises. ``targets`` are the hook names (besides the
    final-norm output) that calls of the yielded :class:`DetachedModel` may return.
    """
    detached_model = DetachedModel(session, coefficients)
    table = dict([*detached_model.hooks(), *detached_model.capture_hooks(targets)])
    with session.hooks(dispatch_hooks(session, table)) as model:
        detached_model.model = model
        try:
            yield detached_model
        finally:
            detached_model.model = None


def dispatch_hooks(session: ModelSession, table: dict[str, Any]) -> list[tuple[Any, Any]]:
    """One filter hook that dispatches by hook name: ``{name: fn}`` → a ``session.hooks`` list.

    The bridge recomputes its 200-entry hook table for every string hook it attaches (≈20 ms
    each on CPU, 10 s for a few hundred hooks); a single name filter attaches them in one pass.
    Names must be the hook points' own names, as :mod:`lenslab.models.hooknames` spells them
    (hooks report those; a TransformerLens alias would never be dispatched).
    """
    known = session.hook_names
    unknown = [name for name in table if name not in known]
    if unknown:
        raise ValueError(f"unknown hook point(s) {unknown[:5]} for {session.model_id}")

    def dispatch(tensor: Tensor, *, hook: Any) -> Tensor | None:
        return table[hook.name](tensor, hook=hook)

    return [(table.__contains__, dispatch)]


def _constant(value: Tensor) -> Any:
    def replace(tensor: Tensor, *, hook: Any) -> Tensor:
        return value

    return replace
