"""FairLock: mutual exclusion, least-attained-service order, yield points, pins, waiting callbacks.

Orders are forced by waiting on the queue length, never by sleeping, so the tests check who runs
first, not how fast anything is.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from lenslab.models.scheduler import FairLock
from lenslab.progress import Cancelled


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the other threads"
        time.sleep(0.001)


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _holder_then_waiter(
    lock: FairLock, holder, holding: threading.Event, waiter, release: threading.Event
) -> None:
    """Start ``holder``; once it signals ``holding``, start ``waiter``; when that one queues, ``release``."""
    first = _start(holder)
    holding.wait(30)
    second = _start(waiter)
    _wait_for(lambda: lock.queue_length() == 1)
    release.set()
    first.join(30)
    second.join(30)


def test_mutual_exclusion_and_reentrancy():
    lock, inside, worst = FairLock(poll_s=0.01), [0], [0]

    def work():
        for _ in range(200):
            with lock, lock:  # re-entrant
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
                inside[0] -= 1
            lock.yield_point()  # outside the lock: a no-op

    threads = [_start(work) for _ in range(6)]
    for t in threads:
        t.join(60)
    assert worst[0] == 1 and not lock.held_by_me()
    with pytest.raises(RuntimeError):
        lock.release()


def test_the_job_that_held_the_model_least_goes_first():
    lock, order = FairLock(poll_s=0.01), []
    lock.acquire()

    def waiter(name: str, held: float, queued: threading.Event):
        def as_if_it_had_run(ahead: int) -> None:  # called while it queues at the job's start
            lock.current_job().held_s = held
            queued.set()

        def run():
            with lock.job(name, as_if_it_had_run), lock:
                order.append(name)

        return run

    queued_long, queued_short = threading.Event(), threading.Event()
    long_job = _start(waiter("long", 50.0, queued_long))
    queued_long.wait(30)
    short_job = _start(waiter("short", 0.0, queued_short))  # arrives later, has used the model less
    queued_short.wait(30)
    lock.release()
    long_job.join(30)
    short_job.join(30)
    assert order == ["short", "long"]


def test_a_long_job_yields_between_forward_passes_but_not_while_pinned():
    lock, order = FairLock(poll_s=0.01), []
    ready, proceed = threading.Event(), threading.Event()

    def long_run():
        with lock.job("long") as job:
            job.held_s = 100.0  # it has run for a while already
            with lock:  # a probe holding the lock for its whole run
                ready.set()
                proceed.wait(30)
                with lock.exclusive():  # hooks attached: no yield here
                    lock.yield_point()
                    order.append("long: pinned pass")
                lock.yield_point()  # end of a forward pass: the short job goes first
                order.append("long: after yield")

    def short_run():
        with lock.job("short"), lock:
            order.append("short")

    _holder_then_waiter(lock, long_run, ready, short_run, proceed)
    assert order == ["long: pinned pass", "short", "long: after yield"]


def test_waiting_callback_reports_how_many_are_ahead_and_can_cancel():
    lock, seen = FairLock(poll_s=0.01), []
    lock.acquire()

    def cancelled_waiter():
        def on_wait(ahead: int) -> None:
            seen.append(ahead)
            if len(seen) >= 3:
                raise Cancelled("user pressed cancel")

        with pytest.raises(Cancelled), lock.job("x", on_wait), lock:
            pass

    t = _start(cancelled_waiter)
    t.join(30)
    assert seen[:3] == [1, 1, 1] and lock.queue_length() == 0
    lock.release()
    with lock.job("y", seen.append) as job, lock:  # free: no wait, no callback
        pass
    assert seen[3:] == [] and job.waits == 0 and job.held_s >= 0


def test_parallel_probe_runs_equal_the_serial_ones(tiny_gemma):
    from lenslab.probes import LogitLens, LogitLensConfig

    prompts = ["The cat sat", "on the mat", "a b c d e", "zz top"] * 2
    config = LogitLensConfig(k=3)
    serial = [LogitLens().run(tiny_gemma, p, config) for p in prompts]
    parallel: dict[int, object] = {}

    def run(i: int) -> None:
        with tiny_gemma.lock.job(f"user {i}"):
            parallel[i] = LogitLens().run(tiny_gemma, prompts[i], config)

    threads = [_start(lambda i=i: run(i)) for i in range(len(prompts))]
    for t in threads:
        t.join(120)
    for i, expected in enumerate(serial):
        got = parallel[i]
        assert np.array_equal(got.top_ids, expected.top_ids)
        assert np.array_equal(got.top_probs, expected.top_probs)


def test_a_job_keeps_the_model_between_its_lock_sections():
    """Work a job does outside ``with lock:`` runs alone: a waiter gets the model only when the job ends."""
    lock, order = FairLock(poll_s=0.01), []
    between, finish = threading.Event(), threading.Event()

    def job_a():
        with lock.job("a"):
            with lock:
                order.append("a: section")
            between.set()  # outside the lock, still inside the job
            finish.wait(30)
            order.append("a: work between sections")

    def job_b():
        with lock.job("b") as job:
            job.held_s = 100.0  # has attained more: no reason for "a" to yield
            with lock:
                order.append("b")

    first = _start(job_a)
    between.wait(30)
    assert not lock.held_by_me() and lock.queue_length() == 0
    second = _start(job_b)
    _wait_for(lambda: lock.queue_length() == 1)  # "b" queues although "a" is in no lock section
    finish.set()
    first.join(30)
    second.join(30)
    assert order == ["a: section", "a: work between sections", "b"]


def test_a_long_job_parks_while_a_shorter_job_runs_alone():
    """At its next section boundary a long job yields; it resumes only after the short job's whole run."""
    lock, order = FairLock(poll_s=0.01), []
    kept, go_on = threading.Event(), threading.Event()
    record: dict[str, object] = {}

    def long_run():
        with lock.job("long") as job:
            job.held_s = 100.0
            with lock:
                order.append("long: pass 1")
            kept.set()
            go_on.wait(30)
            with lock:  # a new section: the short job, queued meanwhile, goes first
                order.append("long: pass 2")
        record["long"] = job

    def short_run():
        with lock.job("short") as job:
            with lock:
                order.append("short: pass")
            order.append("short: decoding outside the lock")
            with lock:
                order.append("short: pass 2")
        record["short"] = job

    _holder_then_waiter(lock, long_run, kept, short_run, go_on)
    assert order == [
        "long: pass 1",
        "short: pass",
        "short: decoding outside the lock",
        "short: pass 2",
        "long: pass 2",
    ]
    long_job, short_job = record["long"], record["short"]
    assert long_job.yields == 1 and long_job.waits == 1 and long_job.waited_s > 0  # parked = waited
    assert short_job.waits == 1 and short_job.yields == 0
    frozen = short_job.elapsed_s  # a finished job's wall time stops at its end
    _wait_for(lambda: time.perf_counter() > short_job.ended + 0.01)
    assert short_job.elapsed_s == frozen and short_job.ran_s <= frozen
    assert lock.queue_length() == 0 and not lock.kept_by_me()


