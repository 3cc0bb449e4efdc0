"""Concurrency: 8 threads share one model and run mixed registered probes at once.

Each parallel result must equal the same job run alone (arrays bit-exact, plain fields equal), no hook
may stay attached, and the weights must be unchanged. Saboteur threads fail mid-run — a progress
callback that raises, a hook that raises inside the forward — and must not disturb anyone else.
Probes join automatically from the registry; a probe that needs artefacts which are not there, or
whose fast config (``tests/fast_configs.py``) is too slow for the pilot, is left out with a printed note.
"""

from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from e2e_support import STATS, runnable_probes
from fast_configs import fast_config

from lenslab.probes import registered_probes

N_THREADS = 8
PROMPTS = ["The capital of France is", "One, two, three, four,", "def add(a, b):\n    return", "Bonjour, je"]
TIMING_KEY = re.compile(r"(second|elapsed|duration|time|timing|created|per_s)", re.IGNORECASE)


class InjectedFailure(RuntimeError):
    """What the saboteur threads raise."""


def _plain(value: Any) -> Any:
    """Comparable form of a result's plain data: timing fields dropped."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not TIMING_KEY.search(str(k))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"  # NaN != NaN, but two NaN fields are the same result
    return value


def same_result(a: Any, b: Any) -> bool:
    """Whether two results are identical: every array bit-exact, every plain field equal."""
    da, db = a.to_dict(), b.to_dict()
    if _plain(da["data"]) != _plain(db["data"]) or set(da["arrays"]) != set(db["arrays"]):
        return False
    return all(
        np.array_equal(da["arrays"][k], db["arrays"][k], equal_nan=da["arrays"][k].dtype.kind == "f")
        for k in da["arrays"]
        if not TIMING_KEY.search(k)
    )


def weight_fingerprint(session) -> list[float]:
    """A cheap fingerprint of every parameter (sum and a few entries)."""
    with torch.no_grad():
        return [
            v
            for p in session.bridge.original_model.parameters()
            for v in (float(p.sum()), *p.reshape(-1)[:8].tolist())
        ]


def _run_mix(session, jobs: list[tuple[str, str, Any]], saboteurs: bool) -> list[tuple[tuple[str, str], Any]]:
    """Run ``jobs`` spread over N_THREADS threads that start together; saboteurs fail mid-run."""
    barrier = threading.Barrier(N_THREADS)
    per_thread: list[list[tuple[str, str, Any]]] = [[] for _ in range(N_THREADS)]
    workers = N_THREADS - 2 if saboteurs else N_THREADS
    for i, job in enumerate(jobs):
        per_thread[i % workers].append(job)
    active = [0]
    active_lock = threading.Lock()

    def worker(index: int) -> list[tuple[tuple[str, str], Any]]:
        barrier.wait()
        with active_lock:
            active[0] += 1
            STATS.peak("parallel_sessions", active[0])
        try:
            if saboteurs and index == N_THREADS - 2:
                return [(("sabotage", "progress"), _raising_progress(session, jobs[0]))]
            if saboteurs and index == N_THREADS - 1:
                return [(("sabotage", "hook"), _raising_hook(session))]
            out = []
            for name, prompt, config in per_thread[index]:
                out.append(((name, prompt), registered_probes()[name]().run(session, prompt, config)))
            return out
        finally:
            with active_lock:
                active[0] -= 1

    with ThreadPoolExecutor(N_THREADS) as pool:
        futures = [pool.submit(worker, i) for i in range(N_THREADS)]
        return [pair for f in futures for pair in f.result()]


def _raising_progress(session, job: tuple[str, str, Any]) -> str:
    name, prompt, config = job
    calls = [0]

    def progress(fraction: float, message: str = "") -> None:
        calls[0] += 1
        if calls[0] >= 2:
            raise InjectedFailure("progress callback failed mid-run")

    try:
        registered_probes()[name]().run(session, prompt, config, progress)
    except InjectedFailure:
        return "raised"
    return "finished"  # the probe called progress fewer than twice


def _raising_hook(session) -> str:
    def explode(tensor, *, hook):
        raise InjectedFailure("hook failed inside the forward")

    try:
        with session.hooks([(session.resid_name(0), explode)]):
            session.run(PROMPTS[1], [session.resid_name(session.n_layers - 1)])
    except InjectedFailure:
        return "raised"
    return "finished"


def _check_mix(session, probes: dict[str, Any], n_jobs: int, saboteurs: bool) -> None:
    names = sorted(probes)
    jobs = [
        (names[i % len(names)], PROMPTS[i % len(PROMPTS)], probes[names[i % len(names)]][0])
        for i in range(n_jobs)
    ]
    fingerprint = weight_fingerprint(session)
    serial = {(n, p): registered_probes()[n]().run(session, p, c) for n, p, c in dict.fromkeys(jobs)}
    parallel = _run_mix(session, jobs, saboteurs)
    STATS.add("hook_checks")
    STATS.add("hooks_left", session.active_hook_count())
    assert session.active_hook_count() == 0, "hooks left on the shared model"
    assert weight_fingerprint(session) == fingerprint, "the shared model's weights changed"
    outcomes = dict(pair for pair in parallel if pair[0][0] == "sabotage")
    parallel = [pair for pair in parallel if pair[0][0] != "sabotage"]
    if saboteurs:
        assert outcomes[("sabotage", "hook")] == "raised"
        assert outcomes[("sabotage", "progress")] in ("raised", "finished")
    differing = [key for key, result in parallel if not same_result(result, serial[key])]
    STATS.add("parallel_jobs", len(parallel))
    STATS.add("failures", len(differing))
    assert not differing, f"parallel results differ from serial ones for {differing}"
    assert len(parallel) == len(jobs) and {key for key, _ in parallel} == set(serial)


def test_same_result_notices_a_difference(tiny_gemma):
    from lenslab.probes import LogitLens, LogitLensConfig

    a = LogitLens().run(tiny_gemma, "abc", LogitLensConfig(k=3))
    b = LogitLens().run(tiny_gemma, "abd", LogitLensConfig(k=3))
    assert same_result(a, a) and not same_result(a, b)


def test_mixed_registered_probes_in_parallel_on_a_tiny_model(tiny_gemma):
    probes = runnable_probes(tiny_gemma)
    assert "logit_lens" in probes
    _check_mix(tiny_gemma, probes, n_jobs=3 * len(probes) + 6, saboteurs=True)


@pytest.mark.slow
def test_eight_threads_on_the_embedded_model(embedded_session):
    """The logit lens on the embedded model: 6 threads computing while 2 saboteurs fail mid-run."""
    session = embedded_session
    config = fast_config("logit_lens")
    if config.layers is None:  # three layers keep it cheap on a CPU; the threads still interleave
        config = config.replace(layers=(0, session.n_layers // 2, session.n_layers - 1))
    _check_mix(session, {"logit_lens": (config, None, 0.0)}, n_jobs=N_THREADS - 2, saboteurs=True)
