"""Page latency: every registered probe's default config against the work it cannot avoid.

For each probe and each prompt length (8, 16, 64 tokens) the probe's wall time is measured beside
its **floor**, the unavoidable operations done as bare tensor work on the plain Hugging Face model
in the same run (interleaved, best of ``--repeat``, so load changes hit both alike):

- ``forward``: one HF forward with full logits (the generic lower bound for any probe that needs
  the model's prediction; not a tight floor where a probe needs more, and marked "generic");
- ``stop@ℓ``: the HF body run up to block ℓ only (a hook stops it), for probes that read one layer;
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
- ``generate``: the KV-cached greedy generations a steering page must produce (clean + steered).

The Jacobian page, shared neurons and the evaluations still have only the generic floor.

The figure is probe / floor. Targets: ≤ 1.5× for the single-forward lenses, ≤ 2× for the rest.
Run: ``python bench/bench_pages.py [--quick] [--repeat 3] [--lengths 8,16,64]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

import torch
from transformers import AutoModelForCausalLM

from bench.common import compare, machine, write
from lenslab.models import ModelSession, hooknames
from lenslab.models.loading import embedded_dir
from lenslab.probes import get_probe, registered_probes
from lenslab.probes.sae.loading import load_sae

TEXT = (
    "The Eiffel Tower is located in Paris, the capital of France. It was built for the 1889 World's "
    "Fair and remains one of the most visited monuments in the world, drawing millions of people "
    "every year who climb its stairs or ride its lifts to the top for a view over the city and "
    "the river Seine that winds through it from east to west. "
)
SLOW = {"future_lens_eval", "shared_neurons", "neurosymbolic", "sae_feature"}  # skipped by --quick
PROMPT_FREE = {"future_lens_eval", "shared_neurons"}  # read their own data: run at one length only
TARGET = {
    "logit_lens": 1.5,
    "future_lens": 1.5,
    "sae_features": 1.5,
    "mlp_units": 1.5,
    "vsa_readout": 1.5,
    "feature_attribution": 1.5,
}


class _Stop(Exception):
    pass


@dataclass
class Floor:
    """A named bare-tensor floor for one probe at one prompt."""

    kind: str
    run: Callable[[], object]
    tight: bool = True


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

    def stopped(tokens: torch.Tensor, layer: int) -> None:
        def stop(*_: object) -> None:
            raise _Stop

        handle = body.layers[layer].register_forward_hook(stop)
        try:
            with torch.inference_mode():
                body(tokens)
        except _Stop:
            pass
        finally:
            handle.remove()

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

    def factory(name: str, prompt: str) -> Floor:
        tokens = session.tokenize(prompt)
        config = get_probe(name).default_config()
        layer = getattr(config, "layer", None)
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
        return Floor("forward", lambda: forward(tokens), tight=False)

    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the minute-long evaluations")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lengths", default="8,16,64")
    parser.add_argument("--probes", default="", help="comma-separated subset (default: all registered)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    session = ModelSession.load()
    hf = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    hf.to(session.device).eval()
    floors = build_floors(session, hf)
    names = [n for n in sorted(registered_probes()) if not args.probes or n in args.probes.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for name in names:
        if args.quick and name in SLOW:
            continue
        probe = get_probe(name)
        config = probe.default_config()
        for n_tokens in lengths[:1] if name in PROMPT_FREE else lengths:
            prompt = prompt_of(session, n_tokens)
            floor = floors(name, prompt)
            repeat = 1 if name in SLOW else args.repeat
            try:
                t = compare(
                    {"probe": lambda p=probe, pr=prompt, c=config: p.run(session, pr, c), "floor": floor.run},
                    repeat=repeat,
                )
            except (ValueError, FileNotFoundError) as exc:  # e.g. artefacts not prepared
                rows.append(f"| {name} | {n_tokens} | — | — | — | — | skipped: {exc} |")
                continue
            ratio = t["probe"] / t["floor"]
            target = TARGET.get(name, 2.0)
            verdict = ("met" if ratio <= target else "missed") if floor.tight else "generic floor"
            rows.append(
                f"| {name} | {session.tokenize(prompt).shape[-1]} | {t['probe']:.3f} | {floor.kind} "
                f"| {t['floor']:.3f} | {ratio:.2f}× | ≤ {target}×: {verdict} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    load = f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    write(
        "pages",
        f"""## Page latency against each probe's floor

Measured on {machine()} ({load}); `python bench/bench_pages.py {" ".join(sys.argv[1:])}`, best of
{args.repeat} interleaved runs (1 for the minute-long evaluations). Each probe runs its default
config; the floor is bare tensor work on the plain HF model in the same run (see the module
docstring). "generic floor" = one full forward, a lower bound but not the probe's own floor.

| probe | tokens | probe (s) | floor | floor (s) | ratio | target |
|---|---|---|---|---|---|---|
{table}
""",
    )


if __name__ == "__main__":
    main()
