"""`lenslab prepare` of a baseline commit against the working tree, back to back, interleaved.

Each run gets a fresh ``LENSLAB_HOME`` whose ``models`` folder links to the converted models
(``~/.cache/lenslab/models``), so no conversion is timed, and every family fits its default
artefacts from scratch. The baseline is ``git archive`` of the commit into a temporary folder
named ``lenslab`` (so ``import lenslab`` resolves through ``PYTHONPATH``); the working tree is
linked the same way. Per-family seconds come from prepare's own "prepare <family>: N s" lines;
the child's CPU seconds (``RUSAGE_CHILDREN``) are recorded beside wall seconds, since on a shared
machine CPU time is disturbed less by other jobs than wall time. After each run the artefacts'
saved quality figures are read back (neurosymbolic evaluation, SAE held-out EV / CE recovered,
Future Lens validation, Jacobian lens provenance), so speed is never bought with quality.

    python bench/bench_prepare.py --baseline 30942cc --repeat 1

writes ``bench/results/prepare.md`` (``prepare_<family>.md`` with ``--only``) and rebuilds
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lenslab.bench.common import machine, write

ROOT = Path(__file__).resolve().parents[1]
FAMILY_LINE = re.compile(r"^prepare (\S+): (\d+) s$", re.M)


def checkout(commit: str, into: Path) -> Path:
    """``git archive`` of ``commit`` into ``into/lenslab``; returns the folder for PYTHONPATH."""
    target = into / "lenslab"
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return into


def working_tree(into: Path) -> Path:
    """A folder whose ``lenslab`` entry links to this working tree."""
    into.mkdir(parents=True)
    (into / "lenslab").symlink_to(ROOT)
    return into


# ``--only FAMILY``: that family's preparer alone, printing prepare's own timing line
ONLY = """
import sys, time
from lenslab.models import ModelSession
from lenslab.probes import FAMILIES
session = ModelSession.load(sys.argv[1])
for family in FAMILIES:
    name = family.__name__.rsplit(".", 1)[-1]
    if name == sys.argv[2]:
        started = time.perf_counter()
        family.prepare_default_artefacts(session)
        print(f"prepare {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
"""


def prepare(python_path: Path, models: Path, model: str, only: str | None = None) -> dict:
    """One ``lenslab prepare`` in a fresh home: wall and CPU seconds, per-family seconds, quality."""
    home = Path(tempfile.mkdtemp(prefix="lenslab-prepare-home-"))
    (home / "models").symlink_to(models)
    env = {**os.environ, "PYTHONPATH": str(python_path), "LENSLAB_HOME": str(home)}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lenslab.cli", "prepare", "--model", model]
        if only is None
        else [sys.executable, "-c", ONLY, model, only],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"prepare failed ({python_path}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    families = {name: int(seconds) for name, seconds in FAMILY_LINE.findall(done.stderr)}
    return {"wall": wall, "cpu": cpu, "families": families, "quality": quality(home / "artefacts", model)}


def quality(artefacts: Path, model: str) -> dict[str, str]:
    """The saved quality figures of each family's default artefact, as short text."""
    out: dict[str, str] = {}
    for meta in sorted((artefacts / "neurosymbolic" / model).glob("*/meta.json")):
        saved = json.loads(meta.read_text())
        table = saved["metrics"]["evaluation"]
        row = next(r for r in table["rows"] if r["task"] == "all")
        cells = [f"encoder L{saved['chosen_layer']}, merge L{saved['merge_layer']}, n={row['n']}"]
        for name in ("few_shot_accuracy", "merged_accuracy", "oracle_accuracy", "merged_ce_change"):
            value = row.get(name)
            if isinstance(value, list):  # (estimate, low, high, ...)
                cells.append(f"{name} {value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]")
            elif isinstance(value, int | float):  # artefacts saved before intervals were kept
                cells.append(f"{name} {value:.3f}")
        out["neurosymbolic"] = "; ".join(cells)
    sae = artefacts / "sae" / model / "default" / "lenslab.json"
    if sae.is_file():
        saved = json.loads(sae.read_text())
        intervals = saved.get("held_out", {}).get("intervals", {})
        cells = []
        for name in ("explained_variance", "ce_recovered"):
            low, high = intervals.get(name, [float("nan")] * 2)
            cells.append(f"{name} {saved['metrics'][name]:.4f} [{low:.4f}, {high:.4f}]")
        out["sae"] = "; ".join(cells)
    for family, file in (("future_lens", "linear_maps.safetensors"), ("jacobian_lens", "lens.safetensors")):
        path = artefacts / family / model / file
        if path.is_file():
            out[family] = f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}; " + _summary(path)
    return out


