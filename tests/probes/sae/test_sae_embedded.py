"""The shipped SAE on the embedded Gemma 3 270M: it loads, fits, and has the stated quality."""

from __future__ import annotations

import numpy as np
import pytest

from lenslab.models import hooknames
from lenslab.probes import get_probe
from lenslab.probes.sae.features import (
    SAEFeatureConfig,
    SAEFeaturesConfig,
    prepare_default_artefacts,
    top_features_by_frequency,
)
from lenslab.probes.sae.steering import SAESteeringConfig

pytestmark = pytest.mark.slow
EV_MIN = 0.85  # measured 0.926 on held-out python-docs windows
CE_RECOVERED_MIN = 0.9  # measured 0.987


@pytest.fixture(scope="module")
def shipped(embedded_session):
    return prepare_default_artefacts(embedded_session)  # cached after `lenslab prepare`


def test_shipped_sae_loads_with_stated_quality(embedded_session, shipped):
    assert shipped.hook_name == hooknames.resid(6) and shipped.d_in == embedded_session.d_model
    assert shipped.d_sae == 2048 and shipped.sae.cfg.k == 32
    metrics = shipped.info["metrics"]
    assert 20 <= metrics["l0"] <= 32  # TopK k=32: at most 32 active
    assert metrics["explained_variance"] >= EV_MIN
    assert metrics["ce_recovered"] >= CE_RECOVERED_MIN
    assert metrics["ce_clean"] <= metrics["ce_sae"] < metrics["ce_zero_ablation"]


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
