"""Exact token → SAE feature attribution (Jacobian × SAE) on tiny models and the embedded one."""

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes.feature_attribution import FeatureAttribution, FeatureAttributionConfig, pre_activation
from lenslab.probes.sae.loading import load_sae

STATE = hooknames.resid(1)


def _sae_folder(tmp_path, d_in, hook=STATE):
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=40, k=6, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    sae.save_model(tmp_path / "sae")
    return str(tmp_path / "sae")


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_shares_sum_to_pre_activation(tmp_path, family):
    from lenslab.models.tiny import tiny_session

    session = tiny_session(family)
    spec = _sae_folder(tmp_path, session.d_model)
    res = FeatureAttribution().run(session, "hello world", FeatureAttributionConfig(sae=spec, n_features=5))
    total = res.attribution.sum(0) + res.constant
    np.testing.assert_allclose(total, res.pre_activations, rtol=1e-4, atol=1e-4)
    assert res.attribution.shape == (len(res.tokens), 5)
    # the features chosen are the SAE's strongest at that state, with its real activations
    loaded = load_sae(session, spec)
    state = session.run("hello world", [STATE]).activations[STATE][0, -1]
    acts = loaded.encode(state[None])[0]
    assert set(res.features.tolist()) == set(acts.topk(5).indices.tolist())
    np.testing.assert_allclose(
        pre_activation(loaded, state)[res.features].detach().numpy(),
        res.pre_activations,
        rtol=1e-5,
        atol=1e-5,
    )
    assert session.active_hook_count() == 0
    assert set(res.figures()) == {"attribution"}


def test_wrong_hook_and_long_prompt_refused(tmp_path, tiny_gemma):
    spec = _sae_folder(tmp_path, tiny_gemma.d_model, hook=hooknames.attn_out(1))
    with pytest.raises(ValueError, match="residual stream"):
        FeatureAttribution().run(tiny_gemma, "hi", FeatureAttributionConfig(sae=spec))
    spec = _sae_folder(tmp_path / "b", tiny_gemma.d_model)
    with pytest.raises(ValueError, match="capped"):
        FeatureAttribution().run(tiny_gemma, "x" * 40, FeatureAttributionConfig(sae=spec, max_tokens=8))


@pytest.mark.slow
def test_embedded_default_sae_exact(embedded_session):
    res = FeatureAttribution().run(embedded_session, "The Eiffel Tower is in", FeatureAttributionConfig())
    scale = float(np.abs(res.pre_activations).max())
    assert res.max_sum_error / scale < 1e-4
    assert (res.activations > 0).all()