def test_a_job_cancelled_while_parked_leaves_the_lock_free():
    lock = FairLock(poll_s=0.01)
    kept, go_on, parked = threading.Event(), threading.Event(), threading.Event()
    outcome: list[str] = []

    def on_wait(ahead: int) -> None:
        if ahead:
            parked.set()
            raise Cancelled("user pressed cancel")

    def long_run():
        try:
            with lock.job("long", on_wait) as job:
                job.held_s = 100.0
                with lock:
                    pass
                kept.set()
                go_on.wait(30)
                with lock:
                    outcome.append("long ran again")
        except Cancelled:
            outcome.append("cancelled")

    def other_user():
        with lock:  # no declared job: attained 0, so "long" yields to it at its next section
            outcome.append("other ran")
            parked.wait(30)

    _holder_then_waiter(lock, long_run, kept, other_user, go_on)
    assert sorted(outcome) == ["cancelled", "other ran"] and lock.queue_length() == 0  # never ran again
    with lock:  # free again
        assert lock.held_by_me()


def test_a_hook_context_lends_the_model_between_passes_with_its_hooks_off():
    lock, order = FairLock(poll_s=0.01), []
    first_pass, go_on = threading.Event(), threading.Event()

    def long_run():
        with lock.job("long") as job, lock.exclusive():  # one hook context
            job.held_s = 100.0
            order.append("long: pass 1")
            first_pass.set()
            go_on.wait(30)
            with lock.exclusive():  # nested pin (weights changed): never yields
                lock.yield_pinned(lambda: order.append("wrong undo"), lambda: order.append("wrong redo"))
            lock.yield_pinned(lambda: order.append("long: hooks off"), lambda: order.append("long: hooks on"))
            order.append("long: pass 2")

    def short_run():
        with lock.job("short"), lock:
            order.append("short")

    _holder_then_waiter(lock, long_run, first_pass, short_run, go_on)
    assert order == ["long: pass 1", "long: hooks off", "short", "long: hooks on", "long: pass 2"]


