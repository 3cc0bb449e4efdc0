"""Detached-Jacobian probe and its algorithms: exactness on tiny models, an analytic case, the probe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.models.tiny import tiny_session
from lenslab.probes import get_probe
from lenslab.probes.jacobian.algorithms import (
    contributions,
    hutchinson_samples,
    jacobian,
    krylov_block,
    krylov_schedule,
    krylov_svd,
    layer_sweep,
)
from lenslab.probes.jacobian.detached import record_coefficients, target_hook
from lenslab.probes.jacobian.operator import LinearizedModel
from lenslab.probes.jacobian.result import JacobianConfig, JacobianResult
from lenslab.progress import Cancelled

PROMPT = "the cat sat on"


@pytest.fixture(params=["gemma3", "llama", "gpt2"])
def linear64(request):
    """(session, coefficients, operator) for a float64 tiny model of each family."""
    session = tiny_session(request.param, dtype=torch.float64)
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    return session, coefficients, LinearizedModel(session, coefficients)


def test_sum_of_jacobian_terms_reproduces_y(linear64):
    """Σ_i J_i x_i (+ b) = y to 1e-10 in float64, for the final state and layer parts."""
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    for target in [hooknames.FINAL_NORM, target_hook(session, 0, "attn"), target_hook(session, 1, "mlp")]:
        for position in (-1, 2):
            full = jacobian(model, inputs, target, position, chunk=11)
            bias = model(torch.zeros_like(inputs), (target,))[target][0, position]
            y = coefficients.outputs[target][0, position]
            linear = torch.einsum("osi,si->o", full, inputs[0]) + bias
            assert (linear - y).norm() / y.norm() < 1e-10


def test_adjoint_equals_autograd(linear64):
    """The explicit adjoint equals torch.func.vjp rows and autograd's Jacobian."""
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    target = target_hook(session, 1, "resid")
    fn = model.target_fn(target, -1)
    reference = torch.autograd.functional.jacobian(lambda x: fn(x[None])[0], inputs[0], vectorize=True)
    assert torch.allclose(jacobian(model, inputs, target, -1), reference, atol=1e-12, rtol=0)
    cotangents = torch.randn(5, session.d_model, dtype=torch.float64)
    rows = model.adjoint(cotangents, target, coefficients.seq_len - 1)
    _, vjp_fn = torch.func.vjp(lambda x: fn(x[None])[0], inputs[0])
    assert torch.allclose(rows, torch.func.vmap(vjp_fn)(cotangents)[0], atol=1e-12, rtol=0)
    several = model.adjoint_layers(cotangents[:2], [0, 1], coefficients.seq_len - 1)
    assert torch.allclose(several[1], rows[1], atol=1e-12, rtol=0)


def test_contributions_match_jacobian(linear64):
    """The batched one-token forwards give J_i x_i for every layer and position."""
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    targets = [hooknames.FINAL_NORM, target_hook(session, 0, "resid")]
    contrib, bias = contributions(model, inputs, targets, chunk=3)
    for target in targets:
        for position in (1, coefficients.seq_len - 1):
            full = jacobian(model, inputs, target, position)
            expected = torch.einsum("osi,si->so", full, inputs[0])
            assert torch.allclose(contrib[target][:, position], expected, atol=1e-10)
            total = contrib[target][:, position].sum(0) + bias[target][position]
            assert torch.allclose(total, coefficients.outputs[target][0, position], atol=1e-10)


def test_krylov_svd_matches_exact(linear64):
    """Lanczos SVD of J, of J at an earlier position and of one J_i equals the exact singular values."""
    _session, coefficients, model = linear64
    inputs = coefficients.inputs
    for position in (-1, 2):
        full = jacobian(model, inputs, hooknames.FINAL_NORM, position)
        exact = torch.linalg.svdvals(full.reshape(full.shape[0], -1))
        top = krylov_svd(model, inputs, hooknames.FINAL_NORM, position, rank=4, block=3, tol=1e-12)
        assert top.converged
        assert torch.allclose(top.s, exact[:4], rtol=1e-8)
        assert torch.allclose(top.vh @ top.vh.T, torch.eye(4, dtype=torch.float64), atol=1e-10)
        # right vectors live on the full sequence (zero after the target position) and are J's
        flat = full.reshape(full.shape[0], -1)
        assert torch.allclose(top.vh @ flat.T @ top.u, torch.diag(top.s), atol=1e-8)
    full = jacobian(model, inputs, hooknames.FINAL_NORM, -1)
    for token in (0, coefficients.seq_len - 1):
        exact_token = torch.linalg.svdvals(full[:, token])
        top = krylov_svd(model, inputs, hooknames.FINAL_NORM, -1, rank=3, block=4, tol=1e-12, token=token)
        assert torch.allclose(top.s, exact_token[:3], rtol=1e-8)


