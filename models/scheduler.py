"""A fair, re-entrant lock for a shared model: short jobs are not stuck behind long ones.

Several browser sessions share one model. A plain ``RLock`` held for a whole probe makes a
0.5 s logit lens wait for every 10 s run that asked before it. :class:`FairLock` keeps the
``with lock:`` API and the guarantee that two forward passes never interleave, but

* waiters are served by **least attained service**: the job that has held the model for the
  shortest time so far goes first (ties: first come, first served), so a new short job overtakes
  long-running ones, and equal long jobs take turns;
* a declared :meth:`job` queues for the model when it starts and **keeps it between its lock
  sections** until the job ends or yields. Its work outside ``with lock:`` blocks (setup,
  decoding, statistics) therefore runs alone too: a short job that got the model is not slowed
  by long jobs computing beside it on the same cores (CPU contention would otherwise undo what
  the queue order gives it); the long jobs are parked in the queue, and their pause counts as
  waiting;
* a long job gives the model up at **yield points**: the end of each forward pass
  (:meth:`yield_point`, called by ``ModelSession``) and every release to depth 0, whenever a
  waiter has attained less than it, and queues again with what it had. Hook contexts and
  :meth:`exclusive` sections pin the lock: no other job runs while hooks are attached or weights
  are modified; a hook context running many passes (a KV-cached generation) yields between two
  of them by taking its hooks off first (:meth:`yield_pinned`);
* waiting is **bounded by aging**: the order uses a job's *effective* attained service,
  ``held − waited / aging`` (``aging`` = 4 by default; waited counts the wait in progress), so each
  second a job waits cancels ``1/aging`` s of the service it has had. Pure least attained service
  would let a stream of short jobs starve a long one forever; with aging, a job that has waited
  ``aging`` times as long as it has held the model ranks before every newcomer, and from then on it
  is served in arrival order against them (a short job then waits at most one of its passes).
  So a job's total wait stays below about ``aging × held`` plus the work of those ranked ahead of
  it when it became due; a short job still overtakes a long one until then;
* every acquisition is accounted to the thread's current :class:`Job`: seconds waited for the
  model vs seconds holding it, and how many were ahead when it started waiting.

Results are unchanged by yielding: between two forward passes a probe holds only its own tensors.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

WaitCallback = Callable[[int], None]  # called with how many are ahead (0: the model is ours now)


@dataclass
class Job:
    """One unit of user work (a probe run) as the scheduler sees it."""

    label: str = ""
    on_wait: WaitCallback | None = None
    started: float = field(default_factory=time.perf_counter)
    waited_s: float = 0.0  # seconds spent queued for the model
    held_s: float = 0.0  # seconds holding the model (its attained service)
    waits: int = 0  # how many times it queued behind someone
    yields: int = 0  # how many times it gave the model up mid-run
    max_ahead: int = 0
    ended: float | None = None  # perf_counter when the job's block exited
    declared: bool = False  # opened with FairLock.job: keeps the model between its lock sections

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds from the job's start to its end (to now while it runs)."""
        end = self.ended if self.ended is not None else time.perf_counter()
        return end - self.started

    @property
    def ran_s(self) -> float:
        """Wall-clock seconds not spent waiting for the model."""
        return max(self.elapsed_s - self.waited_s, 0.0)


@dataclass
class _Waiter:
    job: Job
    ticket: int
    thread: int
    since: float  # the lock's clock when it queued

    def key(self, now: float, aging: float) -> tuple[float, int]:
        """Effective attained service (held minus the aging credit for all its waiting), then arrival."""
        waited = self.job.waited_s + (now - self.since)
        return (self.job.held_s - waited / aging, self.ticket)


