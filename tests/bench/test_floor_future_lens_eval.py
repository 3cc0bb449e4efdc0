"""The evaluation floor's prompt intervention computes the probe's top-k (tiny Gemma).

``bench/floor_future_lens_eval.py``'s :class:`Intervention` runs the fixed / learned prompt on the
plain HF model (every layer's rows in one KV-cached batch, hooks on the HF blocks); the reference is
the probe's own per-layer path (``methods.method_topk`` through the session). The references differ
between layers and rows, so a floor that transplants a state into the wrong row or layer fails.
"""

from __future__ import annotations

import pytest
import torch

from lenslab.bench.floor_future_lens_eval import Intervention
from lenslab.models.tiny import tiny_hf_model
from lenslab.probes.future_lens.data import HORIZONS
from lenslab.probes.future_lens.methods import Artefacts, method_topk
from lenslab.probes.future_lens.probe import actual_continuation
from lenslab.probes.future_lens.prompts import SoftPrompt, embedding_multiplier


@pytest.mark.parametrize("protocol", ["free-running", "teacher-forced"])
@pytest.mark.parametrize("method", ["fixed", "learned"])
def test_intervention_floor_equals_the_probes_per_layer_path(tiny_gemma, method, protocol):
    session = tiny_gemma
    hf = tiny_hf_model("gemma3", seed=0).eval()  # the tiny session's weights, as a plain HF model
    layers = list(range(session.n_layers))
    k = 5
    tokens = session.tokenize("The quick brown fox jumps over the lazy dog")
    states, actual = actual_continuation(session, tokens, HORIZONS, layers)  # rows: the positions
    teacher = torch.as_tensor(actual)[:, : HORIZONS - 1]
    generator = torch.Generator().manual_seed(0)
    prompts = {
        layer: SoftPrompt(
            layer=layer,
            vectors=torch.randn(4, session.d_model, generator=generator) * 0.5,
            meta={"multiplier": embedding_multiplier(session)},
        )
        for layer in layers
    }
    if method == "fixed":
        intervention = Intervention.fixed(session, hf, layers)
    else:
        intervention = Intervention.learned(session, hf, prompts)
    ids = intervention.topk(states, k, protocol, teacher)
    assert ids.shape == (len(layers), tokens.shape[-1], HORIZONS, k)
    references = []
    for i, layer in enumerate(layers):
        ref_ids, ref_probs = method_topk(
            session,
            method,
            layer,
            states[layer],
            HORIZONS,
            Artefacts(prompts=prompts),
            k,
            protocol=protocol,
            teacher=teacher if protocol == "teacher-forced" else None,
        )
        references.append(ref_ids)
        gaps = ref_probs[..., :-1] - ref_probs[..., 1:]  # ids agree wherever the top-k is not a near-tie
        clear = torch.cat([gaps > 1e-5, torch.ones_like(gaps[..., :1], dtype=torch.bool)], -1)
        assert torch.equal(ids[i][clear], ref_ids[clear]), f"{method} layer {layer}"
    assert not torch.equal(references[0], references[1])  # a row at the wrong layer would show
    assert any(not torch.equal(r[0], r[p]) for r in references for p in range(1, tokens.shape[-1]))
