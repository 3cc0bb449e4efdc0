"""Corpus-scale fits run shard by shard equal the single-process computations (tiny model, serial backend;
the Ray backend runs the same jobs, see test_sweeps_ray.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens.data import DataSettings, build_dataset
from lenslab.probes.future_lens.linear import fit_linear_map, fit_linear_maps
from lenslab.probes.future_lens.sufficient import LinearStats
from lenslab.probes.shared_neurons.tasks import capitals
from lenslab.probes.shared_neurons.units import unit_statistics
from lenslab.sweeps.fits import collect_future_lens_data, fit_future_lens_linear, shared_neuron_unit_stats

SETTINGS = DataSettings(n_examples=16, prefix_tokens=6, batch_size=4)

TINY = "tiny:gemma3"  # the seeded tiny random model, loadable by name on every worker


def test_merged_statistics_give_the_closed_form_fit():
    rng = np.random.default_rng(0)
    resid = rng.normal(size=(40, 3, 6)) * 50 + 10
    final = rng.normal(size=(40, 4, 6))
    whole = LinearStats.of(resid, final, (0, 2))
    parts = LinearStats.of(resid[:13], final[:13], (0, 2)).merge(
        LinearStats.of(resid[13:], final[13:], (0, 2))
    )
    np.testing.assert_allclose(parts.xty, whole.xty, rtol=1e-12)
    for ridge, identity in ((0.3, True), (0.3, False), (0.0, False)):
        weight, x_mean, y_mean = parts.solve(ridge, toward_identity=identity)
        for i, layer in enumerate((0, 2)):
            for h in range(4):
                w, xm, ym = fit_linear_map(
                    torch.as_tensor(resid[:, layer]),
                    torch.as_tensor(final[:, h]),
                    ridge,
                    toward_identity=identity,
                )
                np.testing.assert_allclose(weight[i, h].numpy(), w.numpy(), rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(x_mean[i].numpy(), xm.numpy(), rtol=1e-6)
                np.testing.assert_allclose(y_mean[h].numpy(), ym.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="layers"):
        whole.merge(LinearStats.of(resid, final, (1,)))


def test_sharded_future_lens_data_and_linear_maps_equal_the_single_process_ones(tmp_path, tiny_gemma):
    reference = build_dataset(tiny_gemma, SETTINGS, use_cache=False)
    data = collect_future_lens_data(
        TINY, tmp_path / "data", SETTINGS, "serial", session=tiny_gemma, shard_size=5
    )
    assert len(list((tmp_path / "data" / "shards").glob("*.npz"))) == 4  # 16 prefixes in shards of 5
    np.testing.assert_array_equal(data.prefix_ids, reference.prefix_ids)
    np.testing.assert_array_equal(data.labels, reference.labels)
    np.testing.assert_allclose(data.resid, reference.resid, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.final, reference.final, rtol=1e-5, atol=1e-5)

    maps = fit_future_lens_linear(
        TINY, tmp_path / "linear", SETTINGS, "serial", session=tiny_gemma, shard_size=5
    )
    single = fit_linear_maps(tiny_gemma, reference)
    assert maps.layers == single.layers and maps.meta["n_train"] == single.meta["n_train"]
    np.testing.assert_allclose(maps.weight.numpy(), single.weight.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(maps.x_mean.numpy(), single.x_mean.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps.y_mean.numpy(), single.y_mean.numpy(), rtol=1e-5, atol=1e-5)
    assert maps.meta["ridge_chosen"] == single.meta["ridge_chosen"]  # chosen on validation, as single
    assert maps.meta["provenance"] == single.meta["provenance"]

    fixed = fit_future_lens_linear(
        TINY, tmp_path / "stats", SETTINGS, "serial", session=tiny_gemma, ridge=0.3, shard_size=5
    )
    single_fixed = fit_linear_maps(tiny_gemma, reference, ridge=0.3)
    np.testing.assert_allclose(fixed.weight.numpy(), single_fixed.weight.numpy(), rtol=1e-3, atol=1e-4)
    assert fixed.meta["provenance"] == single_fixed.meta["provenance"]
    with pytest.raises(ValueError, match="another job"):
        fit_future_lens_linear(
            TINY, tmp_path / "data", SETTINGS, "serial", session=tiny_gemma, ridge=0.3, shard_size=5
        )


def test_sharded_unit_statistics_equal_one_pass(tmp_path, tiny_gemma, monkeypatch):
    from lenslab.probes.shared_neurons import units

    items = capitals(n=10).items
    monkeypatch.setattr(units, "MAX_GROUPS", 4)  # fewer groups than prompts: rows must land in i % 4
    whole = unit_statistics(tiny_gemma, items, batch_size=4)
    merged = shared_neuron_unit_stats(TINY, items, tmp_path / "units", "serial", batch_size=4, shard_size=3)
    assert merged.n_groups == whole.n_groups == 4
    for name in (
        "abs_all",
        "signed_all",
        "abs_answer",
        "head_all",
        "head_answer",
        "tokens_all",
        "tokens_answer",
    ):
        np.testing.assert_allclose(getattr(merged, name).numpy(), getattr(whole, name).numpy(), rtol=1e-5)


def test_sharded_jacobian_lens_fit_equals_one_shard(tmp_path, tiny_gemma):
    from lenslab.probes.jacobian_lens.fit import FitSpec, fit_shard
    from lenslab.sweeps.fits import fit_jacobian_lens

    spec = FitSpec(seq_len=8, skip_first=2, min_prompts=1, max_prompts=10, dim_batch=16)
    documents = [0, 1, 2, 3, 5]
    whole = fit_shard(tiny_gemma, documents, spec)
    merged = fit_jacobian_lens(
        TINY, tmp_path / "jlens", documents, spec, "serial", session=tiny_gemma, shard_size=2
    )
    assert len(list((tmp_path / "jlens" / "shards").glob("*.npz"))) == 3
    assert (merged.n_prompts, merged.n_positions) == (whole.n_prompts, whole.n_positions)
    assert merged.documents == whole.documents and merged.skipped == whole.skipped
    torch.testing.assert_close(merged.mean(), whole.mean(), rtol=1e-10, atol=1e-12)
