"""Closed-form ridge maps and batched hidden-state collection for the neurosymbolic probe.

Hidden states are collected with one batched forward per group of right-padded sequences
(causal attention: padding after a sequence cannot change its states), hooking only the residual
streams asked for and stopping the forward right after the deepest one (so no 262k-wide
unembedding is computed for the whole batch). Logits, when needed, are decoded only at the answer
positions from the last block's output with the session's final norm + unembedding.

Few-shot prompts repeat a handful of solved shot lines: with ``prefix_lengths`` each distinct
prefix runs once (its keys and values kept in the Hugging Face KV cache) and only the rest of each
sequence is computed, attending to the cached prefix. Causal attention makes the states after the
prefix the same function of the tokens either way (equal to float tolerance; a test checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslab.models.session import ModelSession, StopForward
from lenslab.progress import NO_PROGRESS, Progress


# ------------------------------------------------------------------------------------------ ridge
@dataclass
class LinearMap:
    """``y = (x - input_mean) @ weight + output_mean``: an affine map fitted on centred data."""

    weight: Float[Tensor, "d_in d_out"]
    input_mean: Float[Tensor, " d_in"]
    output_mean: Float[Tensor, " d_out"]
    alpha: float = 0.0
    input_radius: float | None = None  # 99th percentile of ‖x − input_mean‖ over the fitted inputs

    def calibrate(self, x: Float[Tensor, "n d_in"]) -> LinearMap:
        """Record how far the inputs it was fitted on lie from their mean (see :meth:`covers`)."""
        distances = (x.to(self.weight) - self.input_mean).norm(dim=-1).double()
        self.input_radius = float(torch.quantile(distances, 0.99))
        return self

    def covers(self, x: Float[Tensor, "n d_in"], margin: float = 1.5) -> list[bool]:
        """Whether each input lies within ``margin`` × the fitted inputs' radius (True if uncalibrated).

        A linear map answers for any input; far outside its training inputs the answer means
        nothing (on Gemma 3 270M, non-arithmetic states give problem vectors 15-70× too long and
        operation scores ≫ 1 that clear any score threshold).
        """
        if self.input_radius is None:
            return [True] * len(x)
        distances = (x.to(self.weight) - self.input_mean).norm(dim=-1)
        return (distances <= margin * self.input_radius).tolist()

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """Apply the map (in the weight's dtype, on the weight's device)."""
        x = x.to(self.weight)
        return (x - self.input_mean) @ self.weight + self.output_mean


def ridge_path(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], alphas: Sequence[float]
) -> list[LinearMap]:
    """Ridge solutions for several penalties from one eigendecomposition (float64 inside).

    The penalty is relative: λ = α · tr(XᵀX)/d_in on centred X, so one α grid works for
    residual streams of any scale (Gemma's norms reach thousands). With fewer samples than
    features the same solution is computed in sample space (n×n instead of d×d).
    """
    e = _Eigen.of(x, y, alphas)
    x_mean, y_mean, xc, scale, dual = e.x_mean, e.y_mean, e.xc, e.scale, e.dual
    eigenvalues, eigenvectors, projected = e.eigenvalues, e.eigenvectors, e.projected
    maps = []
    for alpha in alphas:
        shrink = 1.0 / (eigenvalues + alpha * scale + 1e-12 * max(scale, 1e-30))
        weight = eigenvectors @ (shrink[:, None] * projected)
        if dual:  # W = Xᵀ (XXᵀ + λI)⁻¹ Y, identical to (XᵀX + λI)⁻¹ XᵀY
            weight = xc.T @ weight
        maps.append(LinearMap(weight.to(x.dtype), x_mean.to(x.dtype), y_mean.to(x.dtype), alpha=float(alpha)))
    return maps


def ridge_predictions(
    x: Float[Tensor, "n d_in"],
    y: Float[Tensor, "n d_out"],
    alphas: Sequence[float],
    x_new: Float[Tensor, "m d_in"],
) -> list[Float[Tensor, "m d_out"]]:
    """``ridge_path(x, y, alphas)[k](x_new)`` for every penalty, without forming any weight matrix.

    Choosing a penalty on validation rows needs only the predictions there. The maps'
    ``d_in × d_out`` weights cost ``n·d_in·d_out`` each to form (the decoder's are 2048 × 11,520
    per penalty); the predictions go through the same eigendecomposition in ``m`` rows instead.
    Same penalty scale and (primal or sample-space) solution as :func:`ridge_path`; float64 inside.
    """
    e = _Eigen.of(x, y, alphas)
    xc, scale, dual = e.xc, e.scale, e.dual
    eigenvalues, eigenvectors, projected = e.eigenvalues, e.eigenvectors, e.projected
    new_c = x_new.to(xc) - e.x_mean
    # x_new W = x_new Xᵀ V S Vᵀ Y (dual) or x_new V S Vᵀ XᵀY (primal): V, S from the eigh above.
    left = (new_c @ xc.T if dual else new_c) @ eigenvectors
    out = []
    for alpha in alphas:
        shrink = 1.0 / (eigenvalues + alpha * scale + 1e-12 * max(scale, 1e-30))
        out.append(((left * shrink) @ projected + e.y_mean).to(x.dtype))
    return out


def ridge_fit(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], alpha: float = 1e-3) -> LinearMap:
    """One ridge solution (see :func:`ridge_path` for the penalty's scale)."""
    return ridge_path(x, y, [alpha])[0]


def mean_cosine(pred: Float[Tensor, "n d"], target: Float[Tensor, "n d"]) -> float:
    """Mean cosine similarity between rows."""
    return float(torch.nn.functional.cosine_similarity(pred.float(), target.float(), dim=-1).mean())


# ------------------------------------------------------------------------------------ collection
@dataclass
class Merge:
    """Vectors to merge into the residual stream after ``layer``: h ← (1−w)·h + w·vector.

    ``vectors[i]`` holds one row per answer step of sequence ``i`` (empty: no intervention) and
    ``starts[i]`` the position of its first step (the last prompt token).
    """

    layer: int
    weight: float
    vectors: list[Float[Tensor, "steps d_model"]]
    starts: list[int]


@dataclass
class Collected:
    """Residual streams at the requested positions, plus answer-token statistics if asked for."""

    states: dict[int, list[Float[Tensor, "n_pos d_model"]]]  # layer -> one tensor per sequence
    target_logprob: list[Float[Tensor, " n_pos"]] | None = None
    argmax: list[Int[Tensor, " n_pos"]] | None = None


def merge_hook(mask: Tensor, replacement: Float[Tensor, "batch seq d_model"], weight: float):  # -> HookFn
    """A hook writing (1−w)·h + w·replacement where ``mask`` [batch, seq] is true."""

    def hook(resid: Tensor, *, hook=None) -> Tensor:
        seq = resid.shape[1]
        chosen = mask[:, :seq, None]
        merged = (1.0 - weight) * resid + weight * replacement[:, :seq].to(resid.dtype)
        return torch.where(chosen, merged, resid)

    return hook


def merge_tensors(
    merge: Merge, rows: Sequence[int], seq_len: int, d_model: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The mask and replacement tensors of a merge for the sequences ``rows`` of a batch."""
    mask = torch.zeros(len(rows), seq_len, dtype=torch.bool, device=device)
    replacement = torch.zeros(len(rows), seq_len, d_model, device=device)
    for b, i in enumerate(rows):
        vectors = merge.vectors[i]
        if vectors is None or len(vectors) == 0:
            continue
        steps = min(len(vectors), seq_len - merge.starts[i])
        mask[b, merge.starts[i] : merge.starts[i] + steps] = True
        replacement[b, merge.starts[i] : merge.starts[i] + steps] = vectors[:steps].to(device)
    return mask, replacement


def collect(
    session: ModelSession,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    targets: Sequence[Sequence[int]] | None = None,
    merge: Merge | None = None,
    batch_size: int = 16,
    prefix_lengths: Sequence[int] | None = None,
    progress: Progress = NO_PROGRESS,
    message: str = "collecting hidden states",
) -> Collected:
    """Run ``sequences`` in length-sorted, right-padded batches and keep only what is asked for.

    ``positions[i]`` are the positions of sequence ``i`` to keep; with ``targets`` (one token id
    per kept position) the log-probability of each target and the argmax token at each kept
    position are returned too (logits decoded only there). A ``merge`` is an intervention hook
    of the same :meth:`~lenslab.models.session.ModelSession.capture`, which stops the forward
    right after the deepest residual stream needed.

    ``prefix_lengths[i]`` (optional) says that the first tokens of sequence ``i`` are a prefix
    that other sequences may share (few-shot lines): each distinct prefix runs once and is reused
    from the KV cache (see :func:`_collect_after_prefixes`). Kept positions and merge starts must
    then lie at or after the prefix.
    """
    if len(sequences) != len(positions):
        raise ValueError("one list of positions per sequence is needed")
    if targets is not None and [len(t) for t in targets] != [len(p) for p in positions]:
        raise ValueError("one target token per kept position is needed")
    if prefix_lengths is not None:
        return _collect_after_prefixes(
            session,
            sequences,
            positions,
            layers,
            targets,
            merge,
            batch_size,
            prefix_lengths,
            progress,
            message,
        )
    layers = sorted({session.check_layer(layer) for layer in layers})
    need_logits = targets is not None
    deepest = max([*layers, session.n_layers - 1 if need_logits else -1, merge.layer if merge else -1])
    kept = sorted(set(layers) | ({session.n_layers - 1} if need_logits else set()))
    last = session.resid_name(session.n_layers - 1)  # its output decodes to the logits
    pad_id = session.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    device = session.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    states: dict[int, list[Tensor | None]] = {layer: [None] * len(sequences) for layer in kept}
    target_logprob: list[Tensor | None] = [None] * len(sequences)
    argmax: list[Tensor | None] = [None] * len(sequences)
    n_batches = (len(order) + batch_size - 1) // batch_size
    for batch_index, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        seq_len = max(len(sequences[i]) for i in rows)
        tokens = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
        for b, i in enumerate(rows):
            tokens[b, : len(sequences[i])] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
        tokens = tokens.to(device)
        hooks = []
        if merge is not None:
            mask, replacement = merge_tensors(merge, rows, seq_len, session.d_model, device)
            hooks.append((session.resid_name(merge.layer), merge_hook(mask, replacement, merge.weight)))
        names = [session.resid_name(layer) for layer in sorted({*kept, deepest})]
        captured = session.capture(tokens, names, hooks=hooks)
        indices = [torch.as_tensor(list(positions[i]), dtype=torch.long, device=device) for i in rows]
        for b, i in enumerate(rows):
            for layer in kept:
                states[layer][i] = captured[session.resid_name(layer)][b, indices[b]].float()
        if need_logits:
            scored = _score_answers(
                session, [captured[last][b, indices[b]] for b in range(len(rows))], [targets[i] for i in rows]
            )
            for b, i in enumerate(rows):
                target_logprob[i], argmax[i] = scored[b]
        progress((batch_index + 1) / n_batches, f"{message}: batch {batch_index + 1}/{n_batches}")
    return Collected(
        states={layer: states[layer] for layer in layers},  # type: ignore[misc]
        target_logprob=target_logprob if need_logits else None,  # type: ignore[arg-type]
        argmax=argmax if need_logits else None,  # type: ignore[arg-type]
    )


def _collect_after_prefixes(
    session: ModelSession,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    targets: Sequence[Sequence[int]] | None,
    merge: Merge | None,
    batch_size: int,
    prefix_lengths: Sequence[int],
    progress: Progress,
    message: str,
) -> Collected:
    """:func:`collect` computing each distinct prefix once (KV cache) and then only the suffixes.

    Prefixes of one length run together in one forward (no padding); its cache is indexed to
    give each suffix batch its rows' prefixes (``reorder_cache`` selects batch rows). Suffixes are
    right-padded (padding after a sequence cannot change it). The hooks are attached once for the
    whole collection; they act only in suffix passes, where position ``p`` of a sequence is
    position ``p - prefix`` of its suffix.
    """
    if len(prefix_lengths) != len(sequences):
        raise ValueError("one prefix length per sequence is needed")
    for i, (sequence, prefix) in enumerate(zip(sequences, prefix_lengths, strict=True)):
        if not 1 <= prefix < len(sequence):
            raise ValueError(f"prefix_lengths[{i}] must be in [1, {len(sequence) - 1}], got {prefix}")
        if min(positions[i], default=prefix) < prefix:
            raise ValueError(f"positions of sequence {i} must lie at or after its prefix ({prefix})")
        if merge is not None and len(merge.vectors[i]) and merge.starts[i] < prefix:
            raise ValueError(f"the merge of sequence {i} must start at or after its prefix ({prefix})")
    layers = sorted({session.check_layer(layer) for layer in layers})
    need_logits = targets is not None
    kept = sorted(set(layers) | ({session.n_layers - 1} if need_logits else set()))
    deepest = max([*kept, merge.layer if merge else -1])
    names = {session.resid_name(layer): layer for layer in sorted({*kept, deepest})}
    merge_name = session.resid_name(merge.layer) if merge is not None else None
    last = session.resid_name(session.n_layers - 1)
    pad_id = session.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    device = session.device
    states: dict[int, list[Tensor | None]] = {layer: [None] * len(sequences) for layer in kept}
    target_logprob: list[Tensor | None] = [None] * len(sequences)
    argmax: list[Tensor | None] = [None] * len(sequences)
    # the current suffix batch, read by the hook: None while a prefix runs (hooks inactive)
    batch: dict[str, Any] = {"active": False}

    def on_resid(resid: Tensor, *, hook: Any) -> Tensor | None:
        if not batch["active"]:
            return None
        if hook.name == merge_name and batch["mask"] is not None:
            resid = merge_hook(batch["mask"], batch["replacement"], merge.weight)(resid)  # type: ignore[union-attr]
        if hook.name in names:
            batch["box"][hook.name] = resid.detach().clone()
            if len(batch["box"]) == len(names):
                raise StopForward
        return resid

    by_length: dict[int, list[int]] = {}
    for i, prefix in enumerate(prefix_lengths):
        by_length.setdefault(prefix, []).append(i)
    n_batches = sum((len(rows) + batch_size - 1) // batch_size for rows in by_length.values())
    done = 0
    hook_points = sorted({*names, *([merge_name] if merge_name else [])})
    with session.hooks([(name, on_resid) for name in hook_points]) as model, torch.inference_mode():
        for prefix, members in sorted(by_length.items()):
            distinct = list(dict.fromkeys(tuple(sequences[i][:prefix]) for i in members))
            row_of = {tokens: r for r, tokens in enumerate(distinct)}
            batch["active"] = False
            cache = model.hf(
                input_ids=torch.as_tensor(distinct, dtype=torch.long, device=device),
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
            order = sorted(members, key=lambda i: len(sequences[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                seq_len = max(len(sequences[i]) for i in rows) - prefix
                tokens = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
                for b, i in enumerate(rows):
                    tokens[b, : len(sequences[i]) - prefix] = torch.as_tensor(
                        list(sequences[i][prefix:]), dtype=torch.long
                    )
                cache_rows = [row_of[tuple(sequences[i][:prefix])] for i in rows]
                rows_cache = _rows_of(cache, torch.as_tensor(cache_rows, device=device))
                batch.update(active=True, box={}, mask=None, replacement=None)
                if merge is not None:
                    shifted = Merge(
                        merge.layer,
                        merge.weight,
                        [merge.vectors[i] for i in rows],
                        [merge.starts[i] - prefix for i in rows],
                    )
                    batch["mask"], batch["replacement"] = merge_tensors(
                        shifted, range(len(rows)), seq_len, session.d_model, device
                    )
                model.hf(
                    input_ids=tokens.to(device), past_key_values=rows_cache, use_cache=True, logits_to_keep=1
                )
                batch["active"] = False
                captured = batch["box"]
                if len(captured) != len(names):
                    raise ValueError(f"hook point(s) {sorted(set(names) - set(captured))} did not fire")
                indices = [
                    torch.as_tensor([p - prefix for p in positions[i]], dtype=torch.long, device=device)
                    for i in rows
                ]
                for b, i in enumerate(rows):
                    for layer in kept:
                        states[layer][i] = captured[session.resid_name(layer)][b, indices[b]].float()
                if need_logits:
                    scored = _score_answers(
                        session,
                        [captured[last][b, indices[b]] for b in range(len(rows))],
                        [targets[i] for i in rows],  # type: ignore[index]
                    )
                    for b, i in enumerate(rows):
                        target_logprob[i], argmax[i] = scored[b]
                done += 1
                progress(done / n_batches, f"{message}: batch {done}/{n_batches}")
    return Collected(
        states={layer: states[layer] for layer in layers},  # type: ignore[misc]
        target_logprob=target_logprob if need_logits else None,  # type: ignore[arg-type]
        argmax=argmax if need_logits else None,  # type: ignore[arg-type]
    )


def _rows_of(cache: Any, rows: Int[Tensor, " batch"]) -> Any:
    """A new KV cache holding the given batch rows of ``cache``, which stays unchanged.

    Each layer is copied shallowly and then re-indexed (``reorder_cache`` replaces its key and value
    tensors by ``index_select`` copies; a forward then concatenates to those, never writing into
    the shared prefix tensors), so the prefix's tensors are not deep-copied first only to be
    replaced.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.reorder_cache(rows)
    return selected


def _score_answers(
    session: ModelSession,
    finals: Sequence[Float[Tensor, "n_pos d_model"]],
    targets: Sequence[Sequence[int]],
) -> list[tuple[Float[Tensor, " n_pos"], Int[Tensor, " n_pos"]]]:
    """Each sequence's target log-probabilities and argmax tokens, decoded in one product per batch.

    The unembedding (262k × 640 for Gemma, 0.7 GB in float32) is read once for all kept positions
    of the batch instead of once per sequence: the same numbers (each row's logits do not depend
    on the other rows), several times less memory traffic.
    """
    sizes = [len(f) for f in finals]
    hidden = torch.cat(list(finals))
    wanted = torch.as_tensor([t for row in targets for t in row], dtype=torch.long, device=hidden.device)
    logprob_parts, argmax_parts = [], []
    for chunk in range(0, len(hidden), _DECODE_ROWS):  # bounds the [rows, vocab] logits in memory
        logits = session.decode_resid(hidden[chunk : chunk + _DECODE_ROWS]).float()
        picked = wanted[chunk : chunk + _DECODE_ROWS, None]
        logprob_parts.append(logits.log_softmax(-1).gather(-1, picked)[:, 0])
        argmax_parts.append(logits.argmax(-1))
    target_logprob, argmax = torch.cat(logprob_parts), torch.cat(argmax_parts)
    return list(zip(target_logprob.split(sizes), argmax.split(sizes), strict=True))


_DECODE_ROWS = 128  # positions decoded per product: 128 × 262k float32 logits ≈ 134 MB


@dataclass(frozen=True)
class _Eigen:
    """What every ridge penalty shares: centred data, the penalty scale and one eigendecomposition.

    The penalty is relative (λ = α · tr(XᵀX)/d_in on centred X); with fewer samples than
    features the Gram matrix is taken in sample space (n×n instead of d×d). Float64 inside.
    """

    x_mean: Tensor
    y_mean: Tensor
    xc: Tensor
    scale: float
    dual: bool
    eigenvalues: Tensor
    eigenvectors: Tensor
    projected: Tensor

    @classmethod
    def of(cls, x: Tensor, y: Tensor, alphas: Sequence[float]) -> _Eigen:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if x.shape[0] < 2:
            raise ValueError("ridge needs at least two samples")
        if any(a < 0 for a in alphas) or not alphas:
            raise ValueError(f"alphas must be non-negative and non-empty, got {list(alphas)}")
        x64, y64 = x.double(), y.double()
        x_mean, y_mean = x64.mean(0), y64.mean(0)
        xc, yc = x64 - x_mean, y64 - y_mean
        scale = float((xc * xc).sum()) / x.shape[1]  # tr(XᵀX) / d_in
        dual = x.shape[0] < x.shape[1]  # fewer samples than features: solve in sample space
        gram = xc @ xc.T if dual else xc.T @ xc
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        eigenvalues = eigenvalues.clamp_min(0.0)
        projected = eigenvectors.T @ (yc if dual else xc.T @ yc)
        return cls(x_mean, y_mean, xc, scale, dual, eigenvalues, eigenvectors, projected)
