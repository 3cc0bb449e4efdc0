"""Page latency: every registered probe's default config against the work it cannot avoid.

For each probe and each prompt length (8, 16, 64 tokens) the probe's wall time is measured beside
its **floor**, the unavoidable operations done as bare tensor work on the plain Hugging Face model
in the same run (interleaved, best of ``--repeat``, so load changes hit both alike):

- ``forward``: one HF forward with full logits (the generic lower bound for any probe that needs
  the model's prediction; not a tight floor where a probe needs more, and marked "generic");
- ``stop@ℓ``: the HF body run up to block ℓ only (a hook stops it), for probes that read one layer;
- ``stop@ℓ + readout`` (VSA readout): the body up to block ℓ, then the read-out as bare tensor work
  on the artefact's weights: the encoder's matrix product, one FFT pair that unbinds every operand
  digit slot (the atoms' spectra computed once, outside the timing), the digit and operation
  similarities with their top-2 (argmax and margin) and the range gate's distance;
- ``lens``: the body forward + final norm + one batched ``rows @ W_U`` over every (layer, position)
  row + logsumexp / top-k (logit lens);
- ``lens + greedy`` (Future Lens direct): one prefill keeping every layer's states and the KV
  cache, the same lens decode (its last-layer rows are the model's greedy token after each
  position), then the N cached greedy steps past the prompt's end;
- ``3 forwards, SAE`` (SAE features): the clean forward with all logits and one batched forward of
  the two counterfactuals (SAE spliced in, activation zeroed), each with the CE's logsumexp;
- ``stop@ℓ + replay`` (feature attribution): the forward up to the SAE's layer, one batched
  forward of ``seq`` copies up to it (the matrix products of the linear contribution replay) and
  the SAE encoder;
- ``generate``: the KV-cached greedy generations a steering page must produce (clean + steered);
- ``forward + replay + SVD passes + sweep`` (Jacobian): what the page cannot avoid, pass for
  pass as the probe needs it, each pass one batched call on the HF layers (no loop over
  positions, layers or heads): one forward with logits (the recording); the contribution replay
  (one forward of ``seq`` one-token copies through every layer); the SVD's products at the
  chosen accuracy in their block structure, read from a warm-up run of the probe (its
  ``svd_products`` and ``krylov_block`` of the window give ``krylov_schedule``): block Lanczos
  cannot batch them further, because each block's J·V needs the previous Jᵀ·U and vice versa.
  Each J·V block is one batched forward of ``block`` inputs over the window, each Jᵀ·U block one
  batched backward (an autograd VJP from the target position) of the same size, timed without
  the forward that built its graph; Q, K and the gate projection have their inputs detached
  there, so the backward runs only the transposes the linear system has (V, O, up, down, norms),
  as the probe's adjoint does. With the default layer sweep: one forward of its 64 Hutchinson
  probes keeping every layer's state, then per power round one backward with every layer's
  cotangent at its own layer and one forward of the ``layers`` directions. Finally the decode:
  one unembedding GEMM of the ``n_components`` + ``layers`` directions. This is the page's
  work pass for pass, done the plain-HF way; it is not a lower bound on the page's own linear
  operator, whose passes are cheaper than HF's: HF's forward also computes Q, K, the gate
  projection, the attention scores and softmax and the norms' statistics (per token and layer
  about 1.6× the multiply-adds of the linear map's V, O, up and down), and its backward replays
  an autograd graph. Measured, this floor came out above the page itself (ratio < 1);
- ``score + ablations`` (shared neurons): one batched forward of every scored prompt (both
  selection halves and the control task) up to the last layer read, then per ablation condition
  one batched forward of the held-out prompts with their answers and the answer-position logits;
- ``attentions`` (attention): the eager forward returning every layer's pattern, and the same
  for the batch of repeated random sequences the induction scores read;
- ``forward, all states`` (DLA): one forward keeping every layer's output;
- ``clean + corrupted + patched`` (activation patching): the two forwards and one forward up to
  the final norm per patched cell, batched as the probe batches them (its own clean/corrupted
  pair, at one length);
- ``collect + ridge fits + decode + fixed`` (Future Lens evaluation, ``floor_future_lens_eval.py``):
  at the tests' fast config with the fixed prompt on (direct + linear + fixed, free-running), the
  probe timed on a first visit (a fresh home: it collects and fits, and has no learned prompt)
  against the KV-cached greedy collection, the evaluated layers' ridge selection and refit as
  batched solves, one batched decode of the direct and linear rows, and the prompt intervention:
  the context's prefix once into a KV cache, every evaluated layer's test states transplanted at
  its last position in one batch (chunks of whole layers, ≤ 512 rows) and the N − 1 cached greedy
  steps of all rows together (teacher-forced: the original tokens fed in the same forward), top-k
  of the read positions only; learned the same with each layer's soft prompt, where one is
  saved. Checked against the probe's own numbers before timing.

- ``future_lens[linear]``, ``future_lens[fixed]`` (extra rows: the Future Lens page with that
  method; ``floor_future_lens.py``): the prefill with every block's output and the KV cache, its
  full logits and the N cached greedy steps (the "actual" row), then for linear the maps as one
  ``bmm`` per horizon over every layer at the fitted positions and ONE batched decode; for fixed
  the context's prefix run once into a KV cache repeated for every (layer, position) cell, ONE
  batched forward of the context's last position with each cell's state written into its layer's
  output, and the N cached greedy steps of all cells together. ``future_lens[learned]``: the same
  with each layer's soft prompt as the context (its prefixes run once, as one batch); the bench
  trains a prompt per layer first (one step, in a throw-away ``LENSLAB_HOME``: ``bench_home``),
  as quality does not change the timed work;
- ``1 forward + 18 read-outs + cached greedy`` (neurosymbolic, ``floor_neurosymbolic.py``, run on
  the page's default problem "What is 48 * 7?"): one forward of the few-shot prompt and the exact
  answer keeping every block's output at the prompt's last position and the KV cache, the answer
  positions' logits (the CE, and the greedy answer while the model writes the exact answer), the
  encoders as one batched product with the VSA unbinding and the gate, cached greedy steps from
  where the model departs from the exact answer, and the merged suffix only if the system acts;
- ``cached dashboards + logit effects`` (SAE feature page, ``floor_sae_feature.py``): the cache
  file read, one ``W_U`` product of the feature's decoder row and the shown contexts decoded; and
  a second row ``sae_feature (cold)``, the page on a first visit (a fresh home holding only the
  SAE: it builds the dashboards) against the corpus windows' stopped forwards, the SAE encoder
  and that one feature's statistics;
- ``stop@ℓ + 2 target forwards + 1 decode`` (patch lens, ``floor_patch_lens.py``): the source
  body up to the layer, the target's clean and patched forwards keeping every block's output and
  ONE batched decode of all 2 × layers × positions rows (logsumexp, top-k, tracked logit).
- ``forward + decode + gap`` (J-lens, ``floor_jacobian_lens.py``): one forward keeping every
  block's output (the gap layer's output a leaf requiring grad, so the later blocks record the
  gap's graph in the same pass), the J-lens maps as one ``bmm`` over the layers, ONE decode of all
  2 × layers × positions rows, and the gap's rows of this input's Jacobian as ONE batched
  backward (``d_model`` one-hot cotangents at the last position, ``2 × d_model`` elsewhere);
- ``frozen linear map`` (``jacobian[tight]``, ``floor_jacobian_tight.py``): the Jacobian page
  against the detached network as bare tensor ops (frozen patterns, norm scales and gate
  coefficients: each block a fixed linear operator built from the HF weights and one recording
  forward), with the products of the HF-equivalent floor above: replay, detach check, the SVD's
  J·V / Jᵀ·U blocks in the probe's schedule, the sweep's sketch and power rounds, the decodes;
- ``replications``: the sum of its families' floors (``floor_replications.py``), tight over all
  five: the Future Lens evaluation's floor at the quick config (collection, maps, decode and the
  fixed prompt's intervention; the probe runs in a home whose Future Lens artefacts start empty,
  so that family collects and fits on every run), the Jacobian claims' phrases on the frozen map
  in float64, the shared-neurons floor, nothing for the two families that read stored numbers;

A floor with a ``check`` is run against the probe's own output before timing (linear: the same
top-k ids; patch lens: the same top-1 in ≥ 99.5 % of cells, as the probe ranks float32 softmax
values and near-ties can swap; fixed: the same top-1 in ≥ 99 % of (layer, position, N) cells, as
a swapped near-tie changes that cell's later greedy steps; the Future Lens evaluation, also inside
``replications``: equal labels, ridges and direct / linear hits, maps and states to 1e-3, and the
prompt interventions' hits equal in ≥ 99 % of the cells); a floor that computes something else
raises instead of giving a row.

A page without a floor of its own is compared with one full forward, marked "generic floor". Times
are the best of ``--repeat`` interleaved runs, both wall-clock and CPU (process) seconds: on a
machine shared with other jobs the wall clock of a sub-second page moves by ±50 % between runs,
the CPU seconds much less; the verdict uses the CPU ratio and the table shows both.

The figure is probe / floor. Targets: ≤ 1.5× for the single-forward lenses, ≤ 2× for the rest.
Run: ``python bench/bench_pages.py [--quick] [--repeat 3] [--lengths 8,16,64] [--probes a,b]
[--section pages]``: ``--probes`` runs a subset (the Jacobian at 64 tokens, shared neurons and
the evaluations take minutes each) and ``--section`` names the results file, so a subset run
does not overwrite the full table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

import torch
from transformers import AutoModelForCausalLM

from bench.common import machine, write
from bench.floor_future_lens import bench_home, causal_floor, linear_floor
from bench.floor_future_lens_eval import eval_row
from bench.floor_jacobian_lens import jacobian_lens_floor
from bench.floor_jacobian_tight import tight_jacobian_floor
from bench.floor_neurosymbolic import neurosymbolic_floor
from bench.floor_patch_lens import patch_lens_floor
from bench.floor_replications import PROBE_HOME, replications_floor
from bench.floor_sae_feature import first_visit_row, sae_feature_floor
from lenslab.models import ModelSession, hooknames
from lenslab.models.loading import embedded_dir
from lenslab.probes import get_probe, registered_probes
from lenslab.probes.sae.loading import load_sae

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fast_configs import fast_config  # the tests' fast config of the slow evaluation

TEXT = (
    "The Eiffel Tower is located in Paris, the capital of France. It was built for the 1889 World's "
    "Fair and remains one of the most visited monuments in the world, drawing millions of people "
    "every year who climb its stairs or ride its lifts to the top for a view over the city and "
    "the river Seine that winds through it from east to west. "
)
SLOW = {
    "future_lens_eval",
    "shared_neurons",
    "sae_feature",
    "replications",
    "future_lens[fixed]",
    "future_lens[learned]",
}  # skipped by --quick
PROMPT_FREE = {
    "future_lens_eval",
    "shared_neurons",
    "activation_patching",
    "replications",
    "neurosymbolic",
    "sae_feature",
}  # read their own data: run at one length only
PAIR_PROMPT = "The Eiffel Tower is located in the city of"  # activation patching: the clean prompt
PROBLEM_PROMPT = "What is 48 * 7?"  # neurosymbolic: the page's default typed problem
TARGET = {
    "logit_lens": 1.5,
    "future_lens": 1.5,
    "future_lens[linear]": 1.5,
    "sae_features": 1.5,
    "mlp_units": 1.5,
    "vsa_readout": 1.5,
    "feature_attribution": 1.5,
}


# Extra rows: a registered probe run with a non-default config, ``name[variant]`` (--probes names them).
VARIANTS = {f"future_lens[{m}]": ("future_lens", {"method": m}) for m in ("linear", "fixed", "learned")}
VARIANTS["jacobian[tight]"] = ("jacobian", {})  # the Jacobian page against its frozen linear map, bare

# Where a probe runs in the bench when not in the current home: the replications' Future Lens family
# collects and fits on every run, as its floor does (``floor_replications.py``).
PROBE_HOMES: dict[str, Callable[[], Any]] = {"replications": PROBE_HOME}


def split_row(row: str) -> tuple[str, dict[str, Any]]:
    """The registered probe and its config overrides behind a row name."""
    return VARIANTS.get(row, (row, {}))


class _Stop(Exception):
    pass


@dataclass
class Floor:
    """A named bare-tensor floor for one probe at one prompt."""

    kind: str
    run: Callable[[], object]
    tight: bool = True
    check: Callable[[Any], None] | None = None  # raises unless the floor computes the probe's numbers


def measure(
    fns: dict[str, Callable[[], object]], repeat: int, warm: bool = True
) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall-clock and best CPU (process) seconds of each function, interleaved, after a warm-up
    (``warm=False``: the caller has just run each once, e.g. a floor's check)."""
    for fn in fns.values() if warm else ():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {n: min(v) for n, v in wall.items()}, {n: min(v) for n, v in cpu.items()}


