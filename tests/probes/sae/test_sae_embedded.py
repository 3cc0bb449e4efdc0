"""The shipped SAE on the embedded Gemma 3 270M: it loads, fits, and has the stated held-out quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes import get_probe
from lenslab.probes.sae.corpus import corpus_texts, held_out_windows, split_documents
from lenslab.probes.sae.evaluation import METRICS, HeldOutEvaluation
from lenslab.probes.sae.features import (
    SAEFeatureConfig,
    SAEFeaturesConfig,
    prepare_default_artefacts,
    top_features_by_frequency,
)
from lenslab.probes.sae.steering import SAESteeringConfig

pytestmark = pytest.mark.slow
# Floors for the lower 95% bounds on held-out documents (measured: 0.905 [0.90, 0.91], CE recovered
# 0.967 [0.960, 0.974] vs zero-ablation and 0.880 [0.857, 0.903] vs mean-ablation; 64 documents).
EV_MIN = 0.85
CE_RECOVERED_MIN = 0.93
CE_RECOVERED_MEAN_MIN = 0.8


@pytest.fixture(scope="module")
def shipped(embedded_session):
    return prepare_default_artefacts(embedded_session)  # cached after `lenslab prepare`


@pytest.fixture(scope="module")
def evaluation(shipped):
    evaluation = HeldOutEvaluation.from_info(shipped.info)
    assert evaluation is not None, "the shipped SAE has no held-out evaluation: run `lenslab prepare`"
    return evaluation


def test_shipped_sae_is_the_stated_one(embedded_session, shipped):
    assert shipped.hook_name == hooknames.resid(6) and shipped.d_in == embedded_session.d_model
    assert shipped.d_sae == 2048 and shipped.sae.cfg.k == 32


def test_held_out_documents_are_disjoint_from_training(shipped, evaluation):
    config = shipped.info["training_config"]
    train_docs, held_docs = split_documents(len(corpus_texts(config["corpus"])))
    trained_on = set(shipped.info["documents"]["train"])
    assert trained_on and trained_on <= set(train_docs)
    assert set(evaluation.documents) <= set(held_docs) and not trained_on & set(evaluation.documents)
    assert evaluation.n_tokens >= 2000 and evaluation.n_documents >= 30  # a useful interval


def test_stored_quality_equals_sae_lens_on_held_out_windows(embedded_session, shipped, evaluation):
    """Recompute L0 and explained variance with sae-lens' own encode/decode on the same windows."""
    config = shipped.info["training_config"]
    windows = held_out_windows(
        embedded_session,
        config["corpus"],
        context_size=config["context_size"],
        n_seq=config["eval_windows"],
    )
    assert windows.used_documents() == evaluation.documents
    tokens = torch.from_numpy(windows.tokens).to(embedded_session.device)
    act = embedded_session.capture(tokens, [shipped.hook_name])[shipped.hook_name][:, 1:].float()
    act = act.reshape(-1, act.shape[-1])
    with torch.inference_mode():
        feats = shipped.sae.encode(act)
        recon = shipped.sae.decode(feats)
    l0 = float((feats > 0).sum(-1).float().mean())
    ev = 1 - float(((recon - act) ** 2).sum() / ((act - act.mean(0)) ** 2).sum())
    assert len(act) == evaluation.n_tokens
    assert evaluation.estimates["l0"] == pytest.approx(l0, rel=1e-4)
    assert evaluation.estimates["explained_variance"] == pytest.approx(ev, abs=2e-3)


def test_held_out_quality_with_intervals(evaluation):
    for name in METRICS:
        interval = evaluation.interval(name)
        assert np.isfinite([interval.low, interval.high]).all(), name
        assert interval.low <= interval.estimate <= interval.high, name
        assert interval.n == evaluation.n_documents
    est = evaluation.estimates
    assert est["ce_clean"] < est["ce_sae"] < min(est["ce_zero_ablation"], est["ce_mean_ablation"])
    assert evaluation.interval("explained_variance").low >= EV_MIN
    assert evaluation.interval("ce_recovered").low >= CE_RECOVERED_MIN
    assert evaluation.interval("ce_recovered_mean").low >= CE_RECOVERED_MEAN_MIN
    assert evaluation.interval("ce_recovered").high <= 1.0 + 1e-9  # the SAE does not beat the model


def test_per_prompt_view_on_embedded(embedded_session, shipped):
    prompt = "def add(a, b):\n    return a + b  # the sum of two numbers"
    result = get_probe("sae_features").run(embedded_session, prompt, SAEFeaturesConfig(), loaded=shipped)
    assert (result.l0[1:] <= 32).all() and result.l0[1:].mean() >= 10
    assert result.explained_variance >= EV_MIN - 0.15
    assert np.isfinite(result.ce_sae) and result.ce_sae < result.ce_zero
    assert embedded_session.active_hook_count() == 0


def test_feature_page_and_steering_on_embedded(embedded_session, shipped):
    feature = top_features_by_frequency(embedded_session, shipped, n=1)[0][0]  # a live feature
    busiest = get_probe("sae_feature").run(
        embedded_session, "", SAEFeatureConfig(feature=feature), loaded=shipped
    )
    assert busiest.top_contexts and busiest.frequency > 0
    assert busiest.top_contexts[0].value == pytest.approx(busiest.max_activation)
    steer = get_probe("sae_steering").run(
        embedded_session,
        "The Eiffel Tower is located in the city of",
        SAESteeringConfig(feature=feature, alpha=200.0, n_new=4),
        loaded=shipped,
    )
    assert steer.kl > 0.01
