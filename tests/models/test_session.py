"""ModelSession on tiny random models: validation, hooks, run()."""

import threading

import pytest
import torch

from lenslab.models import hooknames
from lenslab.models.session import validate_prompt


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", "a\x00b", None, 3])
def test_bad_prompts_rejected(tiny_gemma, bad):
    with pytest.raises(ValueError):
        tiny_gemma.tokenize(bad)


def test_prompt_length_limit(tiny_gemma):
    tiny_gemma.max_tokens = 16
    try:
        with pytest.raises(ValueError, match="limit is 16 tokens"):
            tiny_gemma.tokenize("x" * 40)
        assert tiny_gemma.tokenize("x" * 10).shape == (1, 11)
    finally:
        tiny_gemma.max_tokens = 512


def test_layer_and_position_validation(tiny_gemma):
    assert tiny_gemma.check_layer(-1) == tiny_gemma.n_layers - 1
    with pytest.raises(ValueError, match="out of range: the model has 2 layers"):
        tiny_gemma.check_layer(2)
    with pytest.raises(ValueError, match="integer"):
        tiny_gemma.check_layer(1.5)
    assert tiny_gemma.check_position(-1, 5) == 4
    with pytest.raises(ValueError, match="out of range"):
        tiny_gemma.check_position(5, 5)
    with pytest.raises(ValueError, match="at least one"):
        tiny_gemma.check_layers(())


def test_run_returns_only_requested(tiny_gemma):
    name = tiny_gemma.resid_name(0)
    out = tiny_gemma.run("hello", [name])
    assert set(out.activations) == {name}
    assert out.activations[name].shape == (1, 6, tiny_gemma.d_model)
    with pytest.raises(ValueError, match="unknown hook"):
        tiny_gemma.run("hello", ["blocks.99.nope"])


def test_hooks_removed_after_exception(tiny_any):
    name = tiny_any.resid_name(0)
    clean = tiny_any.run("abc").logits
    with pytest.raises(RuntimeError), tiny_any.hooks([(name, lambda t, hook: t * 0)]):
        assert tiny_any.active_hook_count() == 1
        raise RuntimeError("probe failed")
    assert tiny_any.active_hook_count() == 0
    assert torch.equal(tiny_any.run("abc").logits, clean)


def test_hook_actually_applies(tiny_gemma):
    name = tiny_gemma.resid_name(0)
    clean = tiny_gemma.run("abc").logits
    with tiny_gemma.hooks([(name, lambda t, hook: t * 0)]) as bridge:
        patched = bridge(tiny_gemma.tokenize("abc"))
    assert not torch.allclose(patched, clean)


def test_unknown_hook_name_refused(tiny_gemma):
    with (
        pytest.raises(ValueError, match="unknown hook point"),
        tiny_gemma.hooks([("nope", lambda t, hook: t)]),
    ):
        pass


def test_lock_serialises_hooked_sections(tiny_gemma):
    inside, overlaps = [], []

    def worker():
        for _ in range(20):
            with tiny_gemma.hooks([(tiny_gemma.resid_name(0), lambda t, hook: t)]):
                inside.append(1)
                overlaps.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1
    assert tiny_gemma.active_hook_count() == 0


def test_decoding_does_not_fire_hooks_another_job_attached(tiny_gemma):
    """Decoding runs outside the model lock, so it must not pass through the bridge's hook points."""
    fired = []

    def record(tensor, *, hook):
        fired.append(hook.name)

    resid = torch.randn(3, tiny_gemma.d_model)
    plain = tiny_gemma.decode_resid(resid)
    names = ["ln_final.hook_in", "ln_final.hook_out", "unembed.hook_in", "unembed.hook_out"]
    with tiny_gemma.hooks([(name, record) for name in names]):
        decoded = tiny_gemma.decode_resid(resid)
        assert fired == []
        tiny_gemma.run("abc", names=[])  # the hooks are live: a forward does fire them
    assert set(fired) == set(names)
    assert torch.equal(decoded, plain)
    assert torch.allclose(tiny_gemma.final_logits(tiny_gemma.final_norm(resid)), plain)


def test_validate_prompt_keeps_text():
    assert validate_prompt(" <b>x</b> ") == " <b>x</b> "


def test_hooks_exit_removes_a_hook_left_inside_the_context(tiny_gemma, monkeypatch):
    """The full reset runs only when a hook is left over, and then it removes it."""
    resets = []
    reset = tiny_gemma.bridge.reset_hooks
    monkeypatch.setattr(tiny_gemma.bridge, "reset_hooks", lambda **kw: (resets.append(kw), reset(**kw)))
    with tiny_gemma.hooks([(hooknames.resid(0), lambda t, *, hook: None)]):
        assert tiny_gemma.active_hook_count() == 1
    assert tiny_gemma.active_hook_count() == 0 and not resets  # the context detached it: no reset
    with tiny_gemma.hooks([]):  # a hook attached past the session's API (as a careless caller might)
        tiny_gemma.bridge.hook_dict[hooknames.resid(0)].add_hook(lambda t, *, hook: None)
        assert tiny_gemma.active_hook_count() == 1
    assert tiny_gemma.active_hook_count() == 0 and len(resets) == 1


# ------------------------------------------------------------------ hooks attached by the session
def _edits(session):
    """Interventions by string name (one an alias), and by a name filter."""
    mlp = hooknames.mlp_hidden(0)
    return [
        (session.resid_name(0), lambda t, *, hook: t * 0.5),
        ("blocks.1.hook_resid_pre", lambda t, *, hook: t + 0.25),  # TransformerLens alias
        ((lambda name: name == mlp), lambda t, *, hook: t * 0.0),
    ]


