"""The stable rank is exact where J is built, and an estimate with an honest interval elsewhere.

Checks that the exact value equals an independent SVD's ‖J‖_F²/σ₁², that the Hutchinson interval
covers the exact value for most seeds and narrows with more probes, and that the method strings
and figure labels say what was computed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lenslab.analyses.report import Report
from lenslab.models import hooknames
from lenslab.models.tiny import tiny_session
from lenslab.probes import get_probe
from lenslab.probes.jacobian.algorithms import gram_stable_rank, jacobian
from lenslab.probes.jacobian.detached import record_coefficients, target_hook
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.probes.jacobian.probe import _stable_rank_estimate
from lenslab.probes.jacobian.result import JacobianConfig, JacobianResult

PROMPT = "the cat sat on"
LONG_PROMPT = "the cat sat on the mat and looked at the dog"  # more than full_max_tokens tokens
SAVED = Path(__file__).parents[2] / "analyses" / "data" / "report_saved_before_subpackages"


def _svd_stable_rank(session, prompt: str, target: str) -> float:
    """‖J‖_F²/σ₁² from a float64 SVD of the Jacobian built independently of the probe."""
    coefficients = record_coefficients(session, session.tokenize(prompt))
    full = jacobian(LinearizedModel(session, coefficients), coefficients.inputs, target, -1)
    values = torch.linalg.svdvals(full.reshape(full.shape[0], -1).double())
    return float(values.square().sum() / values[0].square())


@pytest.mark.parametrize("layer", [-1, 1])
def test_exact_stable_rank_equals_svd(tiny_gemma, layer):
    """Method full, and randomized with stable_rank=exact, give the SVD's ‖J‖_F²/σ₁² (float64)."""
    probe = get_probe("jacobian")
    session64 = tiny_gemma.converted(torch.float64)
    target = hooknames.FINAL_NORM if layer == -1 else target_hook(session64, layer, "resid")
    expected = _svd_stable_rank(session64, PROMPT, target)
    cases = [("full", "auto", 12), ("randomized", "exact", 12)]
    for method, stable_rank, full_max_tokens in cases:  # auto: exact where J is built anyway
        config = JacobianConfig(
            layer=layer,
            dtype="float64",
            method=method,
            stable_rank=stable_rank,
            layer_sweep=False,
            full_max_tokens=full_max_tokens,
        )
        result = probe.run(tiny_gemma, PROMPT, config)
        assert result.stable_rank == pytest.approx(expected, rel=1e-12), (method, stable_rank)
        assert result.stable_rank_method == "exact"
        assert math.isnan(result.stable_rank_low) and math.isnan(result.stable_rank_high)
        assert result.hutchinson_probes == 0
        assert result.frobenius_sq / result.singular_values[0] ** 2 == pytest.approx(expected, rel=1e-9)
        assert "(exact)" in result.summary()["stable rank"]


def test_float32_exact_stable_rank_matches_svd(tiny_gemma):
    """In float32 the exact value still agrees with a float64 SVD to float32 precision."""
    result = get_probe("jacobian").run(
        tiny_gemma, PROMPT, JacobianConfig(stable_rank="exact", layer_sweep=False)
    )
    expected = _svd_stable_rank(tiny_gemma.converted(torch.float64), PROMPT, hooknames.FINAL_NORM)
    assert result.stable_rank == pytest.approx(expected, rel=1e-4)


def test_gram_stable_rank_is_the_svd_ratio():
    """tr(JJᵀ) and λ_max(JJᵀ) are ‖J‖_F² and σ₁² of a random wide J."""
    full = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = torch.linalg.svdvals(full.reshape(6, -1))
    frob, sigma_sq = gram_stable_rank(full)
    assert frob == pytest.approx(float(values.square().sum()), rel=1e-12)
    assert sigma_sq == pytest.approx(float(values[0] ** 2), rel=1e-12)


def test_hutchinson_interval_covers_exact_and_narrows():
    """Over seeds, the 95% interval covers the exact stable rank mostly, and narrows with probes."""
    session = tiny_session("gemma3", dtype=torch.float64)
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    model = LinearizedModel(session, coefficients)
    full = jacobian(model, coefficients.inputs, hooknames.FINAL_NORM, -1)
    values = torch.linalg.svdvals(full.reshape(full.shape[0], -1))
    sigma = float(values[0])
    exact = float(values.square().sum()) / sigma**2
    seeds = range(12)
    estimates = {
        probes: [
            _stable_rank_estimate(
                model, coefficients.inputs, hooknames.FINAL_NORM, -1, sigma, 0.0, probes=probes, seed=seed
            )
            for seed in seeds
        ]
        for probes in (32, 512)
    }
    covered = sum(rank.low <= exact <= rank.high for rank, _frob, _se in estimates[32])
    assert covered >= 9, covered  # 95% nominal: 12 seeds all missing 4+ times is ~1e-3 likely
    for rank, frob, se in estimates[32]:
        assert rank.low < rank.estimate < rank.high
        assert rank.estimate == pytest.approx(frob.estimate / sigma**2)
        assert se > 0 and frob.n == 32
    width = {p: np.mean([rank.high - rank.low for rank, _, _ in estimates[p]]) for p in estimates}
    assert width[512] < 0.4 * width[32]  # ~ 1/√16 = 0.25 in expectation
    assert np.mean([abs(r.estimate - exact) for r, _, _ in estimates[512]]) < 0.1 * exact


