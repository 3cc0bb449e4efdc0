"""The J-lens probe on a tiny model: grids, J-gap identities, and the evaluation table."""

import numpy as np
import pytest
import torch

from lenslab.probes import get_probe
from lenslab.probes.jacobian_lens.artefacts import JacobianLens
from lenslab.probes.jacobian_lens.evaluation import evaluate_agreement
from lenslab.probes.jacobian_lens.fit import FitSpec, fit_shard
from lenslab.probes.jacobian_lens.probe import JacobianLensConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Lists are mutable sequences, typically used to store collections.",
    "A dictionary maps hashable keys to arbitrary values in Python.",
]


def test_probe_refuses_without_lens_then_reads_a_saved_one(tiny_gemma, lenslab_home):
    probe = get_probe("jacobian_lens")
    with pytest.raises(FileNotFoundError, match="Fit"):
        probe.run(tiny_gemma, "Hello world, again", JacobianLensConfig())
    state = fit_shard(tiny_gemma, [0, 1], FitSpec(seq_len=12, skip_first=3, dim_batch=16), texts=TEXTS)
    JacobianLens.from_state(state).save()
    last = tiny_gemma.n_layers - 1
    result = probe.run(tiny_gemma, "Hello world, again", JacobianLensConfig(k=3, gap_layer=last))
    # J̄ of the last layer is the identity, so the J-lens equals the logit lens there...
    assert np.array_equal(result.jlens_ids[last], result.logit_ids[last])
    # ...and the last layer's instance Jacobian is the identity too: no gap.
    assert result.gap_rel_frobenius == pytest.approx([0.0, 0.0], abs=1e-6)
    assert result.gap_top1_agree.tolist() == [1, 1]
    assert "2 prompts" in result.lens and set(result.figures()) == {"jlens_grid", "logit_grid", "convergence"}


def test_gap_is_zero_when_the_mean_is_the_instance(tiny_gemma, lenslab_home):
    """A lens fitted on the probed prompt's own single position equals its summed instance term."""
    prompt = TEXTS[2][:10]
    tokens = tiny_gemma.tokenize(prompt)
    seq = tokens.shape[1]
    # one valid position (seq − 2) only: J̄ = that position's summed term (targets p' ∈ {seq − 2})
    spec = FitSpec(seq_len=seq, skip_first=seq - 2, dim_batch=16)
    state = fit_shard(tiny_gemma, [0], spec, texts=[prompt])
    JacobianLens.from_state(state).save()
    config = JacobianLensConfig(k=3, gap_layer=0, gap_position=seq - 2)
    result = get_probe("jacobian_lens").run(tiny_gemma, prompt, config)
    # summed term at t = seq−2 includes the last target p' = seq−1, which the fit excludes,
    # so only the same-position Jacobian (targets {t}) is the fitted one
    assert result.gap_rel_frobenius[0] == pytest.approx(0.0, abs=1e-5)
    assert result.gap_rel_frobenius[1] > 1e-4


def test_grids_equal_each_cell_decoded_alone(tiny_gemma, lenslab_home, monkeypatch):
    """The batched decode (rows split across products) gives each cell's own top-k: J̄_l h and h."""
    from lenslab.probes.jacobian_lens import probe as module

    monkeypatch.setattr(module, "DECODE_ROWS", 7)  # several products, rows of a layer split
    d, n = tiny_gemma.d_model, tiny_gemma.n_layers
    jac = torch.randn(n, d, d, generator=torch.Generator().manual_seed(0)) / d**0.5
    JacobianLens(tiny_gemma.model_id, jac, np.zeros(0), {"n_prompts": 0}).save()
    prompt = TEXTS[1]
    config = JacobianLensConfig(k=4, layers=(n - 1, 0), gap=False)
    result = get_probe("jacobian_lens").run(tiny_gemma, prompt, config)
    tokens = tiny_gemma.tokenize(prompt)
    assert result.layers.tolist() == [0, n - 1]
    names = [tiny_gemma.resid_name(layer) for layer in result.layers.tolist()]
    captured = tiny_gemma.capture(tokens, names)
    for i, (layer, name) in enumerate(zip(result.layers.tolist(), names, strict=True)):
        for pos in range(tokens.shape[1]):
            h = captured[name][0, pos]
            for ids, probs, row in (
                (result.jlens_ids, result.jlens_probs, jac[layer] @ h),
                (result.logit_ids, result.logit_probs, h),
            ):
                top = tiny_gemma.decode_resid(row).float().softmax(-1).topk(config.k)
                assert ids[i, pos].tolist() == top.indices.tolist()
                np.testing.assert_allclose(probs[i, pos], top.values.numpy(), rtol=1e-5, atol=1e-7)


