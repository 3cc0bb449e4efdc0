"""The detached forward: unchanged output, exact linearity, clean hooks, refusal of other models."""

from __future__ import annotations

import pytest
import torch

from lenslab.models import hooknames
from lenslab.models.tiny import tiny_session
from lenslab.probes.jacobian.algorithms import one_hot_inputs
from lenslab.probes.jacobian.detached import (
    COMPONENTS,
    detached,
    model_family,
    record_coefficients,
    target_hook,
)
from lenslab.probes.jacobian.operator import LinearizedModel

PROMPT = "hello world, again!"


@pytest.fixture(params=["gemma3", "llama", "gpt2"])
def tiny64(request):
    """A float64 tiny model of each supported family."""
    return tiny_session(request.param, dtype=torch.float64)


def _targets(session):
    return [hooknames.FINAL_NORM] + [
        target_hook(session, layer, part) for layer in range(session.n_layers) for part in COMPONENTS
    ]


def test_detached_logits_equal_normal_logits(tiny_any):
    """Freezing the coefficients at their own values leaves the logits unchanged (float32)."""
    session = tiny_any
    tokens = session.tokenize(PROMPT)
    normal = session.run(tokens).logits
    coefficients = record_coefficients(session, tokens)
    with detached(session, coefficients) as model, torch.no_grad():
        logits = model.logits(coefficients.inputs)
    assert logits.shape == normal.shape
    assert (logits - normal).abs().max() / normal.abs().max() < 1e-5
    assert session.active_hook_count() == 0


def test_detached_is_linear_float64(tiny64):
    """Σ_i f(x_i alone) (minus the bias copies) + b reproduces y to 1e-10 at every target."""
    session = tiny64
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    targets = _targets(session)
    copies = one_hot_inputs(coefficients.inputs, with_zero=True)
    with detached(session, coefficients, targets) as model, torch.no_grad():
        out = model(copies, targets)
        whole = model(coefficients.inputs, targets)
    seq = coefficients.seq_len
    for name in targets:
        bias = out[name][seq]
        total = (out[name][:seq] - bias).sum(0) + bias
        real = coefficients.outputs[name][0]
        assert (total - real).norm() / real.norm() < 1e-10, name
        assert (whole[name][0] - real).norm() / real.norm() < 1e-12, name
    has_bias = out[hooknames.FINAL_NORM][seq].norm() > 0
    assert bool(has_bias) == (model_family(session) == "gpt2")


def test_operator_matches_hooked_detached_forward(tiny64):
    """The compiled linear operator equals the hook-based detached forward to rounding."""
    session = tiny64
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    targets = _targets(session)
    probe = torch.randn(3, coefficients.seq_len, session.d_model, dtype=torch.float64)
    with detached(session, coefficients, targets) as model, torch.no_grad():
        hooked = model(probe, targets)
    compiled = LinearizedModel(session, coefficients)(probe, targets)
    for name in targets:
        assert (compiled[name] - hooked[name]).norm() / hooked[name].norm() < 1e-12, name


def test_residual_decomposes_into_attention_and_mlp(tiny64):
    """resid[l] = resid[l-1] + attn[l] + mlp[l] for the chosen part hooks (Gemma: post-norms)."""
    session = tiny64
    coefficients = record_coefficients(session, session.tokenize(PROMPT))
    out = coefficients.outputs
    previous = coefficients.inputs[0]
    for layer in range(session.n_layers):
        resid = out[target_hook(session, layer, "resid")][0]
        parts = out[target_hook(session, layer, "attn")][0] + out[target_hook(session, layer, "mlp")][0]
        assert (previous + parts - resid).norm() / resid.norm() < 1e-12
        previous = resid


def test_hooks_removed_after_exception(tiny_gemma):
    """An exception inside the detached context leaves no hook behind, and the model runs normally."""
    session = tiny_gemma
    tokens = session.tokenize(PROMPT)
    before = session.run(tokens).logits
    coefficients = record_coefficients(session, tokens)
    with pytest.raises(RuntimeError, match="boom"), detached(session, coefficients):
        assert session.active_hook_count() > 0
        raise RuntimeError("boom")
    assert session.active_hook_count() == 0
    # A different prompt now gets its own (not frozen) attention pattern: outputs match a fresh model.
    after = session.run(tokens).logits
    assert torch.equal(before, after)
    other = session.tokenize("something else entirely")
    fresh = tiny_session("gemma3").run(other).logits
    assert torch.allclose(session.run(other).logits, fresh, atol=1e-6)


