"""The session's norms skip the statistics of unhooked inner hook points, bit for bit the same.

``session.skip_unhooked_norm_statistics`` gives each ``NormalizationBridge`` a forward that returns
HF's norm output directly while ``hook_scale`` / ``hook_normalized`` carry no hook. These tests
compare it with the bridge's own forward (the instance attribute removed) on every tiny family, with
and without interventions, forward and backward, and check that the fast path is actually taken
and that hooks on the inner points still see (and edit) what the bridge gives them.
"""

import contextlib
import copy

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

from lenslab.models import hooknames
from lenslab.models.session import skip_unhooked_norm_statistics


def _norms(session):
    return [m for m in session.bridge.modules() if isinstance(m, NormalizationBridge)]


@contextlib.contextmanager
def bridge_forward(session):
    """The bridge's own norm forward for the duration (the fast path taken off)."""
    norms = [m for m in _norms(session) if "forward" in m.__dict__]
    saved = [m.__dict__.pop("forward") for m in norms]
    try:
        yield
    finally:
        for module, forward in zip(norms, saved, strict=True):
            object.__setattr__(module, "forward", forward)


def _tokens(session, batch=3, seq=12):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, session.d_vocab, (batch, seq), generator=generator)
    tokens[:, 0] = session.tokenize("a")[0, 0]
    return tokens


def test_every_norm_gets_the_fast_path(tiny_any):
    norms = _norms(tiny_any)
    assert norms and all("forward" in m.__dict__ for m in norms)
    assert skip_unhooked_norm_statistics(tiny_any.bridge) == len(norms)  # idempotent re-install


def test_fast_path_skips_the_python_statistics(tiny_any, monkeypatch):
    def refuse(self, x):
        raise AssertionError("the bridge's Python norm statistics ran with no hook on them")

    monkeypatch.setattr(NormalizationBridge, "_hf_autograd_forward_with_hooks", refuse)
    tiny_any.logits(_tokens(tiny_any))  # raises if any norm took the bridge's path


def test_forward_bit_identical_to_the_bridge(tiny_any):
    tokens = _tokens(tiny_any)
    names = [hooknames.resid(layer) for layer in range(tiny_any.n_layers)]
    fast_logits = tiny_any.logits(tokens)
    fast_states = tiny_any.capture(tokens, [*names, hooknames.FINAL_NORM])
    with bridge_forward(tiny_any):
        slow_logits = tiny_any.logits(tokens)
        slow_states = tiny_any.capture(tokens, [*names, hooknames.FINAL_NORM])
    assert torch.equal(fast_logits, slow_logits)
    for name, value in slow_states.items():
        assert torch.equal(fast_states[name], value), name


def test_interventions_and_gradients_identical(tiny_any):
    tokens = _tokens(tiny_any)
    name = hooknames.resid(0)

    def scale(resid, *, hook):
        return resid * 1.5

    def run():
        embeds = {}

        def grab(resid, *, hook):
            resid.retain_grad()
            embeds["x"] = resid

        with tiny_any.hooks([(name, grab), (hooknames.resid(tiny_any.n_layers - 1), scale)]) as model:
            logits = model.forward(tokens)
            logits[:, -1].logsumexp(-1).sum().backward()
        return logits.detach(), embeds["x"].grad

    fast = run()
    with bridge_forward(tiny_any):
        slow = run()
    assert torch.equal(fast[0], slow[0])
    assert torch.equal(fast[1], slow[1])


def test_hooks_on_the_inner_points_still_fire_and_edit(tiny_gemma):
    tokens = _tokens(tiny_gemma)
    point = "blocks.0.ln1.hook_scale"
    if point not in tiny_gemma.hook_names:
        pytest.skip(f"{point} is not a hook point of this bridge")
    fast = tiny_gemma.capture(tokens, [point])[point]
    with bridge_forward(tiny_gemma):
        slow = tiny_gemma.capture(tokens, [point])[point]
    assert torch.equal(fast, slow)

    def double(scale, *, hook):
        return scale * 2

    with pytest.warns(UserWarning):  # the bridge warns that an edit leaves HF's numerics
        edited = tiny_gemma.logits(tokens, hooks=[(point, double)])
    with bridge_forward(tiny_gemma), pytest.warns(UserWarning):
        edited_slow = tiny_gemma.logits(tokens, hooks=[(point, double)])
    assert torch.equal(edited, edited_slow)
    assert not torch.equal(edited, tiny_gemma.logits(tokens))


def test_deepcopy_rebinds_to_the_copy(tiny_gemma):
    bridge = copy.deepcopy(tiny_gemma.bridge)
    for module in bridge.modules():
        if isinstance(module, NormalizationBridge):
            assert module.__dict__["forward"].__self__ is module
