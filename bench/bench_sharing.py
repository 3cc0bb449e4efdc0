"""Fair sharing of one model: 4 and 8 simulated users (threads) running page defaults at once.

Every registered probe whose default config runs here without trained artefacts (within
``--max-solo`` seconds) is a workload; its solo time is the median of ``--repeat`` runs alone.
Then ``users`` threads start together: user 0 runs the shortest probe (the "short" user, repeated
``--short-runs`` times back to back), the others loop over the long probes. Each run is one
scheduler job, so waited and held seconds are measured, not inferred. Two locks are compared in
the same process, on the same model and inputs:

* ``fair``: the session's FairLock (least attained service; a job keeps the model between its
  forward passes, so its own work outside them is not slowed by other users' compute, and yields
  at section boundaries to a job that has attained less);
* ``plain``: an RLock held for the whole probe, as before (no yields, first come first served
  by the OS).

Target: with 4 users, a probe that takes ≤ 2 s alone finishes within 3× its solo time (median
over its runs). Every result computed under contention is compared with the solo result
(arrays bit-equal). Run: ``python bench/bench_sharing.py`` (embedded model) or ``--tiny``;
``--probes logit_lens,jacobian,...`` picks the workloads (the shortest is the short user's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np

from bench.common import machine, write
from lenslab.models.scheduler import FairLock, Job
from lenslab.probes import get_probe, registered_probes
from lenslab.progress import NO_PROGRESS, Cancelled

PROMPT = "The Eiffel Tower is located in the city of"


class PlainLock:
    """The old behaviour: an RLock held for a whole probe; the FairLock API as no-ops."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._local = threading.local()

    def __enter__(self) -> PlainLock:
        job = getattr(self._local, "job", None)
        started = time.perf_counter()
        self._lock.acquire()
        if job is not None:
            job.waited_s += time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def yield_point(self) -> None:
        """Never gives the model up."""

    def yield_pinned(self, undo, redo) -> None:
        """Never gives the model up."""

    def held_by_me(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]

    def queue_length(self) -> int:
        return 0

    @contextmanager
    def exclusive(self):
        with self:
            yield

    @contextmanager
    def job(self, label: str = "", on_wait=None):
        outer = getattr(self._local, "job", None)
        self._local.job = current = Job(label)
        try:
            yield current
        finally:
            self._local.job = outer


TIMING_FIELDS = ("seconds", "timings", "examples_per_second", "elapsed")  # measured, not computed


def arrays_of(result) -> dict[str, np.ndarray]:
    """The result's arrays and plain fields (wall-clock timings left out), for an exact comparison."""
    payload = result.to_dict()
    data = {k: v for k, v in payload["data"].items() if k not in TIMING_FIELDS}
    return {**payload["arrays"], "_data": np.frombuffer(repr(data).encode(), dtype=np.uint8)}


def same(a, b) -> bool:
    left, right = arrays_of(a), arrays_of(b)
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def workloads(
    session, max_solo: float, repeat: int, names: list[str] | None = None, long_repeat: int = 1
) -> list[tuple[str, object, float, object]]:
    """(name, config, solo seconds, solo result) of every probe (or of ``names``) that runs here alone.

    The first (the short user's when ``names`` starts with it) is timed ``repeat`` runs after
    a warm-up run; the others' first run is their timing when ``long_repeat`` is 1 (their solo
    time only scales the long-ratio column), else ``long_repeat`` runs after it.
    """
    from lenslab.models import guards

    found = []
    for name in names or sorted(registered_probes()):
        probe = get_probe(name)
        config = probe.default_config()
        try:
            started = time.perf_counter()
            with guards.deadline(max_solo * 2):
                result = probe.run(session, PROMPT, config, guards.time_limited(NO_PROGRESS, max_solo * 2))
            first = time.perf_counter() - started
        except Exception as exc:  # missing artefacts, hub, time limit: not a workload here
            print(f"skip {name}: {type(exc).__name__}: {str(exc)[:80]}", file=sys.stderr)
            continue
        runs = repeat if not found else long_repeat
        times = [first] if found and long_repeat == 1 else []
        for _ in range(runs - len(times)):
            started = time.perf_counter()
            result = probe.run(session, PROMPT, config)
            times.append(time.perf_counter() - started)
        solo = statistics.median(times)
        if solo <= max_solo:
            found.append((name, config, solo, result))
        print(f"{name}: solo {solo:.2f} s", file=sys.stderr)
    return sorted(found, key=lambda w: w[2])


def solo_seconds(session, item, repeat: int) -> list[float]:
    """Wall times of the short probe alone, measured again right before and after a contended row.

    Each run is a job in a fresh thread, as under contention: on this CPU build a probe in the
    main thread runs about 2× slower than in a worker thread (OpenMP teams differ), which would
    flatter the ratio.
    """
    session.lock = lock = FairLock()
    name, config, _, _ = item
    times: list[float] = []

    def one() -> None:
        with lock.job(name) as job:
            get_probe(name).run(session, PROMPT, config)
        times.append(job.elapsed_s)

    for _ in range(repeat):
        thread = threading.Thread(target=one)
        thread.start()
        thread.join()
    return times