def test_unsupported_architecture_refused(tiny_gemma, monkeypatch):
    """A model outside Gemma 3 / Llama / GPT-2 gets a ValueError naming the supported ones."""
    monkeypatch.setattr(type(tiny_gemma), "architecture", property(lambda self: "MistralForCausalLM"))
    with pytest.raises(
        ValueError, match="supported architectures: GPT2LMHeadModel, Gemma3ForCausalLM, LlamaForCausalLM"
    ):
        model_family(tiny_gemma)
    with pytest.raises(ValueError, match="MistralForCausalLM"):
        record_coefficients(tiny_gemma, tiny_gemma.tokenize(PROMPT))


def test_target_hook_validation(tiny_gemma):
    """Bad layers and components are refused with readable messages."""
    with pytest.raises(ValueError, match="out of range"):
        target_hook(tiny_gemma, 7, "resid")
    with pytest.raises(ValueError, match="component must be one of"):
        target_hook(tiny_gemma, 0, "ffn")
    with pytest.raises(ValueError, match="no attention/MLP part"):
        target_hook(tiny_gemma, None, "attn")
    assert target_hook(tiny_gemma, 1, "attn") == hooknames.attn_post_norm(1)


def test_float64_copy_is_cached_and_separate(tiny_gemma):
    """session.converted makes one float64 copy per session and leaves the float32 model alone."""
    copy = tiny_gemma.converted(torch.float64)
    assert copy.dtype == torch.float64 and tiny_gemma.dtype == torch.float32
    assert tiny_gemma.converted("float64") is copy
    assert copy.converted(torch.float64) is copy
    assert copy.lock is not tiny_gemma.lock
    tokens = tiny_gemma.tokenize(PROMPT)
    assert torch.allclose(copy.run(tokens).logits.float(), tiny_gemma.run(tokens).logits, atol=1e-4)


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_float64_copy_equals_the_bridges_own_conversion(family):
    """The cast in ``converted`` gives bit for bit what ``bridge.to(float64)`` gives."""
    import copy as copying

    session = tiny_session(family)
    expected = copying.deepcopy(session.bridge).to(torch.float64, print_details=False)
    got = session.converted(torch.float64).bridge
    assert got.cfg.dtype == expected.cfg.dtype == torch.float64
    for mine, theirs in ((got, expected), (got.original_model, expected.original_model)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype, name
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    tokens = session.tokenize(PROMPT)
    with torch.no_grad():
        torch.testing.assert_close(got(tokens), expected(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_recording_up_to_a_layer_matches_the_full_recording(family):
    """A forward stopped after layer 0 records what the full one does there, and replays it the same."""
    from lenslab.probes.jacobian.algorithms import contributions

    session = tiny_session(family)
    tokens = session.tokenize("the cat sat on the mat")
    full = record_coefficients(session, tokens)
    assert session.n_layers >= 2
    part = record_coefficients(session, tokens, last_layer=0)
    assert part.logits is None and part.final_hidden is None
    assert set(part.patterns) < set(full.patterns) and set(part.gates) == {0}
    for name, value in [*part.scales.items(), *part.patterns.items(), *part.outputs.items()]:
        torch.testing.assert_close(value, {**full.scales, **full.patterns, **full.outputs}[name])
    target = hooknames.resid(0)
    got, got_bias = contributions(LinearizedModel(session, part), part.inputs, [target])
    want, want_bias = contributions(LinearizedModel(session, full), full.inputs, [target])
    torch.testing.assert_close(got[target], want[target])
    torch.testing.assert_close(got_bias[target], want_bias[target])
    with pytest.raises(ValueError, match="past the 1 recorded layers"):
        LinearizedModel(session, part)(part.inputs, [hooknames.resid(1)])
    assert session.active_hook_count() == 0
