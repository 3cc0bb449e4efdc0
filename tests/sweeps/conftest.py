"""Shared fixture of the sweep tests: one local Ray per test module."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the whole module (starting Ray costs seconds).

    Workers get this process's ``sys.path``, so they import lenslab and the test-only probe
    module from the same places as the tests.
    """
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}},
    )
    yield ray
    ray.shutdown()
