"""Score functions on synthetic patterns whose answers are known by construction of the pattern."""

import math

import numpy as np
import pytest
import torch

from lenslab.probes.attention import scores


def _previous_token_pattern(n: int) -> torch.Tensor:
    """Row 0 attends to itself, every later row only to the token before it."""
    pattern = torch.zeros(n, n)
    pattern[0, 0] = 1.0
    pattern[torch.arange(1, n), torch.arange(0, n - 1)] = 1.0
    return pattern


def _uniform_causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def test_a_previous_token_head_scores_one_and_a_uniform_head_does_not():
    prev = scores.previous_token(_previous_token_pattern(9))
    assert prev.shape == (8,) and torch.allclose(prev, torch.ones(8))
    assert scores.first_token(_previous_token_pattern(9)).tolist() == [1.0] + [0.0] * 7
    uniform = scores.previous_token(_uniform_causal(9))
    assert torch.allclose(uniform, 1.0 / torch.arange(2, 10))


def test_entropy_is_zero_for_one_hot_rows_and_log_i_for_uniform_rows():
    assert torch.allclose(scores.entropy(_previous_token_pattern(7)), torch.zeros(6, dtype=torch.float64))
    expected = torch.log(torch.arange(2, 8, dtype=torch.float64))
    assert torch.allclose(scores.entropy(_uniform_causal(7)), expected)


def test_bos_sink_is_the_first_column():
    pattern = _uniform_causal(5)
    assert torch.allclose(scores.first_token(pattern), torch.tensor([1 / 2, 1 / 3, 1 / 4, 1 / 5]))


@pytest.mark.parametrize(("period", "start"), [(5, 1), (4, 0), (3, 1)])
def test_induction_reads_the_token_after_the_first_copy(period, start):
    n = start + 2 * period
    induction = torch.zeros(n, n)
    induction[:, 0] = 1.0
    queries = torch.arange(start + period, n)
    induction[queries] = 0.0
    induction[queries, queries - period + 1] = 1.0  # the token after the earlier occurrence
    values = scores.induction(induction, period, start)
    assert values.shape == (period,) and torch.allclose(values, torch.ones(period))
    # a previous-token head (and a same-token head) score 0 on the induction stripe
    assert torch.allclose(scores.induction(_previous_token_pattern(n), period, start), torch.zeros(period))
    duplicate = torch.zeros(n, n)
    duplicate[torch.arange(n), torch.arange(n)] = 1.0
    duplicate[queries] = 0.0
    duplicate[queries, queries - period] = 1.0  # attends to the earlier copy of itself
    assert torch.allclose(scores.induction(duplicate, period, start), torch.zeros(period))


def test_induction_half_weight_and_batch_axes():
    period, start = 3, 1
    n = start + 2 * period
    pattern = torch.zeros(2, 4, n, n)
    queries = torch.arange(start + period, n)
    pattern[..., queries, queries - period + 1] = 0.5
    values = scores.induction(pattern, period, start)
    assert values.shape == (2, 4, period) and torch.allclose(values, torch.full((2, 4, period), 0.5))


def test_intervals_have_the_mean_and_a_t_interval():
    values = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    est, low, high = scores.intervals(values, bounds=None)[0, 0]
    assert est == pytest.approx(2.5)
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t(0.975, 3) · s / √4
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))
    assert math.isnan(scores.intervals(np.ones((1, 1, 1)))[0, 0, 1])