def test_krylov_svd_stops_within_tolerance(linear64):
    """With a loose tolerance it stops early, and its error estimate bounds the real error."""
    _session, coefficients, model = linear64
    inputs = coefficients.inputs
    full = jacobian(model, inputs, hooknames.FINAL_NORM, -1)
    exact = torch.linalg.svdvals(full.reshape(full.shape[0], -1))
    loose = krylov_svd(model, inputs, hooknames.FINAL_NORM, -1, rank=4, block=2, tol=1e-3)
    tight = krylov_svd(model, inputs, hooknames.FINAL_NORM, -1, rank=4, block=2, tol=1e-12)
    assert loose.converged and loose.error_estimate <= 1e-3
    assert loose.products < tight.products
    assert float(((loose.s - exact[:4]).abs() / exact[:4]).max()) < 1e-3
    with pytest.raises(ValueError, match="at or before"):
        krylov_svd(model, inputs, hooknames.FINAL_NORM, 1, token=3)


def test_krylov_svd_is_scale_free(linear64):
    """Scaling J by 1e-4 scales the singular values and changes nothing else (same stopping point).

    Guards the stopping rule against mixing absolute and relative residuals: per-token J_i of the
    embedded model have σ ≈ 0.03, the stacked J σ ≈ 10.
    """
    _session, coefficients, model = linear64
    inputs = coefficients.inputs
    scaled = model.window(0, coefficients.seq_len)
    scaled.final_norm = dataclasses.replace(scaled.final_norm, factor=scaled.final_norm.factor * 1e-4)
    plain = krylov_svd(model, inputs, hooknames.FINAL_NORM, -1, rank=4, block=2, tol=1e-3)
    small = krylov_svd(scaled, inputs, hooknames.FINAL_NORM, -1, rank=4, block=2, tol=1e-3)
    assert small.products == plain.products
    assert small.error_estimate == pytest.approx(plain.error_estimate, rel=1e-6)
    assert torch.allclose(small.s, plain.s * 1e-4, rtol=1e-9)


def test_default_block_converges_and_its_passes_follow_the_schedule(linear64):
    """With the default (wide) block the top singular values still match a dense SVD within the
    tolerance, and the sequential passes it made are exactly what ``krylov_schedule`` derives from
    its product count, which the page benchmark's floor replays; the schedule rejects counts that
    no block structure explains."""
    _session, coefficients, model = linear64
    inputs = coefficients.inputs
    for position in (-1, 1):
        full = jacobian(model, inputs, hooknames.FINAL_NORM, position)
        exact = torch.linalg.svdvals(full.reshape(full.shape[0], -1))
        width = position % coefficients.seq_len + 1
        top = krylov_svd(model, inputs, hooknames.FINAL_NORM, position, rank=4, tol=1e-3)
        assert float(((top.s - exact[:4]).abs() / exact[:4]).max()) < 1e-3
        block = min(krylov_block(width), full.shape[0], width * inputs.shape[-1])
        assert top.passes[0] == ("adjoint", block)
        assert top.passes == krylov_schedule(top.products, block)
    for block in (2, 3):  # narrow blocks: several Lanczos steps
        top = krylov_svd(model, inputs, hooknames.FINAL_NORM, -1, rank=4, block=block, tol=1e-6)
        assert len(top.passes) > 3
        assert top.passes == krylov_schedule(top.products, block)
    with pytest.raises(ValueError, match="do not fit"):
        krylov_schedule(3 * 2 + 1, 2)
    with pytest.raises(ValueError, match="cannot start"):
        krylov_schedule(1, 2)


