"""Patch lens on tiny models: causality structure, self-patch identity, the patched cell's decode."""

import numpy as np
import torch

from lenslab.probes import LogitLens, LogitLensConfig, get_probe
from lenslab.probes.inspector import StateRef, inspect_state
from lenslab.probes.patching import PatchLensConfig

SOURCE = "the cat sat on the mat"


def test_self_patch_changes_nothing(tiny_any):
    config = PatchLensConfig(layer=0, position=4, target=SOURCE, target_position=4, k=3)
    result = get_probe("patch_lens").run(tiny_any, SOURCE, config)
    assert np.array_equal(result.top_ids[0], result.top_ids[1])
    assert np.array_equal(result.tracked_prob[0], result.tracked_prob[1])
    assert np.abs(result.delta).max() == 0.0


def test_patch_only_changes_later_layers_and_positions(tiny_any):
    target = "hello there, world"
    config = PatchLensConfig(layer=1, position=3, target=target, target_layer=0, target_position=5, k=3)
    result = get_probe("patch_lens").run(tiny_any, SOURCE, config)
    before, after = result.top_probs
    # earlier positions never see the patch; every position at or after it may
    assert np.array_equal(before[:, :5], after[:, :5])
    assert not np.array_equal(before[:, 5], after[:, 5])
    # the patched cell decodes exactly as the source state does under the logit lens
    lens = LogitLens().run(tiny_any, SOURCE, LogitLensConfig(k=3, layers=(1,)))
    np.testing.assert_allclose(after[0, 5], lens.top_probs[0, 3], rtol=1e-6)
    assert np.array_equal(result.top_ids[1, 0, 5], lens.top_ids[0, 3])
    assert result.summary()["patched"] == "source L1 pos 3 → target L0 pos 5"
    assert set(result.figures()) == {"before", "after", "delta"}


def test_inspector_view_runs_on_the_identity_prompt(tiny_gemma):
    outcome = next(o for o in inspect_state(tiny_gemma, StateRef(SOURCE, 1, 2)) if o.view == "patch_lens")
    assert outcome.error is None
    assert outcome.result.layer == outcome.result.target_layer == 1
    assert "next token" in outcome.lines[0]
    assert tiny_gemma.active_hook_count() == 0


def test_the_batched_decode_equals_a_softmax_per_layer(tiny_any):
    """Top-k, prediction and tracked probability match a full softmax of each layer's lens, run by run."""
    target = "hello there, world"
    config = PatchLensConfig(layer=1, position=3, target=target, target_layer=0, target_position=5, k=4)
    result = get_probe("patch_lens").run(tiny_any, SOURCE, config)
    session = tiny_any
    names = [session.resid_name(layer) for layer in range(session.n_layers)]
    source = session.tokenize(SOURCE)
    state = session.capture(source, [names[1]])[names[1]][0, 3]

    def put(activation, *, hook):
        patched = activation.clone()
        patched[:, 5] = state
        return patched

    tokens = session.tokenize(target)
    runs = [session.capture(tokens, names), session.capture(tokens, names, hooks=[(names[0], put)])]
    with torch.no_grad():
        probs = [
            torch.stack([session.decode_resid(run[name][0]).float().softmax(-1) for name in names])
            for run in runs
        ]
    track = probs[0][-1].argmax(-1)
    for r, p in enumerate(probs):
        values, ids = p.topk(4, dim=-1)
        assert np.array_equal(result.top_ids[r], ids.numpy())
        np.testing.assert_allclose(result.top_probs[r], values.numpy(), rtol=1e-5, atol=1e-7)
        assert np.array_equal(result.final_ids[r], p[-1].argmax(-1).numpy())
        tracked = p.gather(-1, track.expand(p.shape[0], -1)[..., None])[..., 0]
        np.testing.assert_allclose(result.tracked_prob[r], tracked.numpy(), rtol=1e-5, atol=1e-7)
