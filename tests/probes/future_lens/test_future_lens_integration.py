"""Future Lens end to end on the embedded Gemma 3 270M with a small corpus (CI-sized)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens.data import DataSettings, build_dataset
from lenslab.probes.future_lens.evaluation import evaluate
from lenslab.probes.future_lens.linear import fit_linear_maps
from lenslab.probes.future_lens.methods import Artefacts
from lenslab.probes.future_lens.probe import FutureLens, FutureLensConfig
from lenslab.probes.future_lens.prompts import PromptTraining, SoftPrompt, soft_prompt_path, train_soft_prompt

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def data(embedded_session):
    settings = DataSettings(n_examples=64, prefix_tokens=12, test_fraction=0.25)
    return build_dataset(embedded_session, settings, use_cache=False)


def test_collection_matches_a_plain_forward(embedded_session, data):
    session = embedded_session
    assert data.labels.shape == (64, 4) and data.resid.shape == (64, 18, 640)
    assert not set(data.doc_ids[data.is_test].tolist()) & set(data.doc_ids[~data.is_test].tolist())
    i = 5
    sequence = torch.cat(
        [torch.as_tensor(data.prefix_ids[i : i + 1]), torch.as_tensor(data.labels[i : i + 1, :3])], 1
    )
    run = session.run(sequence, [session.resid_name(8)])
    assert run.logits[0, 11:].argmax(-1).tolist() == data.labels[i].tolist()
    h = run.activations[session.resid_name(8)][0, 11].numpy()
    assert np.abs(h - data.resid[i, 8]).max() < 1e-3 * np.abs(h).max()


def test_linear_and_direct_projection(embedded_session, data):
    session = embedded_session
    last = session.n_layers - 1
    layers = [6, 9, last]
    maps = fit_linear_maps(session, data, layers)
    scores = evaluate(session, data, layers, ["direct", "linear"], Artefacts(linear=maps), k=10)
    precision = scores.precision
    top1 = precision[..., 0]  # [method, layer, N]
    assert top1[0, -1, 0] == 1.0  # the direct projection of the last layer is the model's own prediction
    assert top1[1, -1, 0] == 1.0  # shrinking toward the identity keeps that exact

    # The logit lens identity, against a plain forward: at the last layer, the direct projection's
    # top-k for every N is the model's own top-k at t, scored against the labels t+1 .. t+4.
    test = data.split(test=True)
    logits = session.run(torch.as_tensor(data.prefix_ids[test], device=session.device)).logits[:, -1].float()
    own = logits.topk(10, dim=-1).indices.cpu().numpy()
    labels = data.labels[test]
    ks = [1, 5, 10]  # what evaluate reports for k=10
    assert precision.shape[-1] == len(ks)
    for j, k in enumerate(ks):
        expected = (own[:, None, :k] == labels[:, :, None]).any(-1).mean(0)
        # one example of slack: the data were collected in other batches (a near-tie at rank k may flip)
        np.testing.assert_allclose(precision[0, -1, :, j], expected, rtol=0, atol=1 / len(labels) + 1e-12)

    # At the last layer the N = 0 target is the input itself (the same state), so the map shrunk
    # toward the identity is the identity: ridge solves (XᵀX + λI) W = XᵀX + λI.
    np.testing.assert_array_equal(data.final[:, 0], data.resid[:, last])
    weight = maps.weight[layers.index(last), 0]
    assert (weight - torch.eye(session.d_model, device=weight.device)).abs().max() < 1e-4
    states = torch.as_tensor(data.resid[test, last], device=weight.device)
    predicted = maps.predict(states, last)[:, 0]
    assert (predicted - states).abs().max() < 1e-3 * states.abs().max()

    assert top1[1, :2, :].mean() > top1[0, :2, :].mean()  # the paper's ordering at middle layers
    assert scores.bigram.shape == (4, 3) and scores.notes == []
    low, high = scores.precision_ci[..., 0], scores.precision_ci[..., 1]
    assert np.all((low <= precision + 1e-12) & (precision <= high + 1e-12))
    assert scores.n_documents == len(set(data.doc_ids[data.is_test].tolist()))


def test_causal_methods_train_save_and_grid(embedded_session, data, lenslab_home):
    session = embedded_session
    last = session.n_layers - 1
    free = evaluate(session, data, [6, last], ["fixed"], Artefacts(), k=10)
    forced = evaluate(session, data, [6, last], ["fixed"], Artefacts(), k=10, protocol="teacher-forced")
    assert np.isfinite(free.precision).all()
    # Transplanted into the last layer, a state is decoded by nothing but the final norm and the
    # unembedding, whatever the context: N = 0 is the model's own prediction.
    assert free.precision[0, 1, 0, 0] == 1.0
    np.testing.assert_array_equal(free.precision[:, :, 0], forced.precision[:, :, 0])  # N = 0 is one state
    assert not np.array_equal(free.precision[:, :, 1:], forced.precision[:, :, 1:])
    prompt = train_soft_prompt(session, data, 6, PromptTraining(epochs=1, batch_size=8, max_examples=8))
    assert len(prompt.meta["losses"]) == 1 and np.isfinite(prompt.meta["losses"]).all()
    path = prompt.save(soft_prompt_path(session.model_id, 6))
    assert torch.equal(SoftPrompt.load(path, session).vectors, prompt.vectors)
    result = FutureLens().run(session, PROMPT, FutureLensConfig(method="learned", layers=(6,), horizon=2))
    assert result.top_ids.shape[:3] == (1, len(result.tokens), 3)
    assert "soft_prompt_L6" in result.artefact
    assert session.active_hook_count() == 0
