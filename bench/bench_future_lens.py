"""Future Lens benchmark on the embedded model: collection, linear fit, prompt training, grid latency.

The grid latency of the causal methods is measured under both protocols (free-running, the
default, is N + 1 KV-cached steps; teacher-forced is one forward).

Ratios are against baselines measured in the same run:
- collection with the KV cache + hooks (ours) vs. naive greedy generation that re-runs the whole
  prefix through the bridge with full logits at every step;
- learned-prompt training on cached states vs. the same epoch plus re-collecting the states
  (what training would cost if hidden states were recomputed every epoch);
- closed-form ridge fit vs. the collection time of the data it is fitted on.

Run: ``.venv/bin/python bench/bench_future_lens.py`` (writes bench/results/future_lens.md).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("LENSLAB_THREADS", "2")))

N_EXAMPLES = int(os.environ.get("FL_BENCH_EXAMPLES", "32"))
PROMPT = "The Eiffel Tower is located in the city of Paris, which is"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def naive_collect(session, prefix_ids, batch_size=16):
    """Baseline: greedy generation by re-running prefix + tokens through the bridge each step."""
    names = [session.resid_name(layer) for layer in range(session.n_layers)]
    with torch.inference_mode():
        for begin in range(0, len(prefix_ids), batch_size):
            tokens = torch.as_tensor(prefix_ids[begin : begin + batch_size])
            run = session.run(tokens, names)
            for _ in range(3):
                next_ids = run.logits[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, next_ids], 1)
                run = session.run(tokens, names[-1:])


def main() -> None:
    home = tempfile.mkdtemp(prefix="fl-bench-")
    real_models = Path.home() / ".cache" / "lenslab" / "models"
    os.environ["LENSLAB_HOME"] = home
    (Path(home) / "models").symlink_to(real_models, target_is_directory=True)

    from lenslab.models import ModelSession
    from lenslab.probes.future_lens.data import DataSettings, collect, sample_windows
    from lenslab.probes.future_lens.data import FutureLensData as Data
    from lenslab.probes.future_lens.linear import fit_linear_maps
    from lenslab.probes.future_lens.methods import Artefacts
    from lenslab.probes.future_lens.probe import FutureLens, FutureLensConfig
    from lenslab.probes.future_lens.prompts import PromptTraining, train_soft_prompt

    session, load_s = timed(ModelSession.load)
    settings = DataSettings(n_examples=N_EXAMPLES, prefix_tokens=16, batch_size=16)
    prefix_ids, doc_ids, is_test = sample_windows(session, settings)
    (labels, resid, final), collect_s = timed(lambda: collect(session, prefix_ids, settings.batch_size))
    _, naive_s = timed(lambda: naive_collect(session, prefix_ids, settings.batch_size))
    data = Data(session.model_id, "bench", settings, prefix_ids, doc_ids, is_test, labels, resid, final)
    maps, fit_s = timed(lambda: fit_linear_maps(session, data))
    n_fits = len(maps.layers) * maps.weight.shape[1]
    training = PromptTraining(epochs=1, batch_size=16)
    prompt, train_s = timed(lambda: train_soft_prompt(session, data, session.n_layers // 2, training))
    n_train = len(data.split(test=False))
    artefacts = Artefacts(linear=maps, prompts={prompt.layer: prompt})
    grid = {}
    spread = (0, 3, 6, 9, 12, 17)
    FutureLens().run(session, PROMPT, FutureLensConfig(layers=(0,)), artefacts=artefacts)  # warm-up
    for method, layers, protocol in [
        ("direct", None, "free-running"),
        ("linear", None, "free-running"),
        ("fixed", spread, "free-running"),
        ("fixed", spread, "teacher-forced"),
        ("learned", (prompt.layer,), "free-running"),
    ]:
        config = FutureLensConfig(method=method, horizon=3, layers=layers, protocol=protocol)
        name = f"{method} ({protocol})" if method in ("fixed", "learned") else method
        _, seconds = timed(lambda c=config: FutureLens().run(session, PROMPT, c, artefacts=artefacts))
        grid[name] = (len(layers or range(session.n_layers)), seconds)
    n_tokens = len(session.str_tokens(PROMPT))

    lines = [
        "# Future Lens benchmark",
        "",
        f"Embedded model `{session.model_id}` on {session.device}, {torch.get_num_threads()} torch threads, "
        f"{N_EXAMPLES} examples of 16-token prefixes (+4 greedy tokens). Load {load_s:.1f} s. "
        "Machine shared with other jobs: compare the ratios, not the absolute times.",
        "",
        "| what | ours | baseline | ratio |",
        "| --- | --- | --- | --- |",
        f"| collection (greedy continuation + all-layer states) | {N_EXAMPLES / collect_s:.2f} ex/s | "
        f"{N_EXAMPLES / naive_s:.2f} ex/s (re-forward, full logits) | {naive_s / collect_s:.2f}× faster |",
        f"| learned-prompt training, 1 epoch on cached states | {n_train / train_s:.2f} ex/s | "
        f"{n_train / (train_s + collect_s * n_train / N_EXAMPLES):.2f} ex/s (re-collect states each epoch) | "
        f"{(train_s + collect_s * n_train / N_EXAMPLES) / train_s:.2f}× faster |",
        f"| closed-form ridge fit, {len(maps.layers)} layers × 4 N ({n_fits} maps of 640×640) | "
        f"{fit_s:.2f} s ({1000 * fit_s / n_fits:.0f} ms per map) | collecting data {collect_s:.1f} s | "
        f"{fit_s / collect_s:.3f} of collection |",
        "",
        f"Grid latency for a {n_tokens}-token prompt, N=3:",
        "",
        "| method | layers | seconds |",
        "| --- | --- | --- |",
    ]
    for method, (n_layers, seconds) in grid.items():
        lines.append(f"| {method} | {n_layers} | {seconds:.2f} |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "future_lens.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