def test_krylov_block_shrinks_with_the_window():
    """Wider windows get narrower blocks (about a fixed number of GEMM rows), within [12, 32]."""
    sizes = [krylov_block(width) for width in (1, 4, 8, 16, 32, 64, 512)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == 32 and sizes[-1] == 12


def test_layer_sweep_extra_targets_are_hutchinson_samples(linear64):
    """A target riding along in the sweep's sketch gets exactly the samples of its own Hutchinson
    forward (same probes, same seed), for the final norm and a layer target."""
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    extra = [hooknames.FINAL_NORM, target_hook(session, 0, "mlp")]
    sweep = layer_sweep(model, inputs, -1, probes=16, rounds=1, extra=extra)
    alone = hutchinson_samples(model, inputs, extra, -1, 16)
    for name in extra:
        assert torch.allclose(sweep.extra_samples[name], alone[name], rtol=1e-12, atol=0)
    assert torch.allclose(
        sweep.frobenius_samples[0],
        hutchinson_samples(model, inputs, [hooknames.resid(0)], -1, 16)[hooknames.resid(0)],
        rtol=1e-12,
        atol=0,
    )


def test_sweep_decode_matches_one_layer_at_a_time(tiny_gemma):
    """The sweep's batched decode gives each layer the tokens of its own sign-aligned decode."""
    from lenslab.probes.jacobian.probe import _decode_layers, _decode_left

    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(tiny_gemma.n_layers, tiny_gemma.d_model, generator=generator)
    y = torch.randn(tiny_gemma.n_layers, tiny_gemma.d_model, generator=generator)
    batched = _decode_layers(tiny_gemma, vectors, y, 5)
    for layer in range(tiny_gemma.n_layers):
        name = hooknames.resid(layer)
        assert batched[layer] == _decode_left(tiny_gemma, vectors[layer][:, None], y[layer], name, 5)[0][0]
    assert _decode_layers(tiny_gemma, -vectors, y, 5) == batched  # the sign follows y


def test_window_is_exact(linear64):
    """The operator on a window of positions gives the same target values and transpose rows."""
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    target = target_hook(session, 1, "mlp")
    full = jacobian(model, inputs, target, 2)
    windowed = jacobian(model.window(0, 3), inputs[:, :3], target, 2)
    assert torch.allclose(windowed, full[:, :3], atol=1e-12, rtol=0)
    assert float(full[:, 3:].abs().max()) == 0.0  # causal: later tokens do not reach position 2
    with pytest.raises(ValueError, match="outside"):
        model.window(2, 99)


def test_layer_sweep_estimates(linear64):
    """The sweep's σ_max is a lower bound within 15% of the exact one; ‖J‖_F² within 50%.

    Tiny random models have flat spectra (σ₁ ≈ σ₂), the worst case for power iteration.
    """
    session, coefficients, model = linear64
    inputs = coefficients.inputs
    sweep = layer_sweep(model, inputs, -1, probes=256, rounds=6)
    frob, sigma, left = sweep.frobenius, sweep.sigma_max, sweep.left
    assert sweep.frobenius_samples.shape == (session.n_layers, 256) and sweep.power_steps == 6
    for layer in range(session.n_layers):
        full = jacobian(model, inputs, hooknames.resid(layer), -1).reshape(session.d_model, -1)
        exact = torch.linalg.svdvals(full)
        ratio = float(sigma[layer] / exact[0])
        assert 0.85 < ratio < 1 + 1e-9
        assert abs(float(frob[layer] / exact.square().sum()) - 1) < 0.5
        assert float(left[layer].norm()) == pytest.approx(1.0)


def test_analytic_one_layer_linear_model():
    """A model whose only block is linear (pattern, gate, norm frozen) has the hand-computed Jacobian.

    One Llama layer with identity-like pieces: with the recorded coefficients the Jacobian of the
    block's attention output at the last position w.r.t. x_i is W_O · P[last, i] · W_V · diag(g/s_i),
    where s_i is the norm scale of token i and g the norm weight. We build it from the weights and
    compare with the probe's machinery.
    """
    session = tiny_session("llama", dtype=torch.float64, n_layers=1)
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    model = LinearizedModel(session, coefficients)
    target = target_hook(session, 0, "attn")
    full = jacobian(model, coefficients.inputs, target, -1)
    layer = model.layers[0]
    pattern = coefficients.patterns[hooknames.attn_pattern(0)][0]  # [heads, seq, seq]
    heads, d_head = pattern.shape[0], layer.d_head
    n_kv = layer.w_v.shape[0] // d_head
    expected = torch.zeros_like(full)
    for i in range(coefficients.seq_len):
        norm_i = torch.diag(layer.ln1.factor[i])
        for head in range(heads):
            kv = head // (heads // n_kv)
            w_v = layer.w_v[kv * d_head : (kv + 1) * d_head]
            w_o = layer.w_o[:, head * d_head : (head + 1) * d_head]
            expected[:, i] += pattern[head, -1, i] * (w_o @ w_v @ norm_i)
    assert torch.allclose(full, expected, atol=1e-12)


def test_probe_contributions_sum_to_logit(tiny_any):
    """Per-token logit contributions plus the bias add up to the predicted token's logit."""
    session = tiny_any
    result = get_probe("jacobian").run(session, PROMPT, JacobianConfig(method="full", n_components=3))
    assert result.reconstruction_error < 1e-5
    assert result.detach_error < 1e-5
    total = result.contribution_logit.sum() + result.bias_logit
    assert total == pytest.approx(result.target_logit, rel=1e-4, abs=1e-4)
    # The target logit is the model's own (the unembedding of the real final state; no bias here).
    logits = session.run(PROMPT).logits[0, -1]
    unembed_bias = 0.0
    bias = getattr(session.output_embedding(), "bias", None)
    if bias is not None:
        unembed_bias = float(bias[result.predicted_id].detach())
    assert result.target_logit + unembed_bias == pytest.approx(float(logits[result.predicted_id]), rel=1e-4)
    assert result.predicted_id == int(logits.argmax())
    assert session.active_hook_count() == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probe_reconstruction_targets(tiny_gemma, dtype):
    """Reconstruction error < 1e-5 (float32) / < 1e-12 (float64) for every target kind."""
    bound = 1e-5 if dtype == "float32" else 1e-12
    probe = get_probe("jacobian")
    for layer, component in [(-1, "resid"), (0, "attn"), (1, "mlp"), (1, "resid")]:
        config = JacobianConfig(
            layer=layer, component=component, dtype=dtype, method="full", layer_sweep=False
        )
        result = probe.run(tiny_gemma, PROMPT, config)
        assert result.reconstruction_error < bound, (layer, component)
        assert result.dtype == dtype


def test_probe_result_round_trip_and_figures(tiny_gemma):
    """The result saves losslessly and draws all its figures; the stable rank is ≥ 1."""
    result = get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(method="full"))
    again = JacobianResult.from_dict(result.to_dict())
    assert again.tokens == result.tokens and again.config == result.config
    np.testing.assert_array_equal(again.singular_values, result.singular_values)
    assert set(result.figures()) == {
        "contributions",
        "spectrum",
        "singular_vectors",
        "sweep",
        "contribution_heatmap",
    }
    assert result.stable_rank >= 1.0
    assert np.all(result.token_stable_rank >= 0)
    assert result.token_singular_values.shape[0] == len(result.tokens)
    assert len(result.left_tokens) == result.config.n_components
    assert result.sweep_contribution.shape == (tiny_gemma.n_layers, len(result.tokens))
    randomized = get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(method="randomized"))
    assert randomized.singular_values[0] == pytest.approx(result.singular_values[0], rel=1e-3)