def test_evaluation_identity_lens_equals_logit_lens(tiny_gemma):
    d, n = tiny_gemma.d_model, tiny_gemma.n_layers
    eye = JacobianLens("tiny", torch.eye(d).repeat(n, 1, 1), np.zeros(0), {"n_prompts": 0})
    agreement = evaluate_agreement(tiny_gemma, eye, [0, 1, 2], TEXTS, seq_len=20, skip_first=4)
    assert np.array_equal(agreement.rate[0], agreement.rate[1])
    assert agreement.rate[0, -1] == 1.0  # the last layer's readout is the model's own prediction
    assert agreement.n_documents == 3 and agreement.n_positions == 3 * 15
    assert (agreement.ci[..., 0] <= agreement.rate + 1e-12).all()
    assert "| 0 |" in agreement.table_markdown()


def test_prepare_fits_a_fixed_prompt_count_whatever_prompts_cost(tiny_gemma, lenslab_home, monkeypatch):
    """The prepared lens is the same however long prompts take (a time budget would cut it short)."""
    import importlib
    import itertools
    import types

    from lenslab.probes.jacobian_lens import PREPARE_PROMPTS, lens_path, prepare_default_artefacts

    fitting = importlib.import_module("lenslab.probes.jacobian_lens.fit")  # the module, not fit()

    assert PREPARE_PROMPTS >= 2  # else a budget that always fits one prompt could not be told apart
    slow = itertools.count(0.0, 1000.0)  # every clock reading 1000 s after the last: a loaded machine
    with monkeypatch.context() as patch:
        patch.setattr(fitting, "time", types.SimpleNamespace(perf_counter=lambda: next(slow)))
        first = prepare_default_artefacts(tiny_gemma)
    assert first["n_prompts"] == PREPARE_PROMPTS
    slow_lens = JacobianLens.load(tiny_gemma)
    lens_path(tiny_gemma.model_id).unlink()
    assert prepare_default_artefacts(tiny_gemma)["n_prompts"] == PREPARE_PROMPTS
    lens = JacobianLens.load(tiny_gemma)
    assert torch.equal(lens.jacobians, slow_lens.jacobians)  # deterministic: same documents, same sums
    assert lens.provenance["documents"] == slow_lens.provenance["documents"]
    assert any(f"{PREPARE_PROMPTS} prompts" in d for d in lens.provenance["deviations"])
    assert lens.provenance["seq_len"] == 16 and lens.provenance["skip_first"] == 4
    stamp = lens_path(tiny_gemma.model_id).stat().st_mtime_ns
    assert prepare_default_artefacts(tiny_gemma)["n_prompts"] == PREPARE_PROMPTS  # kept, not refitted
    assert lens_path(tiny_gemma.model_id).stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"seq_len": 2}, "seq_len"), ({"skip_first": 15}, "skip_first"), ({"min_prompts": 0}, "min_prompts")],
)
def test_fit_spec_rejects_bad_values(changes, field):
    with pytest.raises(ValueError, match=field):
        FitSpec(**{"seq_len": 16, "skip_first": 4, **changes}).validate()


def test_inspector_view_reads_the_state_and_leaves_the_gap_to_the_page(tiny_gemma, lenslab_home):
    """The inspector's J-lens answer skips the J-gap (2 × d_model backward rows) and says where it is."""
    from lenslab.probes.inspector import StateRef, state_views

    state = fit_shard(tiny_gemma, [0, 1], FitSpec(seq_len=12, skip_first=3, dim_batch=16), texts=TEXTS)
    JacobianLens.from_state(state).save()
    view = next(v for v in state_views() if v.name == "jacobian_lens")
    ref = StateRef("Hello world, again", 1, 4).resolve(tiny_gemma)
    result = view.compute(tiny_gemma, ref, lambda *_: None)
    direct = get_probe("jacobian_lens").run(tiny_gemma, ref.prompt, JacobianLensConfig(k=10, layers=(1,)))
    assert result.gap_layer == -1
    assert result.jlens_tokens == direct.jlens_tokens  # the same read-out as the page's
    lines = view.describe(result, ref)
    assert any("gap layer 1 and gap position 4" in line for line in lines)


def test_summary_agreement_is_the_cell_share_with_an_interval_over_positions(tiny_gemma, lenslab_home):
    """The summary's rate equals a hand count of cells; its interval resamples whole positions."""
    d, n = tiny_gemma.d_model, tiny_gemma.n_layers
    jac = torch.randn(n, d, d, generator=torch.Generator().manual_seed(1)) / d**0.5
    JacobianLens(tiny_gemma.model_id, jac, np.zeros(0), {"n_prompts": 0}).save()
    result = get_probe("jacobian_lens").run(tiny_gemma, TEXTS[0], JacobianLensConfig(k=3, gap=False))
    n_layers, n_pos = result.logit_ids.shape[:2]
    hand = sum(
        int(result.logit_ids[i, p, 0] == result.final_ids[p]) for i in range(n_layers) for p in range(n_pos)
    )
    rate = result.agreement(result.logit_ids)
    assert rate.estimate == pytest.approx(hand / (n_layers * n_pos))
    assert rate.n == n_pos and rate.method == "bootstrap over positions"
    assert rate.low <= rate.estimate <= rate.high
    text = result.summary()["logit lens top-1 = final prediction (all cells of this prompt)"]
    assert f"of {n_layers * n_pos} cells" in text and f"n = {n_pos}" in text
    assert rate.text(percent=True) in text
