"""Future Lens at paper scale on the embedded model: every method × layer × N with 95% intervals.

Protocol (Pal et al., 2023, scaled to a shared 2-core CPU):
- corpus: the Lee news corpus (349 Australian news articles, deduplicated to 343) that ships in
  the ``gensim`` wheel (``gensim/test/test_data/lee_background.cor`` + ``lee.cor``). The wheel
  is fetched with ``pip download gensim==4.4.0 --no-deps`` (not installed: only its two text
  files are read) and written as one JSON line per article;
- examples: BOS + 15 document tokens, labels = the model's own greedy tokens t+1..t+4; train and
  test documents are disjoint (split by document, ``test_fraction`` of the tokens);
- linear maps: ridge chosen per (layer, N) on held-out *training* documents, then refitted on
  all training documents; learned prompts: trained on training examples only (KL, AdamW lr
  5e-4, one epoch as in the paper, on at most ``--prompt-examples`` of them);
- evaluation: direct / linear / fixed / learned (free-running, the paper's protocol) and the
  bigram, top-1 and precision@10, 95% intervals by bootstrap over test documents.

Stages are cached (data in ``$LENSLAB_HOME``), so a re-run resumes after the slowest step.
Progress goes to stderr with timestamps. Writes ``bench/results/future_lens_paper.md`` and
``.json``; ``bench/RESULTS.md`` is rebuilt from every section.

Run: ``nohup .venv/bin/python bench/bench_future_lens_paper.py > fl_paper.log 2>&1 &``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module
torch.set_num_threads(int(os.environ.get("LENSLAB_THREADS", "2")))

GENSIM_WHEEL = "gensim==4.4.0"
LEE_FILES = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
STARTED = time.perf_counter()


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.perf_counter() - STARTED:7.0f} s] {message}", file=sys.stderr, flush=True)


def lee_corpus(folder: Path) -> Path:
    """``folder/lee_news.jsonl``: the Lee news articles from the gensim wheel, one per line, deduplicated."""
    out = folder / "lee_news.jsonl"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", GENSIM_WHEEL, "--no-deps", "-q", "-d", tmp], check=True
        )
        (wheel,) = Path(tmp).glob("gensim-*.whl")
        seen: dict[str, None] = {}
        with zipfile.ZipFile(wheel) as archive:
            for name in LEE_FILES:
                for line in archive.read(name).decode("utf-8", errors="replace").splitlines():
                    text = " ".join(line.split())
                    if text:
                        seen.setdefault(text, None)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text("".join(json.dumps({"text": t}) + "\n" for t in seen), encoding="utf-8")
    tmp_out.replace(out)
    return out


def parse() -> argparse.Namespace:
    """Command-line settings (defaults: the recorded run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="train + test examples")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--prefix-tokens", type=int, default=16)
    parser.add_argument("--layers", default="3,6,9,12,15", help="layers evaluated")
    parser.add_argument("--causal-layers", default="9", help="layers for fixed/learned (empty: --layers)")
    parser.add_argument("--prompt-examples", type=int, default=160, help="examples per learned prompt")
    parser.add_argument(
        "--fixed-ridge-layers",
        default="9",
        help="layers also evaluated with the old fixed ridge 0.3 (comparison)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--collect-only", action="store_true", help="stop after collecting the data")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the jobs already done")
    return parser.parse_args()


