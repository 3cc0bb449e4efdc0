"""Sweeps without Ray: sources, bad items, aggregates against an independent computation, the report
round trip, and resuming after an interruption (in-process and a SIGKILLed CLI driver)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lenslab.analyses.report import Report
from lenslab.probes import Result
from lenslab.probes.logit_lens import LogitLens, LogitLensConfig
from lenslab.probes.sweep_result import FAILED, OK
from lenslab.progress import Cancelled
from lenslab.sweeps import load_prompts, resume, sweep
from lenslab.sweeps.engine import Status, shard_path
from lenslab.sweeps.job import SweepJob, grid_points
from lenslab.sweeps.runner import read_manifest

PROMPTS = ["The cat sat on the", "", "Paris is the capital of", "x" * 40, "One two three four", "Hello"]

TINY = "tiny:gemma3"  # the seeded tiny random model, loadable by name on every worker


def _prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out by hand (independent of scipy)."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_bad_items_are_reported_and_aggregates_match_direct_runs(tmp_path, tiny_gemma):
    source = _prompt_file(tmp_path)
    result = sweep(
        "logit_lens",
        str(source),
        tmp_path / "sweep",
        models=[TINY],
        grid=["k=2,4"],
        max_tokens=30,
        shard_size=4,
        backend="serial",
    )
    assert result.status.size == 2 * len(PROMPTS)
    failed = {result.prompts[int(result.item_prompt[i])] for i, *_ in result.failures()}
    assert failed == {"", "x" * 40}  # the empty line and the prompt over 30 tokens
    errors = [e for e in result.errors if e]
    assert any("empty" in e for e in errors) and any("30" in e for e in errors)

    # Independent computation: run the logit lens on each good prompt, read the last position.
    good = [p for p in PROMPTS if p and len(p) < 30]
    limit, tiny_gemma.max_tokens = tiny_gemma.max_tokens, 30
    try:
        matches = np.stack(
            [LogitLens().run(tiny_gemma, p, LogitLensConfig(k=2)).final_rank[:, -1] == 0 for p in good]
        )
    finally:
        tiny_gemma.max_tokens = limit  # the fixture is shared by the whole run
    metric = result.metric_names.index("top1_is_final")
    for layer in range(matches.shape[1]):
        k, n = int(matches[:, layer].sum()), len(good)
        assert result.n[0, metric, layer] == n
        assert result.estimate[0, metric, layer] == pytest.approx(k / n)
        low, high = _wilson(k, n)
        assert result.low[0, metric, layer] == pytest.approx(low, abs=1e-9)
        assert result.high[0, metric, layer] == pytest.approx(high, abs=1e-9)
    assert (result.status[result.item_prompt == PROMPTS.index("")] == FAILED).all()
    assert (result.status[result.item_prompt == 0] == OK).all()


def test_report_round_trips_bit_exactly_and_records_the_rerun(tmp_path):
    result = sweep("logit_lens", "tasks:opposites", tmp_path / "s", models=[TINY], limit=3, backend="serial")
    report = Report.load(tmp_path / "s" / "report")
    back = report.results[0]
    for name in ("values", "estimate", "low", "high", "n", "status", "item_prompt"):
        assert np.array_equal(getattr(back, name), getattr(result, name), equal_nan=True), name
    assert back.config == result.config and back.errors == result.errors
    again = Result.from_dict(result.to_dict())
    assert again.metric_names == result.metric_names
    assert report.meta["rerun"][0].startswith("lenslab sweep logit_lens --source tasks:opposites")
    assert set(back.figures()) == {"top1_is_final", "final_prob", "items"}


def test_sources_and_grid_are_checked():
    assert len(load_prompts("tasks:capitals", limit=5).texts) == 5
    corpus = load_prompts("corpus:pydoc", limit=3).texts
    assert len(corpus) == 3 and all(0 < len(t) <= 400 for t in corpus)
    with pytest.raises(ValueError, match="unknown task set"):
        load_prompts("tasks:nope")
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        load_prompts("/nonexistent/prompts.txt")
    assert grid_points(["k=1,2", "layers=0,1;1"]) == [
        (("k", "1"), ("layers", "0,1")),
        (("k", "1"), ("layers", "1")),
        (("k", "2"), ("layers", "0,1")),
        (("k", "2"), ("layers", "1")),
    ]
    with pytest.raises(ValueError, match="k must be"):
        sweep("logit_lens", "tasks:capitals", None, models=[TINY], grid=["k=0"], backend="serial")
    with pytest.raises(ValueError, match="grid"):
        sweep("logit_lens", "tasks:capitals", None, models=[TINY], grid=["k"], backend="serial")
    with pytest.raises(ValueError, match="unknown probe"):
        sweep("nope", "tasks:capitals", None, models=[TINY], backend="serial")


def test_jsonl_lines_that_are_not_prompts_fail_as_items(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain string"\n{"prompt": "an object"}\n{not json\n{"answer": 1}\n', encoding="utf-8")
    result = sweep("logit_lens", str(path), tmp_path / "s", models=[TINY], backend="serial")
    assert result.status.tolist() == [OK, OK, FAILED, FAILED]
    assert "line 3 is not JSON" in result.errors[2] and "line 4" in result.errors[3]


def _stop_after(shards: int):
    def on_status(status: Status) -> None:
        if status.shards_run >= shards:
            raise Cancelled("stop")

    return on_status


def test_resume_runs_only_the_unfinished_shards(tmp_path):
    kwargs = {"models": [TINY], "limit": 10, "shard_size": 2, "backend": "serial"}
    reference = sweep("logit_lens", "tasks:capitals", tmp_path / "ref", **kwargs)
    folder = tmp_path / "interrupted"
    with pytest.raises(Cancelled):
        sweep("logit_lens", "tasks:capitals", folder, on_status=_stop_after(2), **kwargs)
    assert Status.read(folder).state == "cancelled"
    job = SweepJob(reference.config, tuple(reference.prompts))
    written = {
        s.id: shard_path(folder, s).stat().st_mtime_ns for s in job.shards() if shard_path(folder, s).exists()
    }
    assert len(written) == 2
    seen: list[Status] = []
    finished = resume(folder, backend="serial", on_status=seen.append)
    assert seen[-1].shards_run == len(job.shards()) - 2  # nothing done twice
    # each callback got the status of its moment, not one object updated afterwards
    assert [s.shards_done for s in seen[:-1]] == list(range(2, len(job.shards()) + 1))
    assert seen[0].state == "running" and seen[-1].state == "done"
    assert {
        s.id: shard_path(folder, s).stat().st_mtime_ns for s in job.shards() if s.id in written
    } == written
    assert np.array_equal(finished.values, reference.values, equal_nan=True)  # nothing lost
    assert finished.status.tolist() == reference.status.tolist()
    with pytest.raises(FileExistsError, match="resume"):
        sweep("logit_lens", "tasks:capitals", folder, **kwargs)


def test_a_sigkilled_cli_driver_resumes_from_its_folder(tmp_path, lenslab_home):
    """Kill the CLI driver mid-sweep, then resume from its folder.

    The driver is frozen (SIGSTOP) the moment a finished shard is seen and only then killed, and
    the sweep has 60 one-item shards, so "mid-sweep" does not depend on how fast shards run
    (with 6 shards a fast machine finished them all between two polls).
    """
    folder = tmp_path / "cli"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"The number {i} is\n" for i in range(60)), encoding="utf-8")
    command = [sys.executable, "-m", "lenslab.cli", "sweep", "logit_lens", "--source", str(prompts)]
    command += ["--model", TINY, "--shard-size", "1", "--backend", "serial", "--out", str(folder)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        status = Status.read(folder)
        if status is not None and status.shards_done >= 1:
            os.kill(driver.pid, signal.SIGSTOP)
            break
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    status = Status.read(folder)
    assert status is not None and 1 <= status.shards_done < status.shards_total == 60
    assert read_manifest(folder)["n_items"] == 60
    done_before = status.shards_done
    seen: list[Status] = []
    result = resume(folder, backend="serial", on_status=seen.append)
    assert seen[-1].shards_run == 60 - done_before
    assert (result.status == OK).all() and result.status.size == 60
    assert json.loads((folder / "report" / "report.json").read_text())["results"][0]["probe"] == "sweep"


def test_cli_sweep_needs_a_probe_and_a_source(capsys):
    from lenslab.cli import main

    assert main(["sweep", "--backend", "serial"]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["sweep", "--resume", "/nonexistent/sweep"]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_register_result_refuses_clashes():
    from dataclasses import dataclass

    from lenslab.probes.base import register_result, result_class
    from lenslab.probes.sweep_result import SweepResult

    assert result_class("sweep") is SweepResult

    @dataclass(frozen=True)
    class Clash(Result):
        probe = "sweep"

    with pytest.raises(ValueError, match="already registered"):
        register_result(Clash)

    @dataclass(frozen=True)
    class Nameless(Result):
        pass

    with pytest.raises(ValueError, match="no probe name"):
        register_result(Nameless)


def test_cli_sweep_over_a_prompt_file_with_bad_lines(tmp_path, lenslab_home):
    from lenslab.cli import main

    prompts = tmp_path / "some.txt"
    prompts.write_text("the cat sat\n\non the mat\n" + "x " * 600 + "\n", encoding="utf-8")
    folder = tmp_path / "sweep1"
    argv = ["sweep", "logit_lens", "--prompts", str(prompts), "--model", TINY, "--backend", "serial"]
    assert main([*argv, "--max-tokens", "64", "--out", str(folder)]) == 0
    result = Report.load(folder / "report").results[0]
    assert result.status.size == 4  # every line is an item, the bad ones included
    assert (result.status == OK).sum() == 2  # the empty line and the over-long prompt are reported
