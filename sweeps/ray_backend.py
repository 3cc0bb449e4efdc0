"""The Ray backend: shards spread over Ray actors that each load the model once.

Only this module imports ``ray`` (lazily, inside functions), so the app and the probes never pay
for it. Without an address it starts a local Ray with ``workers`` CPUs (default: this machine's
cores); with ``address`` (or ``$RAY_ADDRESS``) it joins that cluster as it is and leaves it
running afterwards.

Each actor (:class:`~lenslab.sweeps.worker.ShardWorker`) asks for one CPU and, where the cluster
has GPUs, ``gpus_per_worker`` GPUs, so its session loads on its own GPU. Results stream back with
``ray.wait`` as shards finish. Actors are created with ``max_restarts``: when a worker process
dies (killed, out of memory, a lost node), Ray starts a fresh one that loads the model again, and
this backend resubmits the shard that was in flight (counted as a retry) up to ``max_retries``
times per shard.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from lenslab.sweeps.engine import Shard, ShardedJob, State

IN_FLIGHT_PER_WORKER = 2  # one running, one queued: a worker never idles between shards


def _ray() -> Any:
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")  # no usage report: clusters may be offline
    import ray

    return ray


class RayBackend:
    """Ray actors over a local or existing cluster (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        gpus_per_worker: float | None = None,
        max_retries: int = 3,
    ) -> None:
        if workers is not None and not 1 <= workers <= 4096:
            raise ValueError(f"workers must be between 1 and 4096, got {workers}")
        if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 8:
            raise ValueError(f"gpus_per_worker must be between 0 and 8, got {gpus_per_worker}")
        if not 0 <= max_retries <= 100:
            raise ValueError(f"max_retries must be between 0 and 100, got {max_retries}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.requested = workers
        self.workers = workers or 0
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries
        self._actors: list[Any] = []
        self._pids: list[int] = []
        self._started_ray = False

    # ---------------------------------------------------------------------------- cluster set-up
    def _connect(self) -> Any:
        ray = _ray()
        if ray.is_initialized():
            return ray
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            cpus = self.requested or os.cpu_count() or 1
            # Workers import lenslab from wherever this driver does.
            env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env},
            )
            self._started_ray = True
        return ray

    def _actor_count(self, ray: Any, n_shards: int) -> int:
        if self.requested:
            return min(self.requested, n_shards)
        resources = ray.cluster_resources()
        per_gpu = self._gpus(ray)
        by_gpu = int(resources.get("GPU", 0) / per_gpu) if per_gpu else 0
        return max(1, min(n_shards, by_gpu or int(resources.get("CPU", 1))))

    def _gpus(self, ray: Any) -> float:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    # ------------------------------------------------------------------------------------ running
    def run(
        self,
        job: ShardedJob,
        shards: Sequence[Shard],
        done: Callable[[Shard, State, int], None],
        retried: Callable[[Shard], None],
    ) -> None:
        """Keep every actor busy until all shards are done; resubmit shards whose worker died."""
        from lenslab.sweeps.worker import ShardWorker

        ray = self._connect()
        try:
            remote_cls = ray.remote(ShardWorker).options(
                num_cpus=1,
                num_gpus=self._gpus(ray),
                max_restarts=self.max_retries,
                max_task_retries=0,  # this backend resubmits, so retries are counted
            )
            count = self._actor_count(ray, len(shards))
            self.workers = count
            # The job travels inline with each actor's creation: a restarted actor must be able to
            # rebuild itself even after the driver's object references are gone.
            self._actors = [remote_cls.remote(job) for _ in range(count)]
            self._refresh_pids(ray)
            self._dispatch(ray, shards, done, retried)
        finally:
            self.close()

    def _dispatch(
        self,
        ray: Any,
        shards: Sequence[Shard],
        done: Callable[[Shard, State, int], None],
        retried: Callable[[Shard], None],
    ) -> None:
        """Stream results with ``ray.wait``; a dead worker's shards go back to the queue.

        A worker whose process died is left out of the rotation while Ray restarts it (a ping to
        its ``pid`` tells when it is back), so shards are never fired at an actor that is still
        restarting; the shards it held are requeued and counted as retries.
        """
        from ray.exceptions import ActorUnavailableError, RayActorError, WorkerCrashedError

        queue: deque[Shard] = deque(shards)
        attempts = {shard.id: 0 for shard in shards}
        in_flight: dict[Any, tuple[Shard, int]] = {}
        pings: dict[Any, int] = {}  # ping of a restarting worker → worker index
        load = [0] * len(self._actors)
        alive = [True] * len(self._actors)

        def submit() -> None:
            while queue:
                ready = [w for w in range(len(self._actors)) if alive[w] and load[w] < IN_FLIGHT_PER_WORKER]
                if not ready:
                    return
                worker = min(ready, key=load.__getitem__)
                shard = queue.popleft()
                attempts[shard.id] += 1
                in_flight[self._actors[worker].run.remote(shard)] = (shard, worker)
                load[worker] += 1

        def recover(worker: int) -> None:
            if alive[worker] or worker in pings.values():
                return
            pings[self._actors[worker].pid.remote()] = worker

        submit()
        while in_flight or (queue and pings):
            ready, _ = ray.wait([*in_flight, *pings], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in pings:
                    worker = pings.pop(ref)
                    try:
                        pid = ray.get(ref)
                    except ActorUnavailableError:  # still restarting: ask again shortly
                        time.sleep(0.2)
                        pings[self._actors[worker].pid.remote()] = worker
                    except RayActorError:  # out of restarts: this worker is gone for good
                        pass
                    else:
                        alive[worker] = True
                        if worker < len(self._pids):
                            self._pids[worker] = int(pid)
                    continue
                shard, worker = in_flight.pop(ref)
                load[worker] -= 1
                try:
                    state = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as exc:  # died (or restarting) under the shard
                    if attempts[shard.id] > self.max_retries:
                        raise RuntimeError(
                            f"shard {shard.id} failed {attempts[shard.id]} times (its worker died): {exc}"
                        ) from exc
                    queue.appendleft(shard)
                    alive[worker] = False
                    if worker < len(self._pids):
                        self._pids[worker] = 0  # gone; listed again once its restart answers a ping
                    recover(worker)
                    retried(shard)
                    continue
                done(shard, state, attempts[shard.id])
            submit()
            if queue and not in_flight and not pings:
                raise RuntimeError("every worker died and none could be restarted; resume the sweep later")

    def _refresh_pids(self, ray: Any) -> None:
        with contextlib.suppress(Exception):  # a worker still restarting: keep the last known pids
            self._pids = list(ray.get([actor.pid.remote() for actor in self._actors], timeout=120))

    def worker_pids(self) -> list[int]:
        """Process ids of the live actors (on a local Ray they are processes of this machine)."""
        return [pid for pid in self._pids if pid]

    def close(self) -> None:
        """Stop the actors; shut Ray down only if this backend started it."""
        if not self._actors and not self._started_ray:
            return
        ray = _ray()
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
