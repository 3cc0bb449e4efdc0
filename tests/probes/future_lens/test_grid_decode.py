"""The batched grid decode (every cell in one product) equals the layer-by-layer decode."""

from __future__ import annotations

import pytest
import torch

from lenslab.probes.future_lens.linear import LinearMaps
from lenslab.probes.future_lens.methods import Artefacts, grid_topk, method_topk
from lenslab.probes.future_lens.probe import actual_continuation


@pytest.mark.parametrize("method", ["direct", "linear"])
def test_grid_topk_equals_method_topk_per_layer(tiny_gemma, method):
    session = tiny_gemma
    layers = list(range(session.n_layers))
    horizon, k = 3, 7
    tokens = session.tokenize("The quick brown fox jumps over the lazy dog again")
    states, _ = actual_continuation(session, tokens, horizon, layers)
    generator = torch.Generator().manual_seed(0)
    d = session.d_model
    maps = LinearMaps(
        layers=layers,
        horizons=list(range(horizon)),
        weight=torch.randn(len(layers), horizon, d, d, generator=generator) / d**0.5,
        x_mean=torch.randn(len(layers), d, generator=generator),
        y_mean=torch.randn(horizon, d, generator=generator),
    )
    artefacts = Artefacts(linear=maps)
    ids, probs = grid_topk(session, method, layers, states, horizon, artefacts, k)
    assert ids.shape == (len(layers), tokens.shape[-1], horizon, k)
    for i, layer in enumerate(layers):
        ref_ids, ref_probs = method_topk(session, method, layer, states[layer], horizon, artefacts, k)
        torch.testing.assert_close(probs[i], ref_probs, rtol=1e-5, atol=1e-6)
        # ids agree wherever the top-k is not a near-tie (a tie may order differently across batch sizes)
        gaps = ref_probs[..., :-1] - ref_probs[..., 1:]
        clear = torch.cat([gaps > 1e-6, torch.ones_like(gaps[..., :1], dtype=torch.bool)], -1)
        assert torch.equal(ids[i][clear], ref_ids[clear]), f"layer {layer}"
    if method == "linear":  # the horizons really differ (not one decode repeated)
        assert not torch.equal(ids[:, :, 0], ids[:, :, 1])