def ints(text: str) -> list[int]:
    """``"0,3,6"`` → ``[0, 3, 6]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    args = parse()
    import numpy as np

    from lenslab.models import ModelSession
    from lenslab.models.paths import lenslab_home
    from lenslab.probes.future_lens.data import DataSettings, build_dataset
    from lenslab.probes.future_lens.evaluation import evaluate
    from lenslab.probes.future_lens.linear import fit_linear_maps
    from lenslab.probes.future_lens.methods import Artefacts
    from lenslab.probes.future_lens.prompts import PromptTraining, SoftPrompt, train_soft_prompt

    corpus = lee_corpus(lenslab_home() / "corpora")
    log(f"corpus {corpus}")
    session = ModelSession.load()
    log(f"loaded {session.model_id}")
    settings = DataSettings(
        source=str(corpus),
        n_examples=args.examples,
        prefix_tokens=args.prefix_tokens,
        test_fraction=args.test_fraction,
        seed=0,
        batch_size=args.batch_size,
    )
    data = build_dataset(session, settings, lambda f, m="": log(m))
    log(f"data {data.key}: {len(data.split(False))} train / {len(data.split(True))} test examples")
    if args.collect_only:
        return
    layers = ints(args.layers)
    causal = ints(args.causal_layers) or layers
    work = lenslab_home() / "future_lens_paper" / data.key
    work.mkdir(parents=True, exist_ok=True)
    maps_path = work / "linear_maps.safetensors"
    if maps_path.is_file():
        from lenslab.probes.future_lens.linear import LinearMaps

        maps = LinearMaps.load(maps_path, session)
    else:
        started = time.perf_counter()
        maps = fit_linear_maps(session, data, layers, None, lambda f, m="": log(m))
        maps.meta["seconds"] = time.perf_counter() - started
        maps.save(maps_path)
    log(f"linear maps: ridge chosen {maps.meta['ridge_chosen']}")
    training = PromptTraining(epochs=1, batch_size=16, max_examples=args.prompt_examples)
    fixed_ridge = ints(args.fixed_ridge_layers)
    if args.report_only:
        report(work, data, maps, layers, causal, training, fixed_ridge)
        return

    def job(name: str, method: str, layer: int, artefacts: Artefacts) -> None:
        out = work / f"{name}.npz"
        if out.is_file():
            return
        started = time.perf_counter()
        scores = evaluate(session, data, [layer], [method], artefacts, k=10)
        np.savez(
            out,
            hits=scores.hits[0, 0],
            bigram_hits=scores.bigram_hits,
            doc_ids=scores.doc_ids,
            seconds=time.perf_counter() - started,
        )
        top1 = scores.precision[0, 0, :, 0]
        log(
            f"{method} L{layer}: top-1 N=0..3 {np.round(100 * top1, 1).tolist()} "
            f"({time.perf_counter() - started:.0f} s)"
        )

    plain = Artefacts(linear=maps)
    # The layers with every method come first, so a run stopped early still has the comparisons
    # the doc page states (linear vs direct, learned vs fixed) at those layers.
    for layer in sorted(layers, key=lambda layer: layer not in causal):
        job(f"direct_L{layer}", "direct", layer, plain)
        job(f"linear_L{layer}", "linear", layer, plain)
        if layer in causal:
            job(f"fixed_L{layer}", "fixed", layer, plain)
    for layer in causal:
        path = work / f"soft_prompt_L{layer}.safetensors"
        if path.is_file():
            prompt = SoftPrompt.load(path, session)
        else:
            prompt = train_soft_prompt(session, data, layer, training, lambda f, m="": None)
            prompt.save(path)
            log(
                f"learned prompt L{layer}: KL {prompt.meta['losses'][0]:.2f} → "
                f"{prompt.meta['losses'][-1]:.2f}, {prompt.meta['seconds']:.0f} s"
            )
        job(f"learned_L{layer}", "learned", layer, Artefacts(prompts={layer: prompt}))
    for layer in fixed_ridge:
        if not (work / f"linear-ridge0.3_L{layer}.npz").is_file():
            old = fit_linear_maps(session, data, [layer], 0.3)
            job(f"linear-ridge0.3_L{layer}", "linear", layer, Artefacts(linear=old))
    report(work, data, maps, layers, causal, training, fixed_ridge)


def report(work: Path, data, maps, layers: list[int], causal: list[int], training, fixed_ridge=()) -> None:
    """Tables (top-1 and p@10 with 95% intervals, paired differences) from the saved hits."""
    import numpy as np

    from bench.common import write
    from lenslab.probes.stats import bootstrap_by_group, format_interval

    def hits(name: str):
        path = work / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path) as npz:
            return npz["hits"], npz["doc_ids"], npz["bigram_hits"], float(npz["seconds"])

    first = hits(f"direct_L{layers[0]}")
    if first is None:
        log("nothing evaluated yet")
        return
    _, docs, bigram_hits, _ = first

    def cell(values) -> str:
        interval = bootstrap_by_group(values.astype(np.float64), docs, unit="documents")
        return format_interval(interval.estimate, interval.low, interval.high, percent=True)

    def diff(a, b) -> tuple[str, bool]:
        interval = bootstrap_by_group(a.astype(np.float64) - b.astype(np.float64), docs, unit="documents")
        text = format_interval(interval.estimate, interval.low, interval.high, percent=True)
        return text, bool(interval.low > 0)

    n_test, n_docs = len(docs), len(np.unique(docs))
    n_train = len(data.split(False))
    train_docs = len(np.unique(data.doc_ids[data.split(False)]))
    lines = [
        "# Future Lens at paper scale (embedded model)",
        "",
        f"`{data.model_id}`, CPU, {torch.get_num_threads()} threads, machine shared with other jobs. "
        f"Corpus: Lee news corpus from the `{GENSIM_WHEEL}` wheel "
        f"({data.settings.source.rsplit('/', 1)[-1]}, 343 articles). {n_train} train examples from "
        f"{train_docs} documents, {n_test} test examples from "
        f"{n_docs} other documents; prefixes BOS + {data.settings.prefix_tokens - 1} tokens, labels = the "
        "model's greedy tokens t+1..t+4. Top-1 (%) with 95% intervals from 1000 bootstrap resamples of "
        "test documents; fixed and learned free-running (the paper's protocol).",
        "",
        f"Linear maps: relative ridge chosen per layer and N from {maps.meta['ridge_grid']} on "
        f"{maps.meta['validation']['n_examples']} held-out training examples "
        f"({maps.meta['validation']['n_documents']} training documents; score: MSE after the final norm), "
        "then refitted on all training examples; identity shrinkage. Learned prompts: "
        f"{training.n_prompt} vectors, 1 epoch on {training.max_examples} training examples, "
        f"batch {training.batch_size}, AdamW lr {training.lr}. "
        f"Reduced from the paper: direct/linear at layers {layers}, fixed/learned at layers {causal} only. "
        "`linear-ridge0.3`: the same maps with the previous fixed ridge 0.3 instead of the validated one. "
        f"Linear fit (validation + refit, {len(maps.layers)} layers): "
        f"{maps.meta.get('seconds', float('nan')):.0f} s.",
        "",
        "| method | layer | " + " | ".join(f"N={n} top-1" for n in range(4)) + " | N=1 p@10 | seconds |",
        "| --- | --- | " + " | ".join("---" for _ in range(4)) + " | --- | --- |",
    ]
    record: dict[str, object] = {"n_test": n_test, "n_test_documents": n_docs, "n_train": n_train, "rows": []}
    where = {
        "direct": layers,
        "linear": layers,
        "fixed": causal,
        "learned": causal,
        "linear-ridge0.3": fixed_ridge,
    }
    for method, method_layers in where.items():
        for layer in method_layers:
            got = hits(f"{method}_L{layer}")
            if got is None:
                continue
            h, _, _, seconds = got
            row = [cell(h[:, n, 0]) for n in range(4)]
            lines.append(
                f"| {method} | {layer} | " + " | ".join(row) + f" | {cell(h[:, 1, -1])} | {seconds:.0f} |"
            )
            record["rows"].append({"method": method, "layer": layer, "top1": h[:, :, 0].mean(0).tolist()})
    lines.append(
        "| bigram | — | "
        + " | ".join(cell(bigram_hits[:, n, 0]) for n in range(4))
        + f" | {cell(bigram_hits[:, 1, -1])} | |"
    )
    lines += [
        "",
        "Paired differences of top-1 (percentage points, 95% interval over test documents):",
        "",
        "| comparison | layer | " + " | ".join(f"N={n}" for n in range(4)) + " |",
        "| --- | --- | " + " | ".join("---" for _ in range(4)) + " |",
    ]
    pairs = (
        ("linear", "direct", layers),
        ("learned", "fixed", causal),
        ("linear", "linear-ridge0.3", fixed_ridge),
    )
    for better, worse, pair_layers in pairs:
        for layer in pair_layers:
            a, b = hits(f"{better}_L{layer}"), hits(f"{worse}_L{layer}")
            if a is None or b is None:
                continue
            cells = []
            for n in range(4):
                text, sure = diff(a[0][:, n, 0], b[0][:, n, 0])
                cells.append(f"**{text}**" if sure else text)
            lines.append(f"| {better} − {worse} | {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the interval excludes 0 (the first method is better at 95% confidence).", ""]
    (work / "record.json").write_text(json.dumps(record, indent=1))
    write("future_lens_paper", "\n".join(lines))


if __name__ == "__main__":
    main()
