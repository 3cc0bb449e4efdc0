"""The Ray backend on a local Ray with 2 workers and the tiny model: equal to the serial reference, a
worker killed by its pid mid-sweep is replaced and the sweep completes, an interrupted driver resumes
without redoing or losing items, and a sharded fit runs on the workers."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from lenslab.probes.future_lens.data import DataSettings
from lenslab.probes.sweep_result import OK
from lenslab.progress import Cancelled
from lenslab.sweeps import resume, sweep
from lenslab.sweeps.engine import Status, shard_path
from lenslab.sweeps.fits import fit_future_lens_linear
from lenslab.sweeps.job import SweepJob

TINY = "tiny:gemma3"  # the seeded tiny random model, loadable by name on every worker
COMMON = {"models": [TINY], "limit": 8, "shard_size": 2}


@pytest.fixture(scope="module", autouse=True)
def _forget_the_slow_probe():
    """The test-only probe must not leak into suites that walk the registry."""
    yield
    from lenslab.probes.base import unregister

    unregister("slow_lens")


@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serial") / "s"
    return sweep("logit_lens", "tasks:capitals", folder, grid=["k=3"], backend="serial", **COMMON)


def _same(a, b):
    assert a.status.tolist() == b.status.tolist() and a.errors == b.errors
    rate = a.metric_names.index("top1_is_final")
    np.testing.assert_array_equal(a.values[:, rate], b.values[:, rate])
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(a.n, b.n)


def test_ray_result_equals_serial(local_ray, serial_reference, tmp_path):
    result = sweep(
        "logit_lens", "tasks:capitals", tmp_path / "r", grid=["k=3"], backend="ray", workers=2, **COMMON
    )
    assert result.backend == "ray" and result.workers == 2
    _same(result, serial_reference)


def test_a_killed_worker_is_replaced_and_the_sweep_completes(local_ray, tmp_path):
    killed: list[int] = []

    def kill_once(status: Status) -> None:
        if not killed and status.shards_done >= 1 and status.worker_pids:
            killed.append(status.worker_pids[0])
            os.kill(status.worker_pids[0], signal.SIGKILL)

    seen: list[Status] = []

    def record(status: Status) -> None:
        seen.append(status)
        kill_once(status)

    result = sweep(
        "slow_lens",
        "tasks:capitals",
        tmp_path / "k",
        imports=["slow_probe"],
        backend="ray",
        workers=2,
        on_status=record,
        **{**COMMON, "limit": 12},
    )
    assert killed
    assert (result.status == OK).all() and result.status.size == 12
    assert result.retried_shards >= 1 and seen[-1].items_retried >= 2
    assert killed[0] not in seen[-1].worker_pids  # a dead worker is no longer listed


def test_an_interrupted_driver_resumes_without_redoing_or_losing_items(local_ray, serial_reference, tmp_path):
    folder = tmp_path / "i"

    def stop(status: Status) -> None:
        if status.shards_run >= 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        sweep(
            "logit_lens",
            "tasks:capitals",
            folder,
            grid=["k=3"],
            backend="ray",
            workers=2,
            on_status=stop,
            **COMMON,
        )
    job = SweepJob(serial_reference.config, tuple(serial_reference.prompts))
    shards = job.shards()
    before = {
        s.id: shard_path(folder, s).stat().st_mtime_ns for s in shards if shard_path(folder, s).exists()
    }
    assert 2 <= len(before) < len(shards)
    seen: list[Status] = []
    result = resume(folder, backend="ray", workers=2, on_status=seen.append)
    assert seen[-1].shards_run == len(shards) - len(before)
    assert {
        k: shard_path(folder, s).stat().st_mtime_ns for s in shards for k in [s.id] if k in before
    } == before
    _same(result, serial_reference)


def test_future_lens_linear_fit_on_ray_equals_serial(local_ray, tmp_path, tiny_gemma):
    settings = DataSettings(n_examples=16, prefix_tokens=6, batch_size=4)
    kwargs = {"session": tiny_gemma, "shard_size": 4}
    serial = fit_future_lens_linear(TINY, tmp_path / "a", settings, "serial", **kwargs)
    on_ray = fit_future_lens_linear(TINY, tmp_path / "b", settings, "ray", workers=2, **kwargs)
    np.testing.assert_allclose(on_ray.weight.numpy(), serial.weight.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(on_ray.x_mean.numpy(), serial.x_mean.numpy(), rtol=1e-6)
