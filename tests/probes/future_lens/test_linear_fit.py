"""The shared-eigendecomposition ridge fit equals the direct solve and ``choose_ridge``'s scores."""

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens.linear import (
    RIDGE_GRID,
    _LayerGram,
    _validation_scores,
    choose_ridge,
    fit_linear_map,
)


@pytest.mark.parametrize("toward_identity", [True, False])
def test_layer_gram_matches_direct_solve_and_choose_ridge(toward_identity):
    gen = torch.Generator().manual_seed(0)
    d, n = 24, 40  # fewer examples than twice the dimensions: the ridge matters
    x = torch.randn(n, d, generator=gen) * 30 + 5
    y = x @ torch.randn(d, d, generator=gen) * 0.1 + torch.randn(n, d, generator=gen)
    gram = _LayerGram(x)
    for ridge in (0.01, 0.3, 3.0):
        direct, x_mean, _ = fit_linear_map(x, y, ridge, toward_identity=toward_identity)
        shared = gram.solve(y, ridge, toward_identity=toward_identity)
        torch.testing.assert_close(shared, direct, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gram.x_mean.float(), x_mean)
    fit, val = (x[:30], y[:30]), (x[30:], y[30:])

    def norm(t):
        return t / t.norm(dim=-1, keepdim=True)

    best, expected = choose_ridge(fit, val, RIDGE_GRID, toward_identity=toward_identity, transform=norm)
    got = _validation_scores(_LayerGram(fit[0]), fit[1], val, RIDGE_GRID, toward_identity, norm)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert int(np.argmin(got)) == best
