"""Sweeps: probes over many prompts × grid points × models, and corpus-scale fits, on one machine or Ray.

- :func:`sweep` / :func:`resume` (``lenslab sweep``) run probes item by item and write one report
  holding a :class:`~lenslab.probes.sweep_result.SweepResult`;
- :func:`run_job` runs any :class:`ShardedJob` (map shards → mergeable state → merge), such as
  the Future Lens and shared-neuron fits of :mod:`lenslab.sweeps.fits`;
- backends: ``serial`` (the reference) and ``ray`` (:mod:`lenslab.sweeps.ray_backend`, imported
  only when used).
"""

from lenslab.probes.sweep_result import SweepConfig, SweepResult
from lenslab.sweeps.engine import Shard, ShardedJob, State, Status, execute
from lenslab.sweeps.fits import run_job
from lenslab.sweeps.runner import make_backend, resume, sweep, sweeps_dir
from lenslab.sweeps.sources import builtin_sources, load_prompts

__all__ = [
    "Shard",
    "ShardedJob",
    "State",
    "Status",
    "SweepConfig",
    "SweepResult",
    "builtin_sources",
    "execute",
    "load_prompts",
    "make_backend",
    "resume",
    "run_job",
    "sweep",
    "sweeps_dir",
]
