"""The statistics every probe uses for n and 95% intervals, checked against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lenslab.probes.stats import bootstrap_by_group, format_interval, mean_ci, wilson


def test_wilson_matches_the_closed_form():
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    got = wilson(k, n)
    assert got.estimate == pytest.approx(p)
    assert (got.low, got.high) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert got.n == 20 and got.method == "wilson"


def test_wilson_stays_inside_zero_one_and_refuses_nonsense():
    assert wilson(0, 5).low == pytest.approx(0.0, abs=1e-12) and wilson(0, 5).high > 0
    assert wilson(5, 5).high == pytest.approx(1.0) and wilson(5, 5).low < 1
    assert math.isnan(wilson(0, 0).estimate)
    with pytest.raises(ValueError):
        wilson(6, 5)


def test_mean_ci_is_the_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    got = mean_ci(x)
    half = 3.182446305284263 * x.std(ddof=1) / 2  # t_{0.975, 3} · s / √4
    assert got.estimate == pytest.approx(3.5)
    assert (got.low, got.high) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-9)
    assert math.isnan(mean_ci(np.array([1.0])).low)


def test_mean_ci_is_cut_to_the_range_of_the_quantity():
    x = np.array([0.42, 0.99])  # two attention weights: the plain t interval passes 1
    plain, cut = mean_ci(x), mean_ci(x, bounds=(0.0, 1.0))
    assert plain.high > 1 and plain.low < 0
    assert (cut.estimate, cut.low, cut.high) == (plain.estimate, 0.0, 1.0)
    assert cut.method == "t, cut to [0, 1]"
    inside = mean_ci(np.array([0.4, 0.5, 0.6]), bounds=(0.0, 1.0))
    assert inside == mean_ci(np.array([0.4, 0.5, 0.6]))  # nothing to cut: the t interval as is


def test_bootstrap_resamples_groups_not_items():
    # Two documents, each internally constant: the mean can only move between the document means,
    # so every resample is 0, 0.5 or 1 and the interval spans [0, 1]. Resampling items instead
    # would give a narrow interval around 0.5 from 200 "independent" items.
    values = np.repeat([0.0, 1.0], 100)
    groups = np.repeat(["doc-a", "doc-b"], 100)
    got = bootstrap_by_group(values, groups, unit="documents")
    assert got.estimate == pytest.approx(0.5)
    assert got.low == pytest.approx(0.0) and got.high == pytest.approx(1.0)
    assert got.n == 2 and got.method == "bootstrap over documents"


def test_bootstrap_covers_the_truth_for_independent_groups():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        values = rng.normal(0.3, 1.0, 60)
        got = bootstrap_by_group(values, np.arange(60), resamples=300, seed=trial)
        covered += got.low <= 0.3 <= got.high
    assert covered >= 33  # nominal 95% of 40 = 38; well below would mean a broken interval


def test_bootstrap_is_deterministic_and_checks_lengths():
    values, groups = np.arange(10.0), np.arange(10) // 2
    assert bootstrap_by_group(values, groups) == bootstrap_by_group(values, groups)
    with pytest.raises(ValueError):
        bootstrap_by_group(values, groups[:-1])
    assert math.isnan(bootstrap_by_group(values, np.zeros(10)).low)


def test_format_interval():
    assert format_interval(0.4123, 0.35, 0.47, percent=True) == "41.2% [35.0, 47.0]"
    assert format_interval(10.64, 9.1, 12.2) == "10.6 [9.1, 12.2]"
