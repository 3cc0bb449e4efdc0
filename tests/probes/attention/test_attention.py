"""Attention heads on tiny models: patterns equal HF eager attention, scores, induction, clicks, lens."""

import numpy as np
import pytest
import torch

from lenslab.models.tiny import tiny_hf_model, tiny_session
from lenslab.probes import Result
from lenslab.probes.attention import AttentionConfig, AttentionHeads, random_repeated_tokens
from lenslab.probes.dla import DirectLogitAttribution, DLAConfig
from lenslab.probes.inspector import StateRef, inspect_state

PROMPT = "The cat sat on the mat, and the cat sat again."  # 47 tokens: longer than tiny Gemma's window of 8
FAST = {"induction_length": 6, "induction_sequences": 3}


def _hf_attentions(family: str, tokens: torch.Tensor, n_layers: int = 2) -> list[torch.Tensor]:
    """An independent HF model (same seed, same weights) with eager attention's ``output_attentions``."""
    model = tiny_hf_model(family, seed=0, n_layers=n_layers)
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        return [a[0] for a in model(tokens, output_attentions=True).attentions]


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_patterns_equal_hf_eager_output_attentions(family):
    session = tiny_session(family)
    res = AttentionHeads().run(session, PROMPT, AttentionConfig(induction=False, head_logits=False))
    expected = _hf_attentions(family, session.tokenize(PROMPT))
    assert res.patterns.shape == (2, expected[0].shape[0], len(res.tokens), len(res.tokens))
    for layer, hf in enumerate(expected):
        assert np.abs(res.patterns[layer] - hf.numpy()).max() < 1e-6
    # the prompt scores are means of the HF pattern's diagonals
    hf_prev = np.stack([a.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).numpy() for a in expected])
    np.testing.assert_allclose(res.prev_token[..., 0], hf_prev, rtol=1e-5, atol=1e-7)
    assert res.n_queries == len(res.tokens) - 1
    assert session.active_hook_count() == 0


def test_local_and_global_layers_are_marked_and_the_window_is_applied():
    session = tiny_session("gemma3", n_layers=6)  # Gemma 3: five local layers, then a global one
    res = AttentionHeads().run(session, PROMPT, AttentionConfig(induction=False, head_logits=False))
    assert res.windows.tolist() == [8, 8, 8, 8, 8, 0]
    assert res.layer_label(0) == "L0 · local 8" and res.layer_label(5) == "L5 · global"
    q, k = np.indices(res.patterns.shape[-2:])
    far = q - k >= 8
    assert (res.patterns[:5][..., far] == 0).all()
    assert (res.patterns[5][..., far] > 0).any()
    expected = _hf_attentions("gemma3", session.tokenize(PROMPT), n_layers=6)
    assert max(np.abs(res.patterns[i] - e.numpy()).max() for i, e in enumerate(expected)) < 1e-6


def test_rows_sum_to_one_and_are_causal(tiny_any):
    res = AttentionHeads().run(tiny_any, PROMPT, AttentionConfig(induction=False, head_logits=False))
    np.testing.assert_allclose(res.patterns.sum(-1), 1.0, atol=1e-5)
    above = np.triu(np.ones(res.patterns.shape[-2:], dtype=bool), k=1)
    assert (res.patterns[..., above] == 0).all()
    assert (res.entropy[..., 0] >= 0).all()
    assert (res.entropy[..., 0] <= np.log(len(res.tokens))).all()


def test_induction_scores_equal_a_loop_over_hf_attentions():
    session = tiny_session("llama")
    config = AttentionConfig(head_logits=False, induction_length=7, induction_sequences=4, seed=3)
    res = AttentionHeads().run(session, "abc", config)
    tokens = random_repeated_tokens(session, 7, 4, seed=3)
    assert tokens.shape == (4, 15) and (tokens[:, 0] == session.tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:])
    assert not set(tokens[:, 1:].flatten().tolist()) & set(session.tokenizer.all_special_ids)
    model = tiny_hf_model("llama", seed=0)
    with torch.no_grad():
        attentions = model(tokens, output_attentions=True).attentions
    for layer, pattern in enumerate(attentions):  # [seq, head, q, k]
        per_sequence = np.zeros((pattern.shape[1], 4))
        for s in range(4):
            for i in range(8, 15):  # second copy; the token after the earlier occurrence is at i - 6
                per_sequence[:, s] += pattern[s, :, i, i - 7 + 1].numpy() / 7
        np.testing.assert_allclose(res.induction[layer, :, 0], per_sequence.mean(1), rtol=1e-5, atol=1e-7)
    assert res.induction_n == 4 and res.induction_length == 7
    assert (res.induction[..., 1] <= res.induction[..., 0]).all()
    # the same seed gives the same sequences; another seed other ones
    assert torch.equal(tokens, random_repeated_tokens(session, 7, 4, seed=3))
    assert not torch.equal(tokens, random_repeated_tokens(session, 7, 4, seed=4))


