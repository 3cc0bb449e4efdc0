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