def test_hutchinson_interval_widens_for_the_sigma_error():
    """An uncertain σ_max (Ritz value, a lower bound) lowers only the interval's low end."""
    session = tiny_session("gemma3", dtype=torch.float64)
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    model = LinearizedModel(session, coefficients)
    exact_sigma = _stable_rank_estimate(model, coefficients.inputs, hooknames.FINAL_NORM, -1, 1.0, 0.0)
    loose_sigma = _stable_rank_estimate(model, coefficients.inputs, hooknames.FINAL_NORM, -1, 1.0, 0.1)
    assert loose_sigma[0].high == exact_sigma[0].high
    assert loose_sigma[0].low == pytest.approx(exact_sigma[0].low / 1.1**2)


def test_estimate_method_strings_and_labels(tiny_gemma):
    """The matrix-free default on a long prompt says Hutchinson, shows its interval, and labels σ_max ≥."""
    result = get_probe("jacobian").run(tiny_gemma, LONG_PROMPT, JacobianConfig())
    assert len(result.tokens) > result.config.full_max_tokens
    assert result.stable_rank_method == "Hutchinson, 64 probes" and result.hutchinson_probes == 64
    assert result.stable_rank_low < result.stable_rank < result.stable_rank_high
    assert result.frobenius_sq_low < result.frobenius_sq < result.frobenius_sq_high
    assert result.frobenius_sq_se > 0
    assert result.stable_rank == pytest.approx(result.frobenius_sq / result.singular_values[0] ** 2, rel=1e-6)
    line = result.summary()["stable rank"]
    assert line.startswith("≈ ") and "[" in line and line.endswith("(Hutchinson, 64 probes)")
    figures = result.figures()
    assert line in figures["spectrum"].layout.title.text
    sweep = figures["sweep"]
    assert "2 power-iteration steps" in result.sweep_sigma_method
    assert "Hutchinson, 64 probes" in result.sweep_stable_rank_method
    assert "≥" in sweep.layout.title.text and "σ_max ≥" in sweep.data[0].hovertemplate
    ci = result.sweep_stable_rank_ci
    assert ci.shape == (tiny_gemma.n_layers, 2)
    assert np.all(ci[:, 0] < result.sweep_stable_rank) and np.all(result.sweep_stable_rank < ci[:, 1])
    estimate = get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(stable_rank="estimate"))
    assert estimate.stable_rank_method == "Hutchinson, 64 probes"  # short prompt, but asked for


def test_layer_target_figures_do_not_say_logit(tiny_gemma):
    """A layer target's figures name what y is and never call W_U[pred]·y a logit."""
    for layer, component, words in [(1, "resid", "residual stream after block 1"), (0, "mlp", "MLP output")]:
        config = JacobianConfig(layer=layer, component=component, layer_sweep=True)
        result = get_probe("jacobian").run(tiny_gemma, PROMPT, config)
        assert result.target_description == f"{words}{'' if layer == 1 else ' of block 0'} (no final norm)"
        texts = _figure_texts(result)
        assert not [t for t in texts if "logit" in t.lower()], texts
        assert any(words in t for t in texts)
    final = get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(layer_sweep=False))
    assert "logit" in final.figures()["contributions"].layout.title.text


def test_inspector_lines_carry_the_method(tiny_gemma):
    """The inspector's describe lines show the stable rank with its method, and the target."""
    from lenslab.probes.inspector import StateRef
    from lenslab.probes.jacobian.probe import _jacobian_describe, _jacobian_view

    ref = StateRef(PROMPT, 1, 2)
    result = _jacobian_view(tiny_gemma, ref, lambda *_: None)
    lines = _jacobian_describe(result, ref)
    assert "residual stream after block 1 (no final norm)" in lines[0]
    assert f"stable rank {result.stable_rank_text()}" in lines[-1]
    assert "(exact)" in lines[-1] or "Hutchinson, 64 probes" in lines[-1]


def test_old_report_infers_the_method():
    """A report saved before these fields loads with the method its algorithm used (no interval)."""
    (result,) = [r for r in Report.load(SAVED).results if r.probe == "jacobian"]
    assert isinstance(result, JacobianResult) and result.method == "randomized"
    assert result.stable_rank_method == "Hutchinson, 64 probes"
    assert "no interval saved" in result.summary()["stable rank"]
    assert result.sweep_stable_rank_ci is None
    assert result.figures()


def _figure_texts(result: JacobianResult) -> list[str]:
    """Every title, axis title and hover template of the result's figures."""
    texts = []
    for fig in result.figures().values():
        layout = fig.layout
        texts += [layout.title.text or "", layout.xaxis.title.text or "", layout.yaxis.title.text or ""]
        for trace in fig.data:
            texts.append(getattr(trace, "hovertemplate", None) or "")
    return texts