def _summary(path: Path) -> str:
    """Validation figures from a safetensors artefact's metadata (Future Lens, Jacobian lens)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
    validation = meta.get("validation") or {}
    cells = []
    for key, value in validation.items():
        flat = _numbers(value)
        if flat and key not in {"n_examples", "n_documents"}:
            cells.append(f"{key} mean {statistics.fmean(flat):.4f} over {len(flat)}")
    provenance = meta.get("provenance") or {}
    for key in ("n_prompts", "n_positions", "converged"):
        if key in provenance:
            cells.append(f"{key} {provenance[key]}")
    return "; ".join(cells) or "no validation figures saved"


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)] if value == value else []
    if isinstance(value, list):
        return [x for item in value for x in _numbers(item)]
    if isinstance(value, dict):
        return [x for item in value.values() for x in _numbers(item)]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="30942cc", help="git commit to compare against")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs of runs")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "lenslab" / "models"))
    parser.add_argument("--only", help="time one family's preparer alone (e.g. neurosymbolic)")
    args = parser.parse_args()
    models = Path(args.models)
    load_start = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="lenslab-bench-prepare-"))
    trees = {
        "baseline": checkout(args.baseline, scratch / "baseline"),
        "current": working_tree(scratch / "current"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeat):
        for name, tree in trees.items():
            runs[name].append(prepare(tree, models, args.model, args.only))
            print(name, json.dumps(runs[name][-1]), file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    families = list(dict.fromkeys(f for rs in runs.values() for r in rs for f in r["families"]))

    def best(name: str, key: str) -> float:
        return min(r[key] for r in runs[name])

    lines = [
        "## `lenslab prepare`: working tree vs. a baseline commit",
        "",
        f"{machine()}; model {args.model} (converted model linked in, so no conversion is timed); "
        f"baseline `{args.baseline}`, current `{head.stdout.strip()}` + working tree; "
        + (f"**only the {args.only} family's preparer**; " if args.only else "")
        + f"{args.repeat} "
        "interleaved pair(s) of runs, each in a fresh LENSLAB_HOME; best of the pairs shown. "
        f"Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{'/'.join(f'{x:.2f}' for x in load_end)}: the machine is shared, so CPU seconds of the "
        "prepare process (user + system) are given beside wall seconds.",
        "",
        "| family | baseline s | current s | ratio |",
        "|---|---|---|---|",
    ]
    for family in families:
        base = min(r["families"].get(family, 0) for r in runs["baseline"])
        cur = min(r["families"].get(family, 0) for r in runs["current"])
        lines.append(
            f"| {family} | {base} | {cur} | {cur / base:.2f} |"
            if base
            else f"| {family} | {base} | {cur} | – |"
        )
    for key, label in (("wall", "total wall"), ("cpu", "total CPU")):
        base, cur = best("baseline", key), best("current", key)
        lines.append(f"| **{label}** | {base:.0f} | {cur:.0f} | **{cur / base:.2f}** |")
    lines += ["", "Every run (wall s / CPU s):", ""]
    for name, rs in runs.items():
        lines.append(f"- {name}: " + ", ".join(f"{r['wall']:.0f} / {r['cpu']:.0f}" for r in rs))
    lines += [
        "",
        "Quality of the saved artefacts (first run of each):",
        "",
        "| family | baseline | current |",
        "|---|---|---|",
    ]
    for family in sorted({k for rs in runs.values() for k in rs[0]["quality"]}):
        cells = [runs[name][0]["quality"].get(family, "–") for name in ("baseline", "current")]
        lines.append(f"| {family} | {cells[0]} | {cells[1]} |")
    # one family alone gets its own section: it never replaces the whole-prepare table
    write("prepare" if args.only is None else f"prepare_{args.only}", "\n".join(lines))


if __name__ == "__main__":
    main()
