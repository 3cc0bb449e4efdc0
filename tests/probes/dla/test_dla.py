"""Direct logit attribution: the parts sum to the logit an independent HF model computes."""

import numpy as np
import pytest
import torch

from lenslab.models.tiny import tiny_hf_model, tiny_session
from lenslab.probes import Result
from lenslab.probes.dla import DirectLogitAttribution, DLAConfig

PROMPT = "The cat sat on the mat"


def _hf_logits(family: str, tokens: torch.Tensor) -> torch.Tensor:
    model = tiny_hf_model(family, seed=0)
    with torch.no_grad():
        return model(tokens).logits[0]


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_parts_sum_to_the_hf_logit(family):
    session = tiny_session(family)
    res = DirectLogitAttribution().run(session, PROMPT, DLAConfig())
    hf = _hf_logits(family, session.tokenize(PROMPT))
    assert res.target_id == int(hf[-1].argmax())
    total = res.values.sum(dtype=np.float64) + res.constant
    assert abs(total - float(hf[-1, res.target_id])) < 1e-5
    assert abs(res.residual) < 1e-6 and res.resid_error < 1e-6
    assert abs(res.actual - res.model_logit) < 1e-5
    # each layer's heads plus its output bias make up its attention component
    np.testing.assert_allclose(res.head_values.sum(1) + res.attn_bias, res.values[1::2], atol=1e-7)
    assert res.labels[:3] == ["embed", "L0 attn", "L0 mlp"] and len(res.values) == 1 + 2 * session.n_layers
    if family == "gpt2":  # LayerNorm: the bias is a separate constant, b_O a separate per-layer share
        assert res.constant != 0.0 and (res.attn_bias != 0).all() and "centred" in res.norm
    else:
        assert res.constant == 0.0 and (res.attn_bias == 0).all()


def test_gpt2_needs_the_centring():
    """Without subtracting each component's mean the LayerNorm identity fails (the test can fail)."""
    session = tiny_session("gpt2")
    res = DirectLogitAttribution().run(session, PROMPT, DLAConfig())
    from lenslab.probes.dla import split

    run = session.run(PROMPT, split.hook_names(session))
    parts = split.decompose(session, run.activations, -1)
    norm = session.norm_parts(session.hf_final_norm())
    uncentred = type(norm)(weight=norm.weight, bias=norm.bias, centers=False)
    direction = split.logit_direction(session, res.target_id).direction
    wrong = (
        float((split.frozen_norm(parts.components, uncentred, parts.scale) @ direction).sum()) + res.constant
    )
    assert abs(wrong - res.actual) > 1e-3


def test_a_head_by_hand_on_llama():
    """One head's share from the raw weights: W_O's slice, the RMS scale with eps, the norm weight, W_U."""
    session = tiny_session("llama")
    res = DirectLogitAttribution().run(session, PROMPT, DLAConfig())
    model = tiny_hf_model("llama", seed=0)
    layer, head, d_head = 1, 2, 8
    o_proj, norm = model.model.layers[layer].self_attn.o_proj, model.model.norm
    box = {}
    hooks = [
        o_proj.register_forward_pre_hook(lambda m, args: box.__setitem__("z", args[0][0, -1])),
        norm.register_forward_pre_hook(lambda m, args: box.__setitem__("x", args[0][0, -1])),
    ]
    with torch.no_grad():
        model(session.tokenize(PROMPT))
        for hook in hooks:
            hook.remove()
        x = box["x"].double()
        rms = torch.sqrt(x.pow(2).mean() + model.config.rms_norm_eps)
        z = box["z"][head * d_head : (head + 1) * d_head].double()
        out = o_proj.weight[:, head * d_head : (head + 1) * d_head].double() @ z
        expected = float((out / rms * norm.weight.double()) @ model.lm_head.weight[res.target_id].double())
    assert res.head_values[layer, head] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_logit_difference_of_two_answer_tokens(tiny_any):
    res = DirectLogitAttribution().run(tiny_any, PROMPT, DLAConfig(answer="e", contrast="x"))
    family = tiny_any.model_id.split("-")[1]
    hf = _hf_logits(family, tiny_any.tokenize(PROMPT))[-1]
    e, x = (tiny_any.tokenizer.convert_tokens_to_ids(t) for t in ("e", "x"))
    assert (res.target_id, res.contrast_id) == (e, x)
    assert res.actual == pytest.approx(float(hf[e] - hf[x]), abs=1e-5)
    assert abs(res.residual) < 1e-6
    assert "logit('e') − logit('x')" in res.target_text()


def test_bad_answers_name_the_field(tiny_gemma):
    with pytest.raises(ValueError, match="answer 'ab' is 2 tokens"):
        DirectLogitAttribution().run(tiny_gemma, PROMPT, DLAConfig(answer="ab"))
    with pytest.raises(ValueError, match="contrast needs an answer"):
        DirectLogitAttribution().run(tiny_gemma, PROMPT, DLAConfig(contrast="a"))
    with pytest.raises(ValueError, match="position 40 out of range"):
        DirectLogitAttribution().run(tiny_gemma, PROMPT, DLAConfig(position=40))


def test_figures_summary_and_round_trip(tiny_gemma):
    res = DirectLogitAttribution().run(tiny_gemma, "<b>x</b>", DLAConfig(position=3))
    figs = res.figures()
    assert set(figs) == {"waterfall", "layers", "heads"}
    assert "<b>" not in figs["waterfall"].layout.title.text
    assert list(figs["waterfall"].data[0].x)[-2:] == ["biases", "total"]
    assert res.position == 3 and "Σ parts − actual" in res.summary()
    back = Result.from_dict(res.to_dict())
    assert np.array_equal(back.values, res.values) and back.config == res.config
    assert back.residual == res.residual


def test_a_soft_capped_model_attributes_the_pre_cap_logit():
    """Gemma 2 style final soft-cap: the parts sum to the pre-cap logit; the model returns its tanh."""
    from transformer_lens.model_bridge import TransformerBridge

    from lenslab.models.session import ModelSession
    from lenslab.models.tiny import tiny_tokenizer

    model = tiny_hf_model("gemma3", seed=0)
    model.config.final_logit_softcapping = 0.1  # small enough that tanh bends the tiny model's logits
    bridge = TransformerBridge.boot_transformers(
        "google/gemma-3-270m", hf_model=model, tokenizer=tiny_tokenizer(), device="cpu", dtype=torch.float32
    )
    session = ModelSession.from_bridge(bridge, model_id="tiny-gemma3-capped")
    res = DirectLogitAttribution().run(session, PROMPT, DLAConfig())
    assert res.softcap == 0.1 and "pre-soft-cap logit" in res.target_text()
    assert abs(res.residual) < 1e-6
    capped = 0.1 * np.tanh(res.actual / 0.1)
    assert abs(res.actual - capped) > 1e-3  # the cap really bends this logit
    with torch.no_grad():
        hf_logit = float(model(session.tokenize(PROMPT)).logits[0, -1, res.target_id])
    assert hf_logit == pytest.approx(capped, abs=1e-5)
    assert res.model_logit == pytest.approx(capped, abs=1e-5)
