"""Map shards → mergeable state → merge: the one execution engine behind sweeps and corpus-scale fits.

A :class:`ShardedJob` says how its work splits into :class:`Shard` s, what one shard computes on a
worker that holds a loaded model (``map_shard`` → a *state*: a dict of numpy arrays), and how the
states of all shards combine (``merge``). Sufficient statistics (sums, XᵀX, XᵀY, counts) merge
exactly by addition; per-item outcomes merge by concatenation. The engine:

- writes every finished shard's state to ``<folder>/shards/<id>.npz`` at once (temporary file +
  ``os.replace``), so a crash never leaves a readable half shard;
- runs only the shards that have no file yet, so an interrupted job resumes where it stopped;
- hands shards to a backend — :mod:`lenslab.sweeps.serial` (one process, the reference) or
  :mod:`lenslab.sweeps.ray_backend` (Ray actors that each load the model once) — and reports
  items done / failed / retried, rate and ETA through a status callback and ``status.json``.

Adding a fit is one class with ``shards``, ``map_shard`` and ``merge`` (see :mod:`lenslab.sweeps.fits`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lenslab.progress import Cancelled

State = dict[str, np.ndarray]
ATTEMPTS_KEY = "__attempts__"
BACKENDS = ("ray", "serial")


@dataclass(frozen=True)
class Shard:
    """One unit of work: an id (its file name), the model spec to run it on, and job-defined items."""

    id: str
    model: str
    items: tuple[int, ...]


class ShardedJob(Protocol):
    """A job the engine can split, run on workers and merge (sweeps, Future Lens and shared-neuron fits)."""

    kind: str
    dtype: str
    max_tokens: int
    imports: tuple[str, ...]

    def shards(self) -> list[Shard]:
        """The job's shards, in merge order (ids unique and stable across runs)."""
        ...

    def map_shard(self, session: Any, shard: Shard) -> State:
        """Compute one shard's state on a worker holding ``session`` (the shard's model)."""
        ...

    def merge(self, states: Sequence[State]) -> State:
        """Combine the states of all shards, given in :meth:`shards` order."""
        ...