def test_probe_input_validation(tiny_gemma):
    """Too-long prompts, bad positions/layers and the float64-on-GPU combination are refused."""
    probe = get_probe("jacobian")
    with pytest.raises(ValueError, match="capped at 4 tokens"):
        probe.run(tiny_gemma, PROMPT, JacobianConfig(max_tokens=4))
    with pytest.raises(ValueError, match="position 99 out of range"):
        probe.run(tiny_gemma, PROMPT, JacobianConfig(position=99))
    with pytest.raises(ValueError, match="out of range"):
        probe.run(tiny_gemma, PROMPT, JacobianConfig(layer=5))
    with pytest.raises(ValueError, match="no attention/MLP part"):
        probe.run(tiny_gemma, PROMPT, JacobianConfig(component="mlp"))
    with pytest.raises(ValueError, match="must be one of"):
        probe.run(tiny_gemma, PROMPT, JacobianConfig(dtype="float16"))


def test_probe_cancel_leaves_model_clean(tiny_gemma):
    """Cancelling through the progress callback stops the run and leaves no hooks."""

    def cancel(fraction: float, message: str = "") -> None:
        if fraction > 0.3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(method="full"), cancel)
    assert tiny_gemma.active_hook_count() == 0


@pytest.mark.slow
def test_embedded_float32_reconstruction(embedded_session):
    """On Gemma 3 270M the float32 reconstruction error is < 1e-5 on several prompts."""
    result = get_probe("jacobian").run(
        embedded_session,
        "The Eiffel Tower is located in the city of",
        JacobianConfig(n_components=2, layer_sweep=False),
    )
    assert result.reconstruction_error < 1e-5
    assert result.detach_error < 1e-5
    assert result.predicted_token == " Paris"
    total = result.contribution_logit.sum() + result.bias_logit
    assert total == pytest.approx(result.target_logit, rel=1e-4)
    for prompt in ["1, 2, 3, 4,", "def add(a, b):\n    return"]:
        coefficients = record_coefficients(embedded_session, embedded_session.tokenize(prompt))
        model = LinearizedModel(embedded_session, coefficients)
        targets = [hooknames.FINAL_NORM, target_hook(embedded_session, 8, "mlp")]
        contrib, _ = contributions(model, coefficients.inputs, targets)
        for target in targets:
            y = coefficients.outputs[target][0]
            error = (contrib[target].sum(0) - y).norm(dim=-1) / y.norm(dim=-1)
            assert float(error.max()) < 1e-5, (prompt, target)
    assert embedded_session.active_hook_count() == 0


