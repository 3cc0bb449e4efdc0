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


def test_linear_beats_chance_and_direct_projection(embedded_session, data):
    session = embedded_session
    layers = [6, 9, 17]
    maps = fit_linear_maps(session, data, layers)
    precision, bigram, notes = evaluate(
        session, data, layers, ["direct", "linear"], Artefacts(linear=maps), k=10
    )
    top1 = precision[..., 0]  # [method, layer, N]
    assert top1[0, -1, 0] == 1.0  # the direct projection of the last layer is the model's own prediction
    assert top1[1, -1, 0] == 1.0  # shrinking toward the identity keeps that exact
    chance = 10 / session.d_vocab
    assert precision[1, :2, 0, -1].min() > 100 * chance  # linear p@10 at middle layers ≫ chance
    assert top1[1, :2, :].mean() > top1[0, :2, :].mean()  # the paper's ordering at middle layers
    assert bigram.shape == (4, 3) and notes == []


def test_causal_methods_train_save_and_grid(embedded_session, data, lenslab_home):
    session = embedded_session
    precision, _, _ = evaluate(session, data, [6], ["fixed"], Artefacts(), k=10)
    assert np.isfinite(precision).all() and precision[0, 0, 0, -1] > 0
    prompt = train_soft_prompt(session, data, 6, PromptTraining(epochs=1, batch_size=8, max_examples=8))
    assert len(prompt.meta["losses"]) == 1 and np.isfinite(prompt.meta["losses"]).all()
    path = prompt.save(soft_prompt_path(session.model_id, 6))
    assert torch.equal(SoftPrompt.load(path, session).vectors, prompt.vectors)
    result = FutureLens().run(session, PROMPT, FutureLensConfig(method="learned", layers=(6,), horizon=2))
    assert result.top_ids.shape[:3] == (1, len(result.tokens), 3)
    assert "soft_prompt_L6" in result.artefact
    assert session.active_hook_count() == 0