@dataclass
class Status:
    """Where a job stands: what the terminal prints, the app polls and the tests inspect."""

    state: str = "running"  # running | done | cancelled | error
    items_total: int = 0
    items_done: int = 0
    items_failed: int = 0
    items_retried: int = 0
    shards_total: int = 0
    shards_done: int = 0
    shards_run: int = 0  # shards computed by this run (the rest were on disk already)
    shard_retries: int = 0
    worker_pids: list[int] = field(default_factory=list)
    backend: str = ""
    workers: int = 0
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    message: str = ""
    driver_pid: int = field(default_factory=os.getpid)
    done_at_start: int = 0

    def snapshot(self) -> Status:
        """A copy for callbacks: a listener that keeps it sees this moment, not later updates."""
        return replace(self, worker_pids=list(self.worker_pids))

    @property
    def rate(self) -> float:
        """Items per second computed by this run."""
        elapsed = max(self.updated - self.started, 1e-9)
        return (self.items_done - self.done_at_start) / elapsed

    @property
    def eta_seconds(self) -> float:
        """Seconds left at the current rate (NaN before the first shard)."""
        rate = self.rate
        return (self.items_total - self.items_done) / rate if rate > 0 else float("nan")

    def line(self) -> str:
        """One terminal line: done / failed / retried, rate and ETA."""
        eta = self.eta_seconds
        eta_text = "—" if not np.isfinite(eta) else f"{eta:.0f} s"
        return (
            f"{self.items_done}/{self.items_total} items · {self.items_failed} failed · "
            f"{self.items_retried} retried · {self.rate:.2f} items/s · ETA {eta_text} "
            f"[{self.backend} × {self.workers}]"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain form for ``status.json`` (with the derived rate and ETA)."""
        return {**asdict(self), "rate": self.rate, "eta_seconds": self.eta_seconds}

    @classmethod
    def read(cls, folder: str | Path) -> Status | None:
        """The last status written into ``folder``, or None."""
        path = Path(folder) / "status.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


StatusCallback = Callable[[Status], None]


class Backend(Protocol):
    """Runs shards of a job and calls ``done(shard, state, attempts)`` as each finishes."""

    name: str
    workers: int

    def run(
        self,
        job: ShardedJob,
        shards: Sequence[Shard],
        done: Callable[[Shard, State, int], None],
        retried: Callable[[Shard], None],
    ) -> None:
        """Run every shard; exceptions from ``done`` (e.g. ``Cancelled``) stop the run cleanly."""
        ...

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty when they are not processes of this machine)."""
        ...


# ------------------------------------------------------------------------------------ shard files
def shard_path(folder: Path, shard: Shard) -> Path:
    """Where a shard's state is kept."""
    return folder / "shards" / f"{shard.id}.npz"


def write_state(path: Path, state: State) -> None:
    """Write ``state`` as an npz atomically: a temporary sibling, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **state)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_state(path: Path) -> State:
    """Read a state written by :func:`write_state` (no pickle)."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomic JSON write (temporary file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(document, indent=1, allow_nan=True), encoding="utf-8")
    os.replace(tmp, path)


def shard_items(state: State) -> tuple[int, int]:
    """(items, failed items) a shard state accounts for (states without per-item status: all ran)."""
    status = state.get("status")
    n = int(state["n_items"]) if "n_items" in state else int(status.size) if status is not None else 0
    failed = int((status != 0).sum()) if status is not None else 0
    return n, failed


# ----------------------------------------------------------------------------------------- engine
def execute(
    job: ShardedJob,
    folder: str | Path,
    backend: Backend,
    on_status: StatusCallback | None = None,
) -> tuple[State, list[int], Status]:
    """Run the job's missing shards on ``backend``, then merge every shard's state in order.

    Returns the merged state, each shard's attempt count (in shard order) and the final status.
    ``on_status`` may raise ``Cancelled`` to stop; finished shards stay on disk for a resume.
    """
    folder = Path(folder)
    shards = job.shards()
    if len({s.id for s in shards}) != len(shards):
        raise ValueError("shard ids must be unique")
    status = Status(backend=backend.name, workers=backend.workers, shards_total=len(shards))
    status.items_total = sum(len(s.items) for s in shards)
    pending = []
    for shard in shards:
        path = shard_path(folder, shard)
        if path.is_file():
            n, failed = shard_items(read_state(path))
            status.items_done += n
            status.items_failed += failed
            status.shards_done += 1
        else:
            pending.append(shard)
    status.done_at_start = status.items_done
    status.message = f"{len(pending)} of {len(shards)} shards to run"

    def publish() -> None:
        status.updated = time.time()
        write_json(folder / "status.json", status.to_dict())
        if on_status is not None:
            on_status(status.snapshot())

    def done(shard: Shard, state: State, attempts: int) -> None:
        state = {**state, ATTEMPTS_KEY: np.asarray(attempts, dtype=np.int64)}
        write_state(shard_path(folder, shard), state)
        n, failed = shard_items(state)
        status.items_done += n
        status.items_failed += failed
        status.shards_done += 1
        status.shards_run += 1
        status.worker_pids = backend.worker_pids()
        status.workers = backend.workers  # known once the backend has sized its pool
        publish()

    def retried(shard: Shard) -> None:
        status.shard_retries += 1
        status.items_retried += len(shard.items)
        status.worker_pids = backend.worker_pids()
        publish()

    publish()
    try:
        if pending:
            backend.run(job, pending, done, retried)
    except (Cancelled, KeyboardInterrupt):
        status.state, status.message = "cancelled", "stopped; resume to run the remaining shards"
        publish_quietly(folder, status)
        raise
    except BaseException as exc:
        status.state, status.message = "error", f"{type(exc).__name__}: {exc}"
        publish_quietly(folder, status)
        raise
    states, attempts = [], []
    for shard in shards:
        state = read_state(shard_path(folder, shard))
        attempts.append(int(state.pop(ATTEMPTS_KEY, np.asarray(1))))
        states.append(state)
    merged = job.merge(states)
    status.message = "merged"
    return merged, attempts, status


def publish_quietly(folder: Path, status: Status) -> None:
    """Write the status file without calling back (after a stop or an error)."""
    status.updated = time.time()
    write_json(folder / "status.json", status.to_dict())