def test_a_shorter_job_runs_between_two_hooked_passes_without_the_hooks(tiny_gemma):
    """Inside ``session.hooks`` the hooks come off while another job's forward runs, then return."""
    session = tiny_gemma
    tokens = session.tokenize("The cat sat on the mat")
    name = session.resid_name(0)
    fired: list[str] = []
    first_pass, go_on = threading.Event(), threading.Event()
    expected = session.run(tokens).logits.clone()

    def mark(activation, *, hook):
        fired.append(threading.current_thread().name)
        return activation + 1.0  # an intervention another job must never see

    def long_run():
        with session.lock.job("long") as job, session.hooks([(name, mark)]) as model:
            job.held_s = 100.0
            model(tokens)
            first_pass.set()
            go_on.wait(30)
            model(tokens)  # yields before this pass: the short job is queued and attained less

    got = {}

    def short_run():
        with session.lock.job("short"):
            got["logits"] = session.run(tokens).logits.clone()
            got["active_hooks"] = session.active_hook_count()
            fired.append("short")

    first = threading.Thread(target=long_run, name="long")
    first.start()
    first_pass.wait(30)
    second = threading.Thread(target=short_run, name="short")
    second.start()
    _wait_for(lambda: session.lock.queue_length() == 1)
    go_on.set()
    first.join(60)
    second.join(60)
    assert fired == ["long", "short", "long"]  # in between, and only the long job's passes hooked
    assert got["active_hooks"] == 0 and torch.equal(got["logits"], expected)
    assert session.active_hook_count() == 0


def _long_job_behind_short_ones(aging: float, n_short: int) -> list[str]:
    """A long job (held 10 s) queues; short jobs arrive one by one, each waiting 6 s of a manual clock.

    Each round: a new short job queues beside the long one, the clock moves 6 s, the holder
    releases, and whoever the lock picks records its name. Returns the order of the first
    grants up to the long job's (its grant ends the stream; at most ``n_short`` short jobs).
    """
    now = [0.0]
    lock, order = FairLock(poll_s=0.01, aging=aging, clock=lambda: now[0]), []
    granted, queued = threading.Condition(), threading.Event()
    releases: list[threading.Event] = []

    def long_run():
        def as_if_it_had_run(ahead: int) -> None:
            lock.current_job().held_s = 10.0
            queued.set()

        with lock.job("long", as_if_it_had_run), lock, granted:
            order.append("long")
            granted.notify_all()

    def short_run(i: int, release: threading.Event):
        with lock:
            with granted:
                order.append(f"short {i}")
                granted.notify_all()
            release.wait(30)

    lock.acquire()  # the first short user holds the model when the long job arrives
    threads = [_start(long_run)]
    queued.wait(30)
    holder_release = lock.release
    for i in range(1, n_short + 1):
        release = threading.Event()
        threads.append(_start(lambda i=i, r=release: short_run(i, r)))
        _wait_for(lambda: lock.queue_length() == 2)
        now[0] += 6.0  # both waiters wait 6 s while the holder runs
        with granted:
            holder_release()
            granted.wait_for(lambda i=i: len(order) >= i, 30)
            winner = order[i - 1]  # read now: once "long" ends, the waiting short job runs too
        releases.append(release)
        if winner == "long":
            break
        holder_release = release.set
    else:
        holder_release()
    for release in releases:
        release.set()
    for thread in threads:
        thread.join(30)
    _wait_for(lambda: "long" in order)
    return order[: order.index("long") + 1]


def test_a_long_job_behind_a_stream_of_short_jobs_gets_the_model_after_the_bound():
    """Aging 4: the long job's effective service is 10 − 1.5 k after k rounds, a new short job's −1.5.

    It ranks first once 10 − 1.5 k < −1.5, i.e. at round 8: seven short jobs go before it, then it.
    """
    order = _long_job_behind_short_ones(aging=4.0, n_short=20)
    assert order == [f"short {i}" for i in range(1, 8)] + ["long"]


def test_without_enough_aging_the_stream_keeps_the_long_job_waiting():
    """The same stream with aging 1000 (almost pure least attained service): all 12 go first."""
    order = _long_job_behind_short_ones(aging=1000.0, n_short=12)
    assert order == [f"short {i}" for i in range(1, 13)] + ["long"]


def test_aging_must_be_positive():
    with pytest.raises(ValueError, match="aging must be > 0"):
        FairLock(aging=0)