def hook_context_cost(session: ModelSession, repeat: int = 20) -> str:
    """One hook context's enter + exit (a name filter, as ``capture`` attaches) by the session and by
    the bridge's own ``hooks()``, which rebuilds its hook table on every attach."""
    names = frozenset([hooknames.mlp_hidden(6)])

    def noop(tensor: torch.Tensor, *, hook: Any) -> None:
        return None

    def ours() -> None:
        with session.hooks([(names.__contains__, noop)]):
            pass

    def bridge() -> None:
        with session.bridge.hooks(fwd_hooks=[(names.__contains__, noop)]):
            pass

    wall, cpu = measure({"session": ours, "bridge": bridge}, repeat)
    return (
        f"One hook context (enter + exit, best of {repeat}): `session.hooks` {1000 * wall['session']:.2f} ms "
        f"wall / {1000 * cpu['session']:.2f} ms CPU; the bridge's `hooks()` {1000 * wall['bridge']:.1f} ms "
        f"wall / {1000 * cpu['bridge']:.1f} ms CPU."
    )


def prompt_of(session: ModelSession, n_tokens: int) -> str:
    """A prefix of TEXT with ``n_tokens`` tokens (BOS included) or the closest below."""
    words = (TEXT * 4).split(" ")
    best = words[0]
    for i in range(1, len(words)):
        candidate = " ".join(words[:i])
        if session.tokenize(candidate).shape[-1] > n_tokens:
            break
        best = candidate
    return best


