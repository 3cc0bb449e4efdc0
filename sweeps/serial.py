"""The serial backend: every shard in this process, one after the other — the reference result."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lenslab.sweeps.engine import Shard, ShardedJob, State
from lenslab.sweeps.worker import ShardWorker


class SerialBackend:
    """No Ray: one in-process worker. A Ray run's merged result must equal this one's."""

    name = "serial"
    workers = 1

    def run(
        self,
        job: ShardedJob,
        shards: Sequence[Shard],
        done: Callable[[Shard, State, int], None],
        retried: Callable[[Shard], None],
    ) -> None:
        """Run the shards in order; ``done`` after each (it may raise ``Cancelled``)."""
        worker = ShardWorker(job)
        for shard in shards:
            done(shard, worker.run(shard), 1)

    def worker_pids(self) -> list[int]:
        """The worker is this process; it is not listed (killing it would kill the driver)."""
        return []
