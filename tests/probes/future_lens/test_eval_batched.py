"""The evaluation's batched path (every evaluated layer at once) equals the per-layer one.

``evaluation.layers_topk`` decodes direct / linear for every layer in one product and runs fixed /
learned (free-running) as one KV-cached continuation of every layer's test rows; the reference is
``methods.method_topk`` run layer by layer, as the evaluation ran before. The states differ from
row to row and layer to layer (checked), so rows or layers handed to the wrong cell would fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens import evaluation
from lenslab.probes.future_lens.artefacts import training_provenance
from lenslab.probes.future_lens.data import HORIZONS, DataSettings, build_dataset
from lenslab.probes.future_lens.evaluation import evaluate, hits_at_ks, layers_topk
from lenslab.probes.future_lens.linear import LinearMaps
from lenslab.probes.future_lens.methods import Artefacts, method_topk
from lenslab.probes.future_lens.probe import actual_continuation
from lenslab.probes.future_lens.prompts import SoftPrompt, embedding_multiplier


def _artefacts(session, layers, seed=0):
    """Random linear maps and a different random soft prompt per layer."""
    generator = torch.Generator().manual_seed(seed)
    d = session.d_model
    maps = LinearMaps(
        layers=layers,
        horizons=list(range(HORIZONS)),
        weight=torch.randn(len(layers), HORIZONS, d, d, generator=generator) / d**0.5,
        x_mean=torch.randn(len(layers), d, generator=generator),
        y_mean=torch.randn(HORIZONS, d, generator=generator),
    )
    multiplier = embedding_multiplier(session)
    prompts = {
        layer: SoftPrompt(
            layer=layer,
            vectors=torch.randn(4, d, generator=generator) * 0.5,
            meta={"multiplier": multiplier},
        )
        for layer in layers
    }
    return Artefacts(linear=maps, prompts=prompts)


def _reference(session, method, layers, states, artefacts, k, protocol, teacher):
    """Per layer: method_topk's ids and probabilities (the evaluation's former path)."""
    return [
        method_topk(
            session, method, layer, states[layer], HORIZONS, artefacts, k, protocol=protocol, teacher=teacher
        )
        for layer in layers
    ]


@pytest.mark.parametrize(
    ("method", "protocol"),
    [
        ("direct", "free-running"),
        ("linear", "free-running"),
        ("fixed", "free-running"),
        ("learned", "free-running"),
        ("fixed", "teacher-forced"),
    ],
)
@pytest.mark.parametrize("max_rows", [512, 3])  # every row in one block; blocks of 3 examples
def test_layers_topk_equals_method_topk_layer_by_layer(tiny_gemma, monkeypatch, method, protocol, max_rows):
    monkeypatch.setattr(evaluation, "MAX_ROWS", max_rows)
    session = tiny_gemma
    layers = list(range(session.n_layers))
    k = 5
    tokens = session.tokenize("The quick brown fox jumps over the lazy dog")
    states, actual = actual_continuation(session, tokens, HORIZONS, layers)  # rows: the 10 positions
    teacher = torch.as_tensor(actual)[:, : HORIZONS - 1] if protocol == "teacher-forced" else None
    artefacts = _artefacts(session, layers)
    ids = layers_topk(session, method, layers, states, artefacts, k, protocol=protocol, teacher=teacher)
    assert ids.shape == (len(layers), tokens.shape[-1], HORIZONS, k)
    references = _reference(session, method, layers, states, artefacts, k, protocol, teacher)
    for i, (ref_ids, ref_probs) in enumerate(references):
        # ids agree wherever the top-k is not a near-tie (another batch shape may order a tie otherwise)
        gaps = ref_probs[..., :-1] - ref_probs[..., 1:]
        clear = torch.cat([gaps > 1e-5, torch.ones_like(gaps[..., :1], dtype=torch.bool)], -1)
        assert torch.equal(ids[i][clear], ref_ids[clear]), f"{method} layer {layers[i]}"
    # the references differ between layers and between rows: a swapped row or layer would fail
    for a in range(len(layers)):
        for b in range(a + 1, len(layers)):
            assert not torch.equal(references[a][0], references[b][0])
    assert any(not torch.equal(r[0], r[p]) for r, _ in references for p in range(1, tokens.shape[-1]))
    assert session.active_hook_count() == 0


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    texts = [
        f"Story {i}: a small grey cat number {i} walks along the old stone wall at night." for i in range(30)
    ]
    path.write_text("\n".join(json.dumps(t) for t in texts), encoding="utf-8")
    return path


def test_evaluate_scores_the_per_layer_top_k(tiny_gemma, corpus, lenslab_home):
    """evaluate's hits (batched across layers) are the hits of the per-layer top-k of each layer."""
    session = tiny_gemma
    data = build_dataset(session, DataSettings(source=str(corpus), n_examples=40, prefix_tokens=8))
    layers = list(range(session.n_layers))
    artefacts = _artefacts(session, layers)
    artefacts.prompts.pop(layers[0])  # learned: a layer without a prompt is skipped with a note
    for prompt in artefacts.prompts.values():  # trained on the training documents only
        prompt.meta["provenance"] = training_provenance(data, data.split(test=False))
    methods = ["direct", "fixed", "learned"]
    scores = evaluate(session, data, layers, methods, artefacts, k=5)
    test = data.split(test=True)
    states = {layer: torch.as_tensor(data.resid[test, layer]) for layer in layers}
    ks = [1, 5]
    for m, method in enumerate(methods):
        for i, layer in enumerate(layers):
            if method == "learned" and layer == layers[0]:
                assert not scores.hits[m, i].any() and np.isnan(scores.precision[m, i]).all()
                continue
            ref_ids, _ = method_topk(session, method, layer, states[layer], HORIZONS, artefacts, 5)
            expected = hits_at_ks(ref_ids.numpy(), data.labels[test], ks)
            np.testing.assert_array_equal(scores.hits[m, i], expected, err_msg=f"{method} L{layer}")
    assert any("learned L0" in note for note in scores.notes)