class FairLock:
    """Re-entrant lock: least attained service with aging, and yield points (module docstring)."""

    def __init__(
        self, poll_s: float = 0.5, aging: float = 4.0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        """A free lock; waiters re-check their turn every ``poll_s`` seconds.

        ``aging``: seconds of waiting that cancel one second of attained service (> 0; it bounds
        starvation, module docstring). ``clock``: the time source (tests pass a manual one).
        """
        if not aging > 0:
            raise ValueError(f"aging must be > 0 (seconds waited per second of service), got {aging!r}")
        self._aging = float(aging)
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._pins = 0
        self._granted_at = 0.0
        self._owner_job: Job | None = None
        self._waiters: list[_Waiter] = []
        self._tickets = itertools.count()
        self._local = threading.local()
        self._poll_s = poll_s

    # --------------------------------------------------------------------------- jobs
    @contextmanager
    def job(self, label: str = "", on_wait: WaitCallback | None = None) -> Iterator[Job]:
        """One unit of user work: it queues for the model on entry and keeps it until the end.

        The whole block is scheduled, not only its forward passes: setup and post-processing
        outside ``with lock:`` also run while no other job computes (a job nested in another
        of the same thread runs inside the outer one's turn). Every acquisition in the block is
        accounted to the returned :class:`Job`.
        """
        outer = getattr(self._local, "job", None)
        current = Job(label, on_wait, declared=True)
        self._local.job = current
        try:
            with self._cond:
                me = threading.get_ident()
                if self._owner != me:
                    self._wait_turn(me, current, depth=0)
            yield current
        finally:
            current.ended = time.perf_counter()
            self._local.job = outer
            self._end_job(current, outer)

    def current_job(self) -> Job | None:
        """The calling thread's declared job, if it is inside :meth:`job`."""
        return getattr(self._local, "job", None)

    def _end_job(self, job: Job, outer: Job | None) -> None:
        """A job ended: give up the model it kept, or account its part of a still-open section."""
        with self._cond:
            if self._owner != threading.get_ident() or self._owner_job is not job:
                return
            if self._depth == 0:
                self._hand_over()
                return
            now = self._clock()  # the job ended inside a `with lock:` of an outer scope
            job.held_s += now - self._granted_at
            self._owner_job, self._granted_at = outer if outer is not None else Job(), now

    def _current_job(self) -> Job:
        job = getattr(self._local, "job", None)
        return job if job is not None else Job()  # no declared job: one per outermost acquisition

    def queue_length(self) -> int:
        """How many threads are waiting for the model now."""
        with self._cond:
            return len(self._waiters)

    # ----------------------------------------------------------------------- the lock
    def acquire(self) -> bool:
        """Take the lock (re-entrant); queue fairly if another thread holds it."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                job = self._owner_job
                if self._depth == 0 and job is not None and self._should_yield(job):
                    self._yield_to_waiter(me, job)  # a kept model between two sections: yield
                self._depth += 1
                return True
            self._wait_turn(me, self._current_job(), depth=1)
        return True

    def release(self) -> None:
        """Release one level; the last release hands the model to the next waiter."""
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                job = self._owner_job
                if job is None or not job.declared or self._pins:
                    self._hand_over()
                elif self._should_yield(job):  # between two sections: a shorter job goes first
                    self._yield_to_waiter(threading.get_ident(), job)

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held_by_me(self) -> bool:
        """Whether the calling thread is inside a ``with lock:`` block."""
        return self._owner == threading.get_ident() and self._depth > 0

    def kept_by_me(self) -> bool:
        """Whether the calling thread's job has the model (inside a lock section or between two)."""
        return self._owner == threading.get_ident()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock with yielding off (hooks attached, weights changed, ...)."""
        with self:
            self._pins += 1
            try:
                yield
            finally:
                self._pins -= 1

    def yield_point(self) -> None:
        """Between two forward passes: let a waiter that attained less run first, then continue.

        Does nothing unless the caller holds the lock outside any pinned section and a waiter has
        held the model for less time than the caller's job.
        """
        me = threading.get_ident()
        with self._cond:
            if self._owner != me or self._pins:
                return
            job = self._owner_job or self._current_job()
            if self._should_yield(job):
                self._yield_to_waiter(me, job)

    def yield_pinned(self, undo: Callable[[], None], redo: Callable[[], None]) -> None:
        """Inside one pinned section (a hook context): yield like :meth:`yield_point`, pin undone.

        A hook context pins the lock because its hooks are global state on the shared model.
        Between two of its forward passes the hooks can be taken off (``undo``), the model lent
        to a job that attained less, and the hooks put back (``redo``) before the next pass; the
        context's own tensors (a KV cache, captured activations) are untouched meanwhile. Does
        nothing in nested pins (weights changed, hooks inside hooks) or when no waiter is shorter.
        """
        me = threading.get_ident()
        with self._cond:
            if self._owner != me or self._pins != 1:
                return
            job = self._owner_job or self._current_job()
            if not self._should_yield(job):
                return
            undo()
            self._pins = 0
            try:
                self._yield_to_waiter(me, job)  # the model is ours again when it returns or raises
            finally:
                self._pins = 1
                redo()

    # -------------------------------------------------------------------- internals
    def _should_yield(self, job: Job) -> bool:
        """Whether a waiter has attained less service than ``job`` (call with the condition held)."""
        if not self._waiters:
            return False
        now = self._clock()
        mine = job.held_s + (now - self._granted_at) - job.waited_s / self._aging
        return min(w.key(now, self._aging) for w in self._waiters)[0] < mine

    def _yield_to_waiter(self, me: int, job: Job) -> None:
        """Hand the model over and queue again with the same depth (call with the condition held)."""
        depth = self._depth
        job.yields += 1
        self._hand_over()
        try:
            self._wait_turn(me, job, depth=depth)
        except BaseException:  # cancelled while queued: take the lock back so the caller's
            if depth == 0:  # `with` blocks release what they hold (none at depth 0)
                raise
            callback, job.on_wait = job.on_wait, None
            try:
                self._wait_turn(me, job, depth=depth)
            finally:
                job.on_wait = callback
            raise

    def _hand_over(self) -> None:
        """Account the holder's time and pass the lock on (call with the condition held)."""
        if self._owner_job is not None:
            self._owner_job.held_s += self._clock() - self._granted_at
        self._owner, self._owner_job, self._depth = None, None, 0
        self._cond.notify_all()

    def _next(self) -> _Waiter | None:
        if not self._waiters:
            return None
        now = self._clock()
        return min(self._waiters, key=lambda w: w.key(now, self._aging))

    def _wait_turn(self, me: int, job: Job, depth: int) -> None:
        """Queue (with the condition held) until this thread is the chosen waiter, then own the lock."""
        if self._owner is None and not self._waiters:
            self._grant(me, job, depth)
            return
        queued = self._clock()
        waiter = _Waiter(job, next(self._tickets), me, queued)
        self._waiters.append(waiter)
        job.waits += 1
        try:
            while True:
                if self._owner is None and self._next() is waiter:
                    break
                now = self._clock()
                mine = waiter.key(now, self._aging)
                ahead = sum(1 for w in self._waiters if w.key(now, self._aging) < mine) + (
                    self._owner is not None
                )
                job.max_ahead = max(job.max_ahead, ahead)
                if job.on_wait is not None:
                    self._cond.release()  # the callback may update a UI or raise Cancelled
                    try:
                        job.on_wait(ahead)
                    finally:
                        self._cond.acquire()
                    if self._owner is None and self._next() is waiter:
                        break
                self._cond.wait(self._poll_s)
        except BaseException:
            self._waiters.remove(waiter)
            self._cond.notify_all()
            job.waited_s += self._clock() - queued
            raise
        self._waiters.remove(waiter)
        job.waited_s += self._clock() - queued
        self._grant(me, job, depth)
        if job.on_wait is not None:
            self._cond.release()
            try:
                job.on_wait(0)
            except BaseException:
                self._cond.acquire()
                self._hand_over()  # never keep the model for a job that is going away
                raise
            self._cond.acquire()

    def _grant(self, me: int, job: Job, depth: int) -> None:
        self._owner, self._owner_job, self._depth = me, job, depth
        self._granted_at = self._clock()