@pytest.mark.slow
def test_embedded_default_svd_matches_dense(embedded_session):
    """On Gemma 3 270M the page's default run (wide Lanczos blocks) gives singular values within the
    1e-3 tolerance of a dense SVD of the built J, and the target's Hutchinson samples taken from the
    layer sweep's sketch give the same ‖J‖_F² interval as their own forward."""
    prompt = "The Eiffel Tower is located in the city of"
    result = get_probe("jacobian").run(embedded_session, prompt, JacobianConfig())
    coefficients = record_coefficients(embedded_session, embedded_session.tokenize(prompt))
    model = LinearizedModel(embedded_session, coefficients)
    full = jacobian(model, coefficients.inputs, hooknames.FINAL_NORM, -1)
    exact = torch.linalg.svdvals(full.reshape(full.shape[0], -1).double()).numpy()
    k = len(result.singular_values)
    assert np.abs(result.singular_values - exact[:k]).max() / exact[k - 1] < 1e-3
    assert result.svd_error_estimate <= 1e-3
    assert result.frobenius_sq_low < float(np.square(exact).sum()) < result.frobenius_sq_high
    assert embedded_session.active_hook_count() == 0


def test_fused_mlp_adjoint_matches(linear64, monkeypatch):
    """The per-position fused MLP transpose (used for many rows) equals the unfused one."""
    import lenslab.probes.jacobian.operator as operator

    session, coefficients, model = linear64
    for target in (target_hook(session, 1, "resid"), hooknames.FINAL_NORM):
        monkeypatch.setattr(operator, "FUSE_MARGIN", float("inf"))
        plain = jacobian(model, coefficients.inputs, target, -1)
        monkeypatch.setattr(operator, "FUSE_MARGIN", 0.0)
        fused = jacobian(model, coefficients.inputs, target, -1, chunk=7)
        assert torch.allclose(fused, plain, atol=1e-12, rtol=0)


def test_contribution_figure_is_handed_over_before_the_svd(tiny_gemma):
    """The first figure reaches a caller that can show it early, before the SVD, equal to the final one."""
    from lenslab.models import guards

    seen: list[float] = []
    early: dict[str, tuple[float, object]] = {}

    def progress(fraction: float, message: str = "") -> None:
        seen.append(fraction)

    progress.partial = lambda name, figure: early.setdefault(name, (max(seen, default=0.0), figure))
    limited = guards.time_limited(progress, 3600)  # the app's wrapper must pass the sink through
    result = get_probe("jacobian").run(tiny_gemma, PROMPT, JacobianConfig(method="randomized"), limited)
    assert set(early) == {"contributions"}
    when, figure = early["contributions"]
    assert when < 0.6 <= max(seen), (when, max(seen))  # shown before the SVD finished
    final = result.figures()["contributions"]
    np.testing.assert_array_equal(np.asarray(figure.data[0].y), np.asarray(final.data[0].y))
    assert figure.layout.title.text == final.layout.title.text
