"""Attention heads and DLA on the embedded Gemma 3 270M against an independent HF eager model."""

import numpy as np
import pytest
import torch

from lenslab.models.loading import embedded_dir
from lenslab.probes.attention import AttentionConfig, AttentionHeads
from lenslab.probes.dla import DirectLogitAttribution, DLAConfig

pytestmark = pytest.mark.slow
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def hf_eager():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    return model.eval()


def test_patterns_equal_hf_eager_and_layers_are_marked(embedded_session, hf_eager):
    config = AttentionConfig(induction_length=20, induction_sequences=4)
    res = AttentionHeads().run(embedded_session, PROMPT, config)
    tokens = embedded_session.tokenize(PROMPT).cpu()
    with torch.no_grad():
        out = hf_eager(tokens, output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.attentions])
    assert res.patterns.shape == expected.shape == (18, 4, len(res.tokens), len(res.tokens))
    assert np.abs(res.patterns - expected).max() < 1e-5
    assert res.windows.tolist() == [0 if (layer + 1) % 6 == 0 else 512 for layer in range(18)]
    # Gemma's heads sink on BOS; some head attends to the previous token
    assert np.nanmax(res.first_token[..., 0]) > 0.5 and np.nanmax(res.prev_token[..., 0]) > 0.3
    assert res.induction_n == 4 and np.isfinite(res.induction).all()


def test_dla_parts_sum_to_the_hf_logit(embedded_session, hf_eager):
    res = DirectLogitAttribution().run(embedded_session, PROMPT, DLAConfig(answer=" Mary", contrast=" John"))
    tokens = embedded_session.tokenize(PROMPT).cpu()
    with torch.no_grad():
        logits = hf_eager(tokens).logits[0, -1]
    expected = float(logits[res.target_id] - logits[res.contrast_id])
    assert res.actual == pytest.approx(expected, abs=1e-3)
    assert abs(res.residual) < 1e-4 and res.resid_error < 1e-5 and res.softcap == 0.0
    assert res.actual > 0  # the model prefers the indirect object
