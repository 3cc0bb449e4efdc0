"""Activation patching on tiny models: exact identities, batching, and an independent HF-hook check."""

import dataclasses

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes import get_probe
from lenslab.probes.patching import (
    Patch,
    PatchingConfig,
    metric,
    patched_hidden,
    resolve_pair,
    source_activations,
    sweep_rows,
)
from lenslab.probes.patching.pair import final_hidden

CLEAN = "The Eiffel Tower is in <b>Paris</b> & 48 + 7 ="
CORRUPTED = "The Eiffel Tower is in <b>Rome!</b> & 48 + 8 ="  # same length in characters (tiny: tokens)
TOL = 1e-5


def _pair(session, corrupted=CORRUPTED):
    return resolve_pair(session, CLEAN, corrupted, "5", "6")


def _hf_logits(session, tokens, patch=None):
    """HF last-position logits and each decoder layer's output; ``patch`` = (layer, position, vector)."""
    hf = session.bridge.original_model
    outputs, handles = {}, []

    def hook(module, args, output, layer):
        hidden = output[0] if isinstance(output, tuple) else output
        if patch is not None and patch[0] == layer:
            hidden = hidden.clone()
            hidden[:, patch[1]] = patch[2]
        outputs[layer] = hidden
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    for layer, module in enumerate(session.hf_layers()):
        handles.append(module.register_forward_hook(lambda m, a, o, layer=layer: hook(m, a, o, layer)))
    try:
        with torch.no_grad():
            out = hf(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return out.logits[0, -1], outputs


def _full_logits(session, hidden):
    with torch.inference_mode():
        return session.final_logits(hidden)


def test_answer_logits_equal_full_logits_and_hf(tiny_any):
    tokens = tiny_any.tokenize(CLEAN)
    hidden = final_hidden(tiny_any, tokens)[0, -1]
    ids = [5, 17, 40]
    picked = tiny_any.answer_logits(hidden, ids)
    hf_logits, _ = _hf_logits(tiny_any, tokens)
    torch.testing.assert_close(picked, _full_logits(tiny_any, hidden)[ids], rtol=0, atol=1e-6)
    torch.testing.assert_close(picked, hf_logits[ids], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="token ids"):
        tiny_any.answer_logits(hidden, [tiny_any.d_vocab])


def test_embedding_patch_restores_clean_and_no_patch_leaves_corrupted(tiny_any):
    pair = _pair(tiny_any)
    rows = [(Patch(hooknames.resid_pre(0)),), ()]  # every position of block 0's input; nothing
    source = source_activations(tiny_any, pair.clean, rows)
    hidden = patched_hidden(tiny_any, pair.corrupted, source, rows, pair.position, batch_size=2)
    clean = final_hidden(tiny_any, pair.clean)[:, -1]
    corrupted = final_hidden(tiny_any, pair.corrupted)[:, -1]
    assert (hidden[0] - clean[0]).abs().max() < TOL
    assert (hidden[1] - corrupted[0]).abs().max() < TOL
    # the full logits too, against an HF forward of the clean prompt
    hf_clean, _ = _hf_logits(tiny_any, pair.clean)
    assert (_full_logits(tiny_any, hidden[0]) - hf_clean).abs().max() < 1e-4
    values = metric(tiny_any, hidden, pair, "logit_diff")
    reference = metric(tiny_any, torch.cat([clean, corrupted]), pair, "logit_diff")
    assert (values - reference).abs().max() < TOL


def test_batched_patching_equals_one_at_a_time(tiny_any):
    pair = _pair(tiny_any)
    _, rows = sweep_rows("resid", [0, 1], pair.seq_len, int(tiny_any.cfg.n_heads))
    _, head_rows = sweep_rows("heads", [1], pair.seq_len, int(tiny_any.cfg.n_heads))
    rows = rows[::3] + head_rows  # rows across several hooks in one batch
    source = source_activations(tiny_any, pair.clean, rows)
    batched = patched_hidden(tiny_any, pair.corrupted, source, rows, pair.position, batch_size=7)
    single = patched_hidden(tiny_any, pair.corrupted, source, rows, pair.position, batch_size=1)
    assert batched.shape == (len(rows), tiny_any.d_model)
    assert (batched - single).abs().max() < TOL
    assert (batched[1:] - batched[:-1]).abs().max() > 1e-4  # rows really differ


@pytest.mark.parametrize("layer", [0, 1])
def test_residual_patch_matches_an_hf_hook(tiny_any, layer):
    """Independent check: the same patch done by a forward hook on the HF decoder layer."""
    pair = _pair(tiny_any)
    position = pair.differing[0]
    _, clean_states = _hf_logits(tiny_any, pair.clean)
    expected, _ = _hf_logits(tiny_any, pair.corrupted, (layer, position, clean_states[layer][0, position]))
    rows = [(Patch(hooknames.resid(layer), position),)]
    source = source_activations(tiny_any, pair.clean, rows)
    hidden = patched_hidden(tiny_any, pair.corrupted, source, rows, pair.position)
    assert (_full_logits(tiny_any, hidden[0]) - expected).abs().max() < 1e-4


def test_all_heads_equal_the_attention_output(tiny_any):
    pair = _pair(tiny_any)
    n_heads = int(tiny_any.cfg.n_heads)
    rows = [
        tuple(Patch(hooknames.attn_heads(1), None, head) for head in range(n_heads)),
        (Patch(hooknames.attn_out(1)),),
    ]
    source = source_activations(tiny_any, pair.clean, rows)
    hidden = patched_hidden(tiny_any, pair.corrupted, source, rows, pair.position)
    corrupted = final_hidden(tiny_any, pair.corrupted)[0, -1]
    assert (hidden[0] - hidden[1]).abs().max() < TOL
    assert (hidden[0] - corrupted).abs().max() > 1e-4  # the patch did something


def test_probe_identities_and_shapes(tiny_any):
    config = PatchingConfig(corrupted=CORRUPTED, clean_answer="5", corrupted_answer="6", batch_size=16)
    result = get_probe("activation_patching").run(tiny_any, CLEAN, config)
    n, seq = tiny_any.n_layers, len(result.tokens)
    resid = result.sweep("resid")
    assert resid.normalized.shape == (n + 1, seq) and resid.row_labels[0] == "embed"
    assert result.sweep("heads").normalized.shape == (n, int(tiny_any.cfg.n_heads))
    first = int(result.differing[0])
    scale = abs(result.clean_value - result.corrupted_value)
    # before the first differing token, clean and corrupted states are equal: no effect
    for name in ("resid", "attn", "mlp"):
        raw = result.sweep(name).raw
        assert np.abs(raw[:, :first] - result.corrupted_value).max() < TOL
    # the embeddings matter only where the tokens differ
    same = np.setdiff1d(np.arange(seq), result.differing)
    assert np.abs(resid.raw[0, same] - result.corrupted_value).max() < TOL
    # the last block's output at the answer position is the whole clean computation
    assert abs(resid.raw[-1, -1] - result.clean_value) < TOL * max(1.0, scale)
    assert result.summary()["answers"] == "'5' vs '6'"


def test_noising_embedding_patch_gives_corrupted(tiny_gemma):
    pair = _pair(tiny_gemma)
    rows = [(Patch(hooknames.resid_pre(0)),)]
    source = source_activations(tiny_gemma, pair.corrupted, rows)
    hidden = patched_hidden(tiny_gemma, pair.clean, source, rows, pair.position)
    assert (hidden[0] - final_hidden(tiny_gemma, pair.corrupted)[0, -1]).abs().max() < TOL
    config = PatchingConfig(
        corrupted=CORRUPTED, clean_answer="5", corrupted_answer="6", direction="noising", sweeps=("resid",)
    )
    result = get_probe("activation_patching").run(tiny_gemma, CLEAN, config)
    first = int(result.differing[0])
    assert np.abs(result.sweep("resid").normalized[:, :first] - 1.0).max() < 1e-3  # clean run untouched


def test_prob_metric_is_the_clean_answer_probability(tiny_gemma):
    pair = _pair(tiny_gemma)
    hidden = final_hidden(tiny_gemma, pair.clean)[:, -1]
    hf_logits, _ = _hf_logits(tiny_gemma, pair.clean)
    expected = hf_logits.double().softmax(-1)[pair.clean_answer]
    assert abs(float(metric(tiny_gemma, hidden, pair, "prob")[0]) - float(expected)) < 1e-6


def test_clear_errors(tiny_gemma):
    with pytest.raises(ValueError, match=r"same number of tokens.*has 47.*has 6"):
        resolve_pair(tiny_gemma, CLEAN, "short", "5", "6")
    with pytest.raises(ValueError, match="clean_answer 'ab' must be a single token, but it is 2 tokens"):
        resolve_pair(tiny_gemma, CLEAN, CORRUPTED, "ab", "6")
    with pytest.raises(ValueError, match="same token"):
        resolve_pair(tiny_gemma, CLEAN, CORRUPTED, "5", "5")
    probe = get_probe("activation_patching")
    with pytest.raises(ValueError, match="sweeps must be distinct values"):
        probe.run(tiny_gemma, CLEAN, PatchingConfig(corrupted=CORRUPTED, sweeps=("resid", "bogus")))
    with pytest.raises(ValueError, match="corrupted prompt is empty"):
        probe.run(tiny_gemma, CLEAN, PatchingConfig(corrupted=" "))
    with pytest.raises(ValueError, match="layer 9 out of range"):
        probe.run(tiny_gemma, CLEAN, PatchingConfig(corrupted=CORRUPTED, layers=(9,)))
    with pytest.raises(ValueError, match="same logit_diff"):
        probe.run(tiny_gemma, CLEAN, PatchingConfig(corrupted=CLEAN, clean_answer="5", corrupted_answer="6"))


def test_empty_answer_uses_that_prompts_prediction(tiny_gemma):
    pair = resolve_pair(tiny_gemma, CLEAN, CORRUPTED, "", "6")
    hf_logits, _ = _hf_logits(tiny_gemma, pair.clean)
    assert pair.clean_answer == int(hf_logits.argmax())
    assert tiny_gemma.decode_each([pair.corrupted_answer]) == ["6"]


def test_residual_cells_open_the_inspector(tiny_gemma):
    config = PatchingConfig(
        corrupted=CORRUPTED, clean_answer="5", corrupted_answer="6", sweeps=("resid", "mlp")
    )
    result = get_probe("activation_patching").run(tiny_gemma, CLEAN, config)
    cols = result.sweep("resid").col_labels
    assert result.state_at("resid", {"x": cols[3], "y": "L1"}) == (1, 3)
    assert result.state_at("resid", {"x": cols[3], "y": "embed"}) is None
    assert result.state_at("mlp", {"x": cols[3], "y": "L1"}) is None
    assert "7/8" in cols[-3]  # a differing position shows both tokens
    assert set(result.figures()) == {"resid", "mlp"}


def test_cancel_stops_the_sweep(tiny_gemma):
    from lenslab.progress import Cancelled

    def cancel(fraction, message=""):
        if fraction > 0.2:
            raise Cancelled

    config = PatchingConfig(corrupted=CORRUPTED, clean_answer="5", corrupted_answer="6", batch_size=4)
    with pytest.raises(Cancelled):
        get_probe("activation_patching").run(tiny_gemma, CLEAN, config, cancel)
    assert tiny_gemma.active_hook_count() == 0


def test_rerun_command_reads_back_the_config(tiny_gemma):
    """The report's `lenslab run` command parses back to the same config (answers keep their space)."""
    import shlex

    from lenslab.analyses.report import rerun_command
    from lenslab.cli import build_config

    config = PatchingConfig(
        corrupted=CORRUPTED,
        clean_answer="5",
        corrupted_answer=" ",
        metric="prob",
        sweeps=("mlp",),
        layers=(1,),
    )
    result = dataclasses.replace(
        get_probe("activation_patching").run(
            tiny_gemma, CLEAN, dataclasses.replace(config, corrupted_answer="6")
        ),
        config=config,
    )
    argv = shlex.split(rerun_command(result))
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    assert build_config(get_probe("activation_patching"), pairs) == config
