"""Batched activation patching vs one patched run at a time, and vs full-logit forwards.

The residual-stream sweep of "The Eiffel Tower is in" / "The Colosseum is in" on the embedded
Gemma 3 270M (6 tokens): rows stacked ``batch`` at a time into one forward that stops at the
final norm, against the same rows run one by one, and against one-at-a-time full forwards that
compute every position's logits (``session.logits`` with the same patch hook).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from bench.common import compare, machine, write
from lenslab.models import ModelSession
from lenslab.probes.patching import patched_hidden, resolve_pair, source_activations, sweep_rows
from lenslab.probes.patching.sweeps import patch_hook

LAYERS = [0, 6, 12]


def main() -> None:
    session = ModelSession.load()
    pair = resolve_pair(session, "The Eiffel Tower is in", "The Colosseum is in", " Paris", " Rome")
    _, rows = sweep_rows("resid", LAYERS, pair.seq_len, int(session.cfg.n_heads))
    source = source_activations(session, pair.clean, rows)

    def batched() -> None:
        patched_hidden(session, pair.corrupted, source, rows, pair.position, batch_size=len(rows))

    def single() -> None:
        patched_hidden(session, pair.corrupted, source, rows, pair.position, batch_size=1)

    def full_logits() -> None:
        for row in rows:
            (patch,) = row
            session.logits(pair.corrupted, [(patch.hook, patch_hook(source[patch.hook], [(0, patch)]))])

    t = compare({"batched": batched, "single": single, "full": full_logits}, repeat=3)
    write(
        "patching",
        f"""## Batched activation patching

Measured on {machine()}. Embedded Gemma 3 270M, float32, {len(rows)} patched runs (residual stream of
layers {LAYERS} and the embeddings × {pair.seq_len} positions, Eiffel Tower / Colosseum).

| method | time (s) | ratio to batched |
|---|---|---|
| batched ({len(rows)} rows per forward, stop at the final norm) | {t["batched"]:.2f} | 1.00× |
| one row per forward, stop at the final norm | {t["single"]:.2f} | {t["single"] / t["batched"]:.2f}× |
| one row per forward, full logits at every position | {t["full"]:.2f} | {t["full"] / t["batched"]:.2f}× |
""",
    )


if __name__ == "__main__":
    main()
