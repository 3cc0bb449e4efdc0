"""The batched causal grid (every cell in one KV-cached continuation) equals the per-layer path."""

from __future__ import annotations

import pytest
import torch

from lenslab.probes.future_lens.continuation import causal_grid_topk, layer_chunks
from lenslab.probes.future_lens.methods import Artefacts, causal_grid, method_topk
from lenslab.probes.future_lens.probe import FutureLens, FutureLensConfig, actual_continuation
from lenslab.probes.future_lens.prompts import SoftPrompt, embedding_multiplier


def _soft_prompts(session, layers, n_prompt=4, seed=0, scale=0.5):
    """A different random soft prompt per layer (so a row given another layer's prompt shows)."""
    generator = torch.Generator().manual_seed(seed)
    multiplier = embedding_multiplier(session)
    return {
        layer: SoftPrompt(
            layer=layer,
            vectors=torch.randn(n_prompt, session.d_model, generator=generator) * scale,
            meta={"multiplier": multiplier},
        )
        for layer in layers
    }


def _assert_each_layer_matches_its_own_reference(
    session, method, layers, states, horizon, artefacts, k, ids, probs, tolerance=1e-5
):
    references = []
    for i, layer in enumerate(layers):
        ref_ids, ref_probs = method_topk(
            session, method, layer, states[layer], horizon, artefacts, k, protocol="free-running"
        )
        references.append(ref_ids)
        torch.testing.assert_close(probs[i], ref_probs, rtol=tolerance, atol=tolerance)
        # ids agree wherever the top-k is not a near-tie
        gaps = ref_probs[..., :-1] - ref_probs[..., 1:]
        clear = torch.cat([gaps > 1e-5, torch.ones_like(gaps[..., :1], dtype=torch.bool)], -1)
        assert torch.equal(ids[i][clear], ref_ids[clear]), f"{method} layer {layer}"
    # the references differ between layers and positions: a row given to the wrong cell would fail
    for a in range(len(layers)):
        for b in range(a + 1, len(layers)):
            assert not torch.equal(references[a], references[b])
    assert any(not torch.equal(ref[0], ref[p]) for ref in references for p in range(1, ref.shape[0]))


@pytest.mark.parametrize("max_rows", [512, 1])  # one chunk of every layer; one layer per chunk
@pytest.mark.parametrize("method", ["fixed", "learned"])
def test_causal_grid_equals_the_per_layer_continuation(tiny_gemma, method, max_rows):
    session = tiny_gemma
    layers = list(range(session.n_layers))
    horizon, k = 4, 5
    tokens = session.tokenize("The quick brown fox jumps over")
    states, _ = actual_continuation(session, tokens, horizon, layers)
    artefacts = Artefacts(prompts=_soft_prompts(session, layers))
    if max_rows == 512:
        ids, probs = causal_grid(session, method, layers, states, horizon, artefacts, k)
    else:
        prompts = artefacts.prompts
        context = {}
        if method == "fixed":
            from lenslab.probes.future_lens.prompts import fixed_context_ids

            context["context_ids"] = fixed_context_ids(session)
        else:
            from lenslab.probes.future_lens.continuation import SoftContext

            context["soft_prompts"] = {
                layer: SoftContext(p.vectors, float(p.meta["multiplier"])) for layer, p in prompts.items()
            }
        chunks = []
        ids, probs = causal_grid_topk(
            session,
            layers,
            states,
            horizon,
            k,
            max_rows=max_rows,
            on_chunk=lambda i, p: chunks.append(i.shape[0]),
            **context,
        )
        assert chunks == list(range(1, len(layers) + 1))  # one layer per chunk, handed over as they finish
    assert ids.shape == (len(layers), tokens.shape[-1], horizon, k)
    _assert_each_layer_matches_its_own_reference(
        session, method, layers, states, horizon, artefacts, k, ids, probs
    )
    assert session.active_hook_count() == 0


def test_the_grid_uses_the_batched_path_and_keeps_its_numbers(tiny_gemma, lenslab_home):
    """FutureLens.run (fixed, free-running) gives the per-layer path's top-k for every cell."""
    session = tiny_gemma
    prompt = "the fox jumps"
    result = FutureLens().run(session, prompt, FutureLensConfig(method="fixed", horizon=3, k=4))
    layers = list(range(session.n_layers))
    states, _ = actual_continuation(session, session.tokenize(prompt), 4, layers)
    for i, layer in enumerate(layers):
        ref_ids, ref_probs = method_topk(session, "fixed", layer, states[layer], 4, Artefacts(), 4)
        assert result.top_ids[i].tolist() == ref_ids.tolist()
        torch.testing.assert_close(torch.as_tensor(result.top_probs[i]), ref_probs, rtol=1e-5, atol=1e-5)


def test_layer_chunks():
    assert layer_chunks([0, 1, 2, 3, 4], 10, 25) == [[0, 1], [2, 3], [4]]
    assert layer_chunks([3, 5], 100, 50) == [[3], [5]]  # at least one layer per chunk
    with pytest.raises(ValueError, match="max_rows"):
        layer_chunks([0], 4, 0)


def test_causal_grid_refuses_bad_inputs(tiny_gemma):
    session = tiny_gemma
    states = {0: torch.zeros(3, session.d_model)}
    with pytest.raises(ValueError, match="exactly one of"):
        causal_grid_topk(session, [0], states, 2, 3)
    with pytest.raises(ValueError, match="horizon"):
        causal_grid_topk(session, [0], states, 0, 3, context_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="every layer"):
        causal_grid_topk(session, [0], states, 2, 3, soft_prompts={})
    with pytest.raises(ValueError, match="no learned prompt"):
        causal_grid(session, "learned", [0], states, 2, Artefacts(), 3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fixed", "learned"])
def test_causal_grid_on_the_embedded_model(embedded_session, method):
    """A few cells of Gemma 3 270M: the batched continuation equals the per-layer one."""
    session = embedded_session
    layers = [3, 9, 15]
    horizon, k = 3, 5
    tokens = session.tokenize("The Eiffel Tower is in Paris")
    states, _ = actual_continuation(session, tokens, horizon, layers)
    states = {layer: s[-3:] for layer, s in states.items()}  # three positions per layer
    artefacts = Artefacts(prompts=_soft_prompts(session, layers, n_prompt=10, seed=1, scale=0.05))
    ids, probs = causal_grid(session, method, layers, states, horizon, artefacts, k)
    # float32 over 18 layers: the cached prefix and the batch sum in another order
    _assert_each_layer_matches_its_own_reference(
        session, method, layers, states, horizon, artefacts, k, ids, probs, tolerance=1e-4
    )