def contend(session, lock, work, users: int, short_runs: int) -> dict[str, object]:
    """Run ``users`` threads at once; user 0 repeats the short probe, the rest loop over long ones."""
    session.lock = lock
    short, longs = work[0], work[1:] or work[:1]
    start, stop = threading.Barrier(users), threading.Event()
    short_jobs: list[Job] = []
    long_jobs: list[Job] = []
    results: list[tuple[object, object]] = []  # compared after the run: not extra load meanwhile

    def until_stopped(fraction: float, message: str = "") -> None:
        if stop.is_set():  # the short user is done: long runs end at their next progress report
            raise Cancelled("the benchmark row is over")

    def run(item, jobs: list[Job], progress=NO_PROGRESS) -> None:
        name, config, _, expected = item
        on_wait = None if progress is NO_PROGRESS else (lambda ahead: progress(0.0))  # parked: end too
        try:
            with lock.job(name, on_wait) as job:
                got = get_probe(name).run(session, PROMPT, config, progress)
        except Cancelled:
            return
        jobs.append(job)
        results.append((got, expected))

    def short_user() -> None:
        start.wait()
        time.sleep(0.2)  # the long users hold the model first
        for _ in range(short_runs):
            run(short, short_jobs)
        stop.set()

    def long_user(i: int) -> None:
        start.wait()
        k = i
        while not stop.is_set():
            run(longs[k % len(longs)], long_jobs, until_stopped)
            k += 1

    threads = [threading.Thread(target=short_user)]
    threads += [threading.Thread(target=long_user, args=(i,)) for i in range(users - 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mismatches = sum(not same(got, expected) for got, expected in results)
    return {"short": short_jobs, "long": long_jobs, "mismatches": mismatches}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a random 8-layer tiny Gemma instead")
    parser.add_argument("--users", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--max-solo", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--short-runs", type=int, default=5)
    parser.add_argument("--long-repeat", type=int, default=1, help="solo runs of each long probe")
    parser.add_argument("--probes", default="", help="comma-separated workloads (default: all that run)")
    parser.add_argument("--short", default="", help="the short user's probe (default: the fastest)")
    parser.add_argument("--locks", default="plain,fair", help="which locks to compare")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    locks = {"plain": PlainLock, "fair": FairLock}
    if args.tiny:
        from lenslab.models.tiny import tiny_session

        session, model = tiny_session("gemma3", n_layers=8), "tiny random Gemma 3 (8 layers)"
    else:
        from lenslab.models import ModelSession

        session = ModelSession.load()
        model = session.model_id
    load_before = os.getloadavg()
    names = [n for n in args.probes.split(",") if n]
    if args.short and names:  # the short user's probe first: timed `repeat` times
        names = [args.short, *[n for n in names if n != args.short]]
    work = workloads(session, args.max_solo, args.repeat, names, args.long_repeat)
    if args.short:  # the short user's probe named, not picked by a noisy solo time
        work = [w for w in work if w[0] == args.short] + [w for w in work if w[0] != args.short]
    short = work[0]
    rows, verdicts = [], []
    for users in args.users:
        for kind in args.locks.split(","):
            lock = locks[kind]()
            before = solo_seconds(session, short, args.repeat)  # around the row: the load drifts
            out = contend(session, lock, work, users, args.short_runs)
            after = solo_seconds(session, short, args.repeat)
            solo = statistics.median([*before, *after])
            print(f"solo runs before {before} after {after}", file=sys.stderr)
            jobs = out["short"]
            walls = [j.elapsed_s for j in jobs]
            ratio = statistics.median(walls) / solo
            waited = statistics.median(j.waited_s for j in jobs)
            ran = statistics.median(j.ran_s for j in jobs)
            long_ratios = [
                j.elapsed_s / next(w[2] for w in work if w[0] == j.label) for j in out["long"]
            ] or [float("nan")]
            rows.append(
                f"| {users} | {kind} | {short[0]} | {solo:.2f} | {statistics.median(walls):.2f} "
                f"[{min(walls):.2f}, {max(walls):.2f}] | {ratio:.2f}× | {waited:.2f} | {ran:.2f} | "
                f"{statistics.median(long_ratios):.2f}× (n={len(out['long'])}) | {out['mismatches']} | "
                f"{os.getloadavg()[0]:.1f} |"
            )
            if kind == "fair":
                verdicts.append((users, ratio))
            print(rows[-1], file=sys.stderr)
    session.lock = FairLock()
    lines = [
        "## Fair sharing of one model (bench_sharing.py)",
        "",
        f"Model {model}; {machine()}; load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.1f}' for x in load_before)}, at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. Workloads (page defaults, solo median "
        f"of {args.repeat}): "
        + ", ".join(f"{w[0]} {w[2]:.2f} s" for w in work)
        + f". User 0 runs the short probe ({short[0]}) {args.short_runs}× back to back, starting 0.2 s "
        "after the others, who loop over the longer probes. Wall = the short probe's wall time "
        "under contention (median [min, max] over its runs); ratio = median wall / solo; waited = "
        "median seconds queued for the model; ran = median of wall minus waited; solo = the short "
        "probe alone, median of "
        f"{args.repeat} runs right before and {args.repeat} right after its row; long ratio = the "
        "long probes' wall / solo (median; runs still going when the short user finished are "
        "cancelled and not counted). "
        "Mismatches = results under contention not bit-equal to the solo result. Load = the 1-minute "
        "load average when the row finished (the machine's other jobs compete for the same cores).",
        "",
        "| users | lock | short probe | solo s | wall s | ratio | waited s | ran s | long ratio "
        "| mismatches | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Target: fair lock, short-probe ratio ≤ 3× (n = {args.short_runs} short runs per row): "
        + "; ".join(f"{u} users {r:.2f}× ({'met' if r <= 3 else 'missed'})" for u, r in verdicts),
    ]
    if not args.no_write:
        write("sharing", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
