"""The worker: holds one loaded model and computes shards of a job (in-process or as a Ray actor)."""

from __future__ import annotations

import importlib
import os
from typing import Any

from lenslab.sweeps.engine import Shard, ShardedJob, State
from lenslab.sweeps.models import open_session


class ShardWorker:
    """Loads each model once (the last one is kept) and runs ``job.map_shard`` on it.

    Shards arrive sorted by model, so a worker loads a model once per run of its shards. On a
    machine with a GPU the session lands there (``ModelSession.load`` picks CUDA when present;
    Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's own GPU).
    """

    def __init__(self, job: ShardedJob) -> None:
        importlib.import_module("lenslab.probes")  # registers the built-in probes
        for module in job.imports:
            importlib.import_module(module)
        self.job = job
        self._model: str | None = None
        self._session: Any = None

    def session(self, model: str) -> Any:
        """The session of ``model``, loading it when this worker holds another one."""
        if self._session is None or self._model != model:
            self._session = None
            self._session = open_session(model, dtype=self.job.dtype, max_tokens=self.job.max_tokens)
            self._model = model
        return self._session

    def run(self, shard: Shard) -> State:
        """The shard's state."""
        return self.job.map_shard(self.session(shard.model), shard)

    def pid(self) -> int:
        """The worker's process id (the fault tests kill it)."""
        return os.getpid()
