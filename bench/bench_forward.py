"""Hooked forward (names-filtered cache of every resid_post) vs the plain HF forward.

Target: ratio ≤ 1.2×. Both models are the embedded Gemma 3 270M, loaded separately (booting the
bridge rewires the HF object it wraps), on the same device, same tokens, same thread count.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

import torch
from transformers import AutoModelForCausalLM

from bench.common import compare, machine, write
from lenslab.models import ModelSession
from lenslab.models.loading import embedded_dir

TEXT = (
    "The Eiffel Tower is located in Paris, the capital of France. It was built for the 1889 World's "
    "Fair and remains one of the most visited monuments in the world. "
)


def main() -> None:
    session = ModelSession.load()
    hf = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    hf.to(session.device).eval()
    names = [session.resid_name(layer) for layer in range(session.n_layers)]
    rows = []
    for n_tokens in (20, 128):
        tokens = session.tokenize(TEXT * 8)[:, :n_tokens]

        def plain(tokens=tokens):
            with torch.inference_mode():
                hf(tokens)

        def bridge(tokens=tokens):
            session.run(tokens)

        def hooked(tokens=tokens):
            session.run(tokens, names)

        t = compare({"plain": plain, "bridge": bridge, "hooked": hooked}, repeat=9)
        rows.append(
            f"| {n_tokens} | {t['plain'] * 1e3:.1f} | {t['bridge'] * 1e3:.1f} | {t['hooked'] * 1e3:.1f} "
            f"| {t['hooked'] / t['plain']:.2f}× |"
        )
    table = "\n".join(rows)
    write(
        "forward",
        f"""## Hooked forward vs plain HF forward

Measured on {machine()}. Embedded Gemma 3 270M, float32; the hooked run caches all
{session.n_layers} `blocks.*.hook_out` through `ModelSession.run` (names-filtered). Target ≤ 1.2×.

| tokens | HF forward (ms) | bridge, no cache (ms) | bridge + cache of all resid (ms) | ratio cached/HF |
|---|---|---|---|---|
{table}
""",
    )


if __name__ == "__main__":
    main()