def build_floors(session: ModelSession, hf: torch.nn.Module) -> Callable[[str, str], Floor]:
    """A factory of each probe's floor on the plain HF model ``hf`` (same weights, same device)."""
    body = hf.model
    norm = body.norm
    w_u = hf.lm_head.weight  # [vocab, d_model]

    def stopped(tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """The body run up to block ``layer`` (a hook stops it there); returns that block's output."""
        box: list[torch.Tensor] = []

        def stop(_module: object, _args: object, output: Any) -> None:
            box.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = body.layers[layer].register_forward_hook(stop)
        try:
            with torch.inference_mode():
                body(tokens)
        except _Stop:
            pass
        finally:
            handle.remove()
        return box[0]

    def vsa_readout_floor(tokens: torch.Tensor, config: Any) -> Floor:
        """The stopped forward plus the VSA read-out's unavoidable tensor work, done bare."""
        from lenslab.probes.neurosymbolic.probe import load_artefact  # the fitted weights, as data

        artefact = load_artefact(session)
        layer = config.layer
        encoder, book = artefact.encoders[layer], artefact.codebook
        weight, in_mean, out_mean = encoder.weight, encoder.input_mean, encoder.output_mean
        digits, operations = book.digit_atoms.T.contiguous(), book.operation_atoms.T.contiguous()
        # unitary atoms: unbinding is multiplying by the conjugate spectrum (codebook constants)
        keys = (
            torch.fft.rfft(book.roles, dim=-1).conj()[:, None] * torch.fft.rfft(book.positions, dim=-1).conj()
        )

        def run() -> None:
            state = stopped(tokens, layer)
            with torch.inference_mode():
                centred = state[0, config.position].float()[None] - in_mean
                vector = centred @ weight + out_mean
                centred.norm(dim=-1)  # the range gate
                slots = torch.fft.irfft(torch.fft.rfft(vector)[:, None, None] * keys, n=book.dim)
                (slots @ digits).topk(2, -1)
                (vector @ operations).topk(2, -1)

        return Floor(f"stop@{layer} + readout", run)

    def lens(tokens: torch.Tensor, k: int) -> None:
        with torch.inference_mode():
            hidden = body(tokens, output_hidden_states=True).hidden_states[1:]
            rows = norm(torch.stack(hidden).reshape(-1, hidden[0].shape[-1]))
            for start in range(0, rows.shape[0], 256):
                logits = rows[start : start + 256] @ w_u.T
                logits.logsumexp(-1)
                logits.topk(k, -1)

    def lens_and_greedy(tokens: torch.Tensor, k: int, n_new: int) -> None:
        """One prefill keeping every layer's states and the KV cache, the lens decode (whose last
        layer rows are the model's own logits: the greedy token after every position), then the
        ``n_new - 1`` cached greedy steps past the prompt's end."""
        with torch.inference_mode():
            out = body(tokens, output_hidden_states=True, use_cache=True)
            hidden = out.hidden_states[1:]
            rows = norm(torch.stack(hidden).reshape(-1, hidden[0].shape[-1]))
            for start in range(0, rows.shape[0], 256):
                logits = rows[start : start + 256] @ w_u.T
                logits.logsumexp(-1)
                logits.topk(k, -1)
            nxt = (hidden[-1][:, -1:] @ w_u.T).argmax(-1)  # the last hidden state is already normed
            cache = out.past_key_values
            for _ in range(n_new - 1):
                step = hf(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache, nxt = step.past_key_values, step.logits[:, -1:].argmax(-1)

    def sae_ce(tokens: torch.Tensor, sae: Any, layer: int) -> None:
        """The clean forward (all logits, for CE) and one batched forward of the two counterfactuals
        (SAE spliced in / activation zeroed at ``layer``), each with the CE's logsumexp."""

        def replace(_module: object, _args: object, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            act = hidden[:1]
            recon = sae.decode(sae.encode(act.float())).to(hidden.dtype)
            new = torch.cat([recon, torch.zeros_like(act)])
            new[:, :1] = hidden[:, :1]
            return (new, *output[1:]) if isinstance(output, tuple) else new

        with torch.inference_mode():
            clean = hf(tokens).logits
            clean.float().logsumexp(-1)
            handle = body.layers[layer].register_forward_hook(replace)
            try:
                both = hf(tokens.expand(2, -1)).logits
            finally:
                handle.remove()
            both.float().logsumexp(-1)

    def attribution(tokens: torch.Tensor, sae: Any, layer: int) -> None:
        """The forward up to the SAE's layer, then the contribution replay: one batched forward of
        ``seq`` copies up to that layer (the linear replay does the same matrix products), and the
        SAE encoder on every contribution."""
        seq = tokens.shape[-1]
        stopped(tokens, layer)
        stopped(tokens.expand(seq, -1), layer)
        with torch.inference_mode():
            sae.encode(torch.zeros(seq, w_u.shape[-1], dtype=torch.float32, device=w_u.device))

    def generate(tokens: torch.Tensor, n_new: int, copies: int) -> None:
        with torch.inference_mode():
            for _ in range(copies):
                out = hf(tokens, use_cache=True, logits_to_keep=1)
                for _ in range(n_new - 1):
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    out = hf(nxt, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)

    def forward(tokens: torch.Tensor) -> None:
        with torch.inference_mode():
            hf(tokens)

    def batched_body(tokens: torch.Tensor, copies: int, layer: int, batch: int = 64) -> None:
        """``copies`` copies of ``tokens`` through the body up to ``layer``, ``batch`` at a time."""
        for start in range(0, copies, batch):
            stopped(tokens.expand(min(batch, copies - start), -1), layer)

    def detached_graph(rows: int, width: int, every_layer: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A retained autograd graph of the body on ``rows`` random inputs over ``width`` positions:
        returns (input, output), the output at the last position (every layer's own row when
        ``every_layer``: row ℓ reads layer ℓ). Q, K and the gate projection get detached inputs, so
        a backward through it runs only the linear system's transposes."""
        detach = [
            module.register_forward_pre_hook(lambda _m, args: (args[0].detach(), *args[1:]))
            for layer in body.layers
            for module in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.gate_proj)
        ]
        d_model = w_u.shape[-1]
        x = torch.randn(rows, width, d_model, dtype=w_u.dtype, device=w_u.device, requires_grad=True)
        try:
            with torch.enable_grad():
                states = body(inputs_embeds=x, output_hidden_states=every_layer)
                if every_layer:
                    out = torch.stack([states.hidden_states[i + 1][i % rows, -1] for i in range(rows)])
                else:
                    out = states.last_hidden_state[:, -1]
        finally:
            for handle in detach:
                handle.remove()
        return x, out

    def jacobian_floor_fn(tokens: torch.Tensor, result: Any, config: Any) -> tuple[str, Callable[[], None]]:
        """The Jacobian page's floor (module docstring), sized from the probe's own ``result``."""
        from lenslab.probes.jacobian.algorithms import krylov_block, krylov_schedule
        from lenslab.probes.jacobian.result import HUTCHINSON_PROBES, SWEEP_POWER_STEPS

        seq, d_model, layers = tokens.shape[-1], w_u.shape[-1], session.n_layers
        width = result.position + 1

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, dtype=w_u.dtype, device=w_u.device)

        if result.method == "full":  # J by one batched adjoint pass of all its rows
            schedule = [("adjoint", d_model)]
        else:
            schedule = krylov_schedule(result.svd_products, krylov_block(width))
        graphs = {rows: detached_graph(rows, width, False) for kind, rows in schedule if kind == "adjoint"}
        inputs = {rows: rand(rows, width, d_model) for kind, rows in schedule if kind == "forward"}
        sweep = detached_graph(layers, seq, True) if config.layer_sweep else None
        probes, rounds = HUTCHINSON_PROBES, SWEEP_POWER_STEPS
        sketch, directions = rand(probes, seq, d_model), rand(config.n_components + layers, d_model)

        def backward(graph: tuple[torch.Tensor, torch.Tensor]) -> None:
            x, out = graph
            torch.autograd.grad(out, x, grad_outputs=out.detach(), retain_graph=True)

        def run() -> None:
            forward(tokens)  # the recording forward
            batched_body(tokens, seq, layers - 1)  # the contribution replay
            for kind, rows in schedule:
                if kind == "adjoint":
                    backward(graphs[rows])
                else:
                    with torch.inference_mode():
                        body(inputs_embeds=inputs[rows])
            if sweep is not None:
                with torch.inference_mode():
                    body(inputs_embeds=sketch, output_hidden_states=True)
                for _ in range(rounds):
                    backward(sweep)
                    with torch.inference_mode():
                        body(inputs_embeds=sweep[0].detach(), output_hidden_states=True)
            with torch.inference_mode():
                (directions @ w_u.T).topk(config.top_tokens, -1)

        passes = sum(kind == "adjoint" for kind, _ in schedule)
        sweep_text = f" + sweep ({probes} probes, {rounds} rounds)" if sweep is not None else ""
        kind = (
            f"forward + replay + SVD ({result.svd_products} products: {passes} backward, "
            f"{len(schedule) - passes} forward passes){sweep_text} + decode"
        )
        return kind, run

    def attentions(tokens: torch.Tensor, induction: torch.Tensor | None) -> None:
        with torch.inference_mode():
            hf(tokens, output_attentions=True)
            if induction is not None:
                hf(induction, output_attentions=True)

    def all_states(tokens: torch.Tensor) -> None:
        with torch.inference_mode():
            hf(tokens, output_hidden_states=True)

    def padded(rows: list[list[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [0] * (width - len(r)) for r in rows], device=w_u.device)

    def shared_floor(
        scored: torch.Tensor, held: list[tuple[torch.Tensor, list[list[int]]]], conditions: int
    ) -> None:
        stopped(scored, session.n_layers - 1)
        with torch.inference_mode():
            for _ in range(conditions):
                for ids, positions in held:
                    hidden = body(ids).last_hidden_state
                    rows = torch.cat([hidden[i, p] for i, p in enumerate(positions)])
                    (rows @ w_u.T).float().log_softmax(-1)

    def patching_floor(clean: torch.Tensor, corrupted: torch.Tensor, cells: int, batch: int) -> None:
        forward(clean)
        forward(corrupted)
        batched_body(clean, cells, session.n_layers - 1, batch)

    def factory(row: str, prompt: str) -> Floor:
        name, overrides = split_row(row)
        tokens = session.tokenize(prompt)
        config = get_probe(name).default_config().replace(**overrides)
        layer = getattr(config, "layer", None)
        if name == "future_lens" and config.method != "direct":
            kind, run, check = (linear_floor if config.method == "linear" else causal_floor)(
                session, hf, tokens, config
            )
            return Floor(kind, run, check=check)
        if name == "patch_lens":
            kind, run, check = patch_lens_floor(session, hf, stopped, tokens, config)
            return Floor(kind, run, check=check)
        if name == "vsa_readout":
            return vsa_readout_floor(tokens, config)
        if name == "neurosymbolic":
            kind, run, check = neurosymbolic_floor(session, hf, prompt, config)
            return Floor(kind, run, check=check)
        if name == "sae_feature":
            kind, run, check = sae_feature_floor(session, hf, config)
            return Floor(kind, run, check=check)
        if name == "jacobian_lens":
            kind, run, check = jacobian_lens_floor(session, hf, tokens, config)
            return Floor(kind, run, check=check)
        if name == "logit_lens":
            return Floor("lens", lambda: lens(tokens, config.k))
        if name == "future_lens" and config.method == "direct":
            return Floor("lens + greedy", lambda: lens_and_greedy(tokens, config.k, config.horizon + 1))
        if name in ("sae_features", "feature_attribution"):
            loaded = load_sae(session, config.sae)
            layer = hooknames.layer_of(loaded.hook_name)
            if name == "sae_features":
                return Floor(f"3 forwards, SAE @{layer}", lambda: sae_ce(tokens, loaded.sae, layer))
            return Floor(f"stop@{layer} + replay", lambda: attribution(tokens, loaded.sae, layer))
        if name in ("mlp_units", "vsa_readout") and isinstance(layer, int) and layer >= 0:
            return Floor(f"stop@{layer}", lambda: stopped(tokens, layer))
        if name == "sae_steering":
            return Floor("generate ×2", lambda: generate(tokens, config.n_new, 2))
        if row == "jacobian[tight]":
            result = get_probe(name).run(session, prompt, config)
            kind, run, check = tight_jacobian_floor(session, hf, tokens, result, config)
            return Floor(kind, run, check=check)
        if name == "jacobian":
            return Floor(*jacobian_floor_fn(tokens, get_probe(name).run(session, prompt, config), config))
        if name == "attention":
            induction = None
            if config.induction:
                generator = torch.Generator().manual_seed(0)
                half = torch.randint(
                    1000, 20000, (config.induction_sequences, config.induction_length), generator=generator
                )
                bos = torch.full((config.induction_sequences, 1), int(tokens[0, 0]))
                induction = torch.cat([bos, half, half], 1).to(tokens.device)
            return Floor("attentions", lambda: attentions(tokens, induction))
        if name == "dla":
            return Floor("forward, all states", lambda: all_states(tokens))
        if name == "activation_patching":
            result = get_probe(name).run(session, prompt, config)
            cells = sum(int(sweep.raw.size) for sweep in result.sweeps)
            corrupted = session.tokenize(config.corrupted)
            return Floor(
                f"clean + corrupted + {cells} patched",
                lambda: patching_floor(tokens, corrupted, cells, config.batch_size),
            )
        if name == "shared_neurons":
            return shared_neurons_floor(config)
        if name == "replications":
            kind, run, check = replications_floor(session, hf, config, shared_neurons_floor)
            return Floor(kind, run, check=check)
        return Floor("forward", lambda: forward(tokens), tight=False)

    def shared_neurons_floor(config: Any) -> Floor:
        from lenslab.probes.shared_neurons.probe import resolve_control, resolve_sets
        from lenslab.probes.shared_neurons.result import CONDITIONS, MODEL_CONDITIONS
        from lenslab.probes.shared_neurons.tasks import split_indices
        from lenslab.probes.shared_neurons.units import encode_items

        set_a, set_b = resolve_sets(config)
        sets = [set_a] if set_b is None else [set_a, set_b]
        halves = [split_indices(len(s.items), config.seed) for s in sets]
        select = [s.subset(h[0], "selection") for s, h in zip(sets, halves, strict=True)]
        held = [s.subset(h[1], "held-out") for s, h in zip(sets, halves, strict=True)]
        control = resolve_control(config, len(halves[0][0]))
        scored_items = [i for s in select for i in s.items] + (list(control.items) if control else [])
        if set_b is None:
            scored_items += list(select[0].items)  # the second model scores set A's half again
        scored = padded([e.ids for e in encode_items(session, scored_items, with_answer=False)])
        batches = []
        for h in held:
            encoded = encode_items(session, h.items, with_answer=True)
            positions = [list(range(e.prompt_len - 1, e.prompt_len - 1 + e.answer_len)) for e in encoded]
            batches.append((padded([e.ids for e in encoded]), positions))
        conditions = (len(CONDITIONS) if set_b is not None else len(MODEL_CONDITIONS)) if config.causal else 1
        return Floor(
            f"score {scored.shape[0]} prompts + {conditions} conditions",
            lambda: shared_floor(scored, batches, conditions),
        )

    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the minute-long evaluations")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lengths", default="8,16,64")
    parser.add_argument("--probes", default="", help="comma-separated subset (default: all registered)")
    parser.add_argument("--section", default="pages", help="results file name (bench/results/<section>.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    session = ModelSession.load()
    hf = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    hf.to(session.device).eval()
    floors = build_floors(session, hf)
    everything = sorted([*registered_probes(), *VARIANTS])
    names = [n for n in everything if not args.probes or n in args.probes.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    rows, notes = [], []
    for name in names:
        if args.quick and name in SLOW:
            continue
        if name == "future_lens_eval":  # its own floor, timed cold at the tests' fast config
            row, note = eval_row(session, hf, fast_config(name).replace(fixed_prompt=True), 1)
            rows.append(row)
            notes.append(note)
            print(row, flush=True)
            continue
        if name == "sae_feature":  # also a first visit (dashboards built): its own floor and row
            row, note = first_visit_row(session, hf, get_probe(name).default_config(), 1)
            rows.append(row)
            notes.append(note)
            print(row, flush=True)
        probe_name, overrides = split_row(name)
        probe = get_probe(probe_name)
        config = probe.default_config().replace(**overrides)
        restore = bench_home(session, name)  # future_lens[learned]: bench-trained prompts
        home = PROBE_HOMES.get(name, contextlib.nullcontext)  # replications: Future Lens as on a first visit

        def run_probe(prompt: str, probe: Any = probe, config: Any = config, home: Any = home) -> Any:
            with home():
                return probe.run(session, prompt, config)

        for n_tokens in lengths[:1] if name in PROMPT_FREE else lengths:
            prompt = PAIR_PROMPT if name == "activation_patching" else prompt_of(session, n_tokens)
            prompt = PROBLEM_PROMPT if name == "neurosymbolic" else prompt
            repeat = 1 if name in SLOW else args.repeat
            try:
                floor = floors(name, prompt)
                if floor.check is not None:  # the floor computes what the probe shows, or no row
                    floor.check(run_probe(prompt))
                wall, cpu = measure(
                    {"probe": lambda pr=prompt: run_probe(pr), "floor": floor.run},
                    repeat=repeat,
                    warm=floor.check is None or name not in SLOW,  # the check ran both once
                )
            except (ValueError, FileNotFoundError) as exc:  # e.g. artefacts not prepared
                rows.append(f"| {name} | {n_tokens} | — | — | — | — | — | skipped: {exc} |")
                continue
            ratio = cpu["probe"] / cpu["floor"]
            target = TARGET.get(name, 2.0)
            verdict = ("met" if ratio <= target else "missed") if floor.tight else "generic floor"
            rows.append(
                f"| {name} | {session.tokenize(prompt).shape[-1]} | {wall['probe']:.3f} / {cpu['probe']:.3f} "
                f"| {floor.kind} | {wall['floor']:.3f} / {cpu['floor']:.3f} "
                f"| {wall['probe'] / wall['floor']:.2f}× | {ratio:.2f}× | ≤ {target}×: {verdict} |"
            )
            print(rows[-1], flush=True)
        restore()
    table = "\n".join(rows)
    hooks_line = hook_context_cost(session)
    load = f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    write(
        args.section,
        f"""## Page latency against each probe's floor (`{args.section}`)

Measured on {machine()} ({load}); `python bench/bench_pages.py {" ".join(sys.argv[1:])}`, best of
{args.repeat} interleaved runs (1 for the minute-long evaluations). Each probe runs its default
config; the floor is bare tensor work on the plain HF model in the same run (see the module
docstring). Times are wall / CPU seconds; the verdict uses the CPU ratio. "generic floor" = one
full forward, a lower bound but not the probe's own floor.

| probe | tokens | probe (s) | floor | floor (s) | wall ratio | CPU ratio | target |
|---|---|---|---|---|---|---|---|
{table}

{hooks_line}
{"".join(chr(10) + n for n in notes)}
""",
    )


if __name__ == "__main__":
    main()
