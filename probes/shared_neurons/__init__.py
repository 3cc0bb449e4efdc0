"""Shared neurons: which MLP units two tasks (or two models) share, against chance, and what they do.

Modules: ``tasks`` (prompt sets with expected answers), ``units`` (unit-level model access:
scores, weights, interventions), ``stats`` (overlap statistics), ``result`` (config, result,
figures) and ``probe`` (the probe).
"""

from lenslab.probes.shared_neurons.probe import SharedNeurons
from lenslab.probes.shared_neurons.result import SharedNeuronsConfig, SharedNeuronsResult
from lenslab.probes.shared_neurons.stats import overlap_stats
from lenslab.probes.shared_neurons.tasks import TaskSet, builtin_names, load_task_set

__all__ = [
    "SharedNeurons",
    "SharedNeuronsConfig",
    "SharedNeuronsResult",
    "TaskSet",
    "builtin_names",
    "load_task_set",
    "overlap_stats",
]