def test_session_hooks_match_the_bridge_own_hooks(tiny_any):
    """The session attaches to hook points itself; the bridge's own ``hooks()`` is the reference."""
    tokens = tiny_any.tokenize("abcde")
    with torch.inference_mode():
        clean = tiny_any.bridge(tokens)
        with tiny_any.bridge.hooks(fwd_hooks=_edits(tiny_any)):
            reference = tiny_any.bridge(tokens)
    patched = tiny_any.logits(tokens, _edits(tiny_any))
    assert not torch.allclose(reference, clean)  # the edits change the output
    assert torch.equal(patched, reference)
    assert tiny_any.active_hook_count() == 0
    assert torch.equal(tiny_any.logits(tokens), clean)


def test_capture_equals_run_with_cache(tiny_any):
    names = [tiny_any.resid_name(0), hooknames.mlp_hidden(1), hooknames.FINAL_NORM]
    tokens = tiny_any.tokenize("hello there")
    with torch.inference_mode():
        _, cache = tiny_any.bridge.run_with_cache(tokens, names_filter=names)
    captured = tiny_any.capture(tokens, names)
    assert set(captured) == set(names)
    for name in names:
        assert torch.equal(captured[name], cache[name]), name


def test_hooks_report_the_canonical_name_and_fire_once_per_pass(tiny_gemma):
    seen = []
    alias = "blocks.0.hook_resid_pre"
    with tiny_gemma.hooks([(alias, lambda t, *, hook: seen.append(hook.name))]) as model:
        model.forward(tiny_gemma.tokenize("ab"))
    assert seen == [tiny_gemma.canonical_hook_name(alias)]


def test_nested_contexts_remove_only_their_own_hooks(tiny_gemma):
    name = tiny_gemma.resid_name(0)
    fired = []
    tokens = tiny_gemma.tokenize("abc")
    with tiny_gemma.hooks([(name, lambda t, *, hook: fired.append("outer"))]) as model:
        with tiny_gemma.hooks([(name, lambda t, *, hook: fired.append("inner"))]) as inner:
            inner.forward(tokens)
            assert tiny_gemma.active_hook_count() == 2
        assert tiny_gemma.active_hook_count() == 1
        model.forward(tokens)
    assert fired == ["outer", "inner", "outer"]
    assert tiny_gemma.active_hook_count() == 0


def test_gated_hook_point_is_refused_by_name_and_skipped_by_filter(tiny_gemma):
    gated = "blocks.0.attn.hook_result"  # needs use_attn_result, off by default
    assert gated in tiny_gemma.hook_names and not tiny_gemma.cfg.use_attn_result
    keep = lambda t, *, hook: t  # noqa: E731
    with pytest.raises(ValueError, match="use_attn_result"), tiny_gemma.hooks([(gated, keep)]):
        pass
    with pytest.warns(UserWarning, match="gated-off"), tiny_gemma.hooks([(gated.__eq__, keep)]):
        assert tiny_gemma.active_hook_count() == 0
    assert tiny_gemma.active_hook_count() == 0


def test_backward_hooks_fire_and_come_off(tiny_gemma):
    grads = []
    name = tiny_gemma.resid_name(0)
    try:
        with tiny_gemma.hooks(bwd_hooks=[(name, lambda g, *, hook: grads.append(g.shape))]) as model:
            model.forward(tiny_gemma.tokenize("abc")).sum().backward()
            assert tiny_gemma.active_hook_count() == 1
    finally:  # the session is shared by the whole test process: leave no gradients on its weights
        for _, weight in tiny_gemma.named_weights():
            weight.grad = None
    assert grads == [(1, 4, tiny_gemma.d_model)]
    assert tiny_gemma.active_hook_count() == 0


def test_attaching_does_not_rebuild_the_bridge_hook_table(tiny_gemma, monkeypatch):
    """The hook table is read once per session, not on every attach (it costs ≈ 16 ms on Gemma)."""
    tiny_gemma.capture(tiny_gemma.tokenize("ab"), [tiny_gemma.resid_name(0)])  # table built
    reads = []
    cls = type(tiny_gemma.bridge)
    table = cls.hook_dict
    monkeypatch.setattr(cls, "hook_dict", property(lambda self: (reads.append(1), table.fget(self))[1]))
    tiny_gemma.capture(tiny_gemma.tokenize("ab"), [tiny_gemma.resid_name(0), hooknames.mlp_hidden(1)])
    tiny_gemma.logits(tiny_gemma.tokenize("ab"), _edits(tiny_gemma))
    assert reads == []


def test_a_hook_left_inside_a_nested_context_comes_off_and_the_outer_hooks_stay(tiny_gemma):
    name = tiny_gemma.resid_name(0)
    fired = []
    with tiny_gemma.hooks([(name, lambda t, *, hook: fired.append("outer"))]) as model:
        with tiny_gemma.hooks([]):
            tiny_gemma.bridge.hook_dict[hooknames.resid(1)].add_hook(lambda t, *, hook: fired.append("stray"))
            assert tiny_gemma.active_hook_count() == 2
        assert tiny_gemma.active_hook_count() == 1
        model.forward(tiny_gemma.tokenize("abc"))
    assert fired == ["outer"]
    assert tiny_gemma.active_hook_count() == 0