def test_head_logits_are_the_dla_heads(tiny_any):
    res = AttentionHeads().run(tiny_any, PROMPT, AttentionConfig(**FAST))
    dla = DirectLogitAttribution().run(tiny_any, PROMPT, DLAConfig())
    np.testing.assert_allclose(res.head_logit, dla.head_values, rtol=1e-9, atol=1e-12)
    assert res.predicted_token == dla.target_token


def test_score_cells_click_open_that_head_and_round_trip(tiny_gemma):
    res = AttentionHeads().run(tiny_gemma, "<b>hi</b> there", AttentionConfig(**FAST))
    figs = res.figures()
    assert {"patterns", "head", "prev_token", "first_token", "induction", "entropy", "head_logit"} <= set(
        figs
    )
    cells = figs["prev_token"].data[1]
    assert cells.name == "cells" and len(cells.x) == res.patterns.shape[0] * res.patterns.shape[1]
    point = {"x": cells.x[3], "y": cells.y[3]}
    layer, head = res.head_at("prev_token", point)
    assert (layer, head) == (1, 1)
    big = res.head_figure(layer, head)
    assert np.array_equal(np.asarray(big.data[0].z), res.patterns[1, 1])
    assert (
        res.head_at("patterns", point) is None and res.head_at("prev_token", {"x": "H0", "y": "L9"}) is None
    )
    assert len(figs["patterns"].data) == res.patterns.shape[0] * res.patterns.shape[1]
    back = Result.from_dict(res.to_dict())
    assert np.array_equal(back.patterns, res.patterns) and back.config == res.config
    assert "n=" in res.summary()["top previous-token head"]


def test_invalid_settings_name_the_field(tiny_gemma):
    with pytest.raises(ValueError, match="focus_head"):
        AttentionHeads().run(tiny_gemma, "hi", AttentionConfig(focus_layer=0, focus_head=9))
    with pytest.raises(ValueError, match="together"):
        AttentionHeads().run(tiny_gemma, "hi", AttentionConfig(focus_layer=0))
    with pytest.raises(ValueError, match="out of range"):
        AttentionHeads().run(tiny_gemma, "hi", AttentionConfig(layers=(5,)))
    with pytest.raises(ValueError, match="induction_length"):
        AttentionHeads().run(tiny_gemma, "hi", AttentionConfig(induction_length=1))


def test_layer_subset_stops_early_and_the_lens_names_heads(tiny_gemma):
    res = AttentionHeads().run(
        tiny_gemma, "abcabc", AttentionConfig(layers=(0,), induction=False, head_logits=False)
    )
    assert res.layers.tolist() == [0] and np.isnan(res.head_logit).all()
    outcomes = {o.view: o for o in inspect_state(tiny_gemma, StateRef("abcabc", 1, 3))}
    lens = outcomes["attention"]
    assert lens.error is None and lens.result.layers.tolist() == [1]
    pattern = lens.result.patterns[0]
    strongest = int(np.argmax(pattern[:, 3, :4].max(-1)))
    assert lens.lines[0].split(": ", 1)[1].startswith(f"H{strongest} ← ")
    assert "reading" in lens.lines[1]
    assert outcomes["dla"].error is None


def test_score_intervals_stay_inside_what_the_scores_can_take(tiny_gemma):
    """Two induction sequences give a wide t interval; it must not leave [0, 1] (entropy: ≥ 0)."""
    config = AttentionConfig(head_logits=False, induction_length=6, induction_sequences=2, seed=0)
    result = AttentionHeads().run(tiny_gemma, "abcab", config)
    for name in ("prev_token", "first_token", "induction"):
        values = getattr(result, name)
        finite = values[np.isfinite(values)]
        assert finite.size and finite.min() >= 0.0 and finite.max() <= 1.0, name
    assert np.nanmin(result.entropy) >= 0.0
