"""Resource guards: memory estimates and budget, out-of-memory handling, per-request time limits."""

from __future__ import annotations

import gc

import pytest
import torch
from e2e_support import STATS
from fast_configs import fast_config
from streamlit.testing.v1 import AppTest

from lenslab.models import guards
from lenslab.probes import LogitLens, LogitLensConfig, registered_probes
from lenslab.progress import Cancelled


def _all_hooks(session, layer: int = 0) -> list[str]:
    suffixes = (
        "hook_in",
        "hook_out",
        "attn.hook_out",
        "mlp.hook_out",
        "mlp.out.hook_in",
        "attn.hook_pattern",
    )
    return [f"blocks.{layer}.{suffix}" for suffix in suffixes]


# ---------------------------------------------------------------------------------------- budget
def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv(guards.BUDGET_ENV, "1.5")
    assert guards.memory_budget_bytes() == int(1.5 * 2**30)
    for bad in ("lots", "nan", "-2", "0", "inf"):
        monkeypatch.setenv(guards.BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=guards.BUDGET_ENV):
            guards.memory_budget_bytes()


def test_default_budget_is_half_the_free_memory(monkeypatch):
    monkeypatch.delenv(guards.BUDGET_ENV, raising=False)
    free = guards.free_memory_bytes()
    budget = guards.memory_budget_bytes()
    assert free > 0
    assert abs(budget - free / 2) < 0.1 * free  # free memory moves a little between the two reads


def test_check_memory_refuses_over_budget_with_a_clear_message(monkeypatch):
    monkeypatch.setenv(guards.BUDGET_ENV, "1")
    guards.check_memory(2**29, "a small thing")  # half the budget: fine
    with pytest.raises(ValueError) as info:
        guards.check_memory(3 * 2**30, "a Jacobian over 40 tokens", hint="pick fewer tokens")
    message = str(info.value)
    assert "a Jacobian over 40 tokens" in message and "3.0 GiB" in message and "1.0 GiB" in message
    assert "pick fewer tokens" in message and guards.BUDGET_ENV in message
    STATS.add("guard_refusals")
    for nonsense in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError, match="cannot estimate"):
            guards.check_memory(nonsense, "x")


def test_jacobian_and_tensor_sizes():
    assert guards.jacobian_bytes(20, 640) == 20 * 640 * 640 * 4
    assert guards.jacobian_bytes(3, 4, 5, torch.float64) == 3 * 5 * 4 * 8
    assert guards.tensor_bytes((2, 3), torch.bfloat16) == 12
    assert guards.format_bytes(3 * 2**30) == "3.0 GiB" and guards.format_bytes(12) == "12 B"


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
def test_run_estimate_bounds_what_a_forward_keeps(family):
    """The estimate is an upper bound of the cached activations + logits, and not a wild one."""
    from lenslab.models.tiny import tiny_session

    session = tiny_session(family)
    names = [*_all_hooks(session), *_all_hooks(session, 1)]
    tokens = session.tokenize("hello there, a longer prompt for the estimate")
    run = session.run(tokens, names)
    actual = run.logits.float().nelement() * 4 + sum(
        a.nelement() * a.element_size() for a in run.activations.values()
    )
    estimate = guards.estimate_run_bytes(session, tokens.shape[-1], names)
    assert actual <= estimate <= 4 * actual, (actual, estimate)


def test_session_run_refuses_a_cache_over_budget_and_stays_usable(tiny_gemma, monkeypatch):
    names = _all_hooks(tiny_gemma) + _all_hooks(tiny_gemma, 1)
    monkeypatch.setenv(guards.BUDGET_ENV, "0.00001")  # ~10 KiB
    with pytest.raises(ValueError, match="memory budget"):
        tiny_gemma.run("a prompt long enough to need more than ten kilobytes of cache", names)
    STATS.add("guard_refusals")
    assert tiny_gemma.active_hook_count() == 0
    monkeypatch.delenv(guards.BUDGET_ENV)
    run = tiny_gemma.run("a prompt", names[:3])
    assert set(run.activations) == set(names[:3])


def test_embedded_long_prompt_full_cache_is_refused_under_a_small_budget(embedded_session, monkeypatch):
    """18 layers × six hooks × 500 tokens of Gemma is most of a GiB: refused before any allocation."""
    session = embedded_session
    names = [name for layer in range(session.n_layers) for name in _all_hooks(session, layer)]
    estimate = guards.estimate_run_bytes(session, 500, names)
    assert estimate > 0.5 * 2**30
    monkeypatch.setenv(guards.BUDGET_ENV, "0.25")
    with pytest.raises(ValueError, match="memory budget"):
        session.run(" word" * 480, names)
    STATS.add("guard_refusals")
    STATS.add("hook_checks")
    STATS.add("hooks_left", session.active_hook_count())
    assert session.active_hook_count() == 0


# --------------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "python", "torch-cpu"],
)
def test_oom_guard_frees_memory_and_explains(error, monkeypatch):
    collected = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or real_collect(*a))
    with pytest.raises(guards.OutOfMemory) as info, guards.oom_guard("the logit lens"):
        raise error
    assert isinstance(info.value, ValueError)
    assert "the logit lens ran out of" in str(info.value) and "memory was freed" in str(info.value)
    assert collected, "memory is collected before the error is reported"
    STATS.add("oom_caught")


def test_oom_guard_lets_other_errors_through():
    with pytest.raises(RuntimeError, match="shape mismatch"), guards.oom_guard():
        raise RuntimeError("shape mismatch")
    with pytest.raises(KeyError), guards.oom_guard():
        raise KeyError("x")


def test_real_cpu_allocation_failure_is_caught():
    with pytest.raises(guards.OutOfMemory, match="CPU memory"), guards.oom_guard("a huge tensor"):
        torch.empty(2**50, dtype=torch.float32)
    STATS.add("oom_caught")


def test_oom_during_a_forward_leaves_the_model_clean(tiny_gemma):
    """An OOM raised inside a hook mid-forward becomes a clear error; hooks are removed."""

    def explode(tensor, *, hook):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(guards.OutOfMemory), tiny_gemma.hooks([(tiny_gemma.resid_name(0), explode)]):
        tiny_gemma.run("hello", [tiny_gemma.resid_name(1)])
    STATS.add("oom_caught")
    STATS.add("hook_checks")
    STATS.add("hooks_left", tiny_gemma.active_hook_count())
    assert tiny_gemma.active_hook_count() == 0
    assert tiny_gemma.run("hello").logits.isfinite().all()


# ------------------------------------------------------------------------------------ time limit
def test_time_limited_progress_with_a_fake_clock():
    now = [0.0]
    seen = []
    progress = guards.time_limited(lambda f, m="": seen.append(f), 10, clock=lambda: now[0])
    progress(0.1, "a")
    now[0] = 9.9
    progress(0.5, "b")
    now[0] = 10.1
    with pytest.raises(Cancelled, match="time limit of 10 s"):
        progress(0.9, "c")
    assert seen == [0.1, 0.5]
    inner = lambda f, m="": None  # noqa: E731
    assert guards.time_limited(inner, None) is inner and guards.time_limited(inner, 0) is inner


def test_time_limit_environment(monkeypatch):
    monkeypatch.delenv(guards.TIME_LIMIT_ENV, raising=False)
    assert guards.time_limit_s() is None and guards.time_limit_s(30.0) == 30.0
    monkeypatch.setenv(guards.TIME_LIMIT_ENV, "2.5")
    assert guards.time_limit_s(30.0) == 2.5
    monkeypatch.setenv(guards.TIME_LIMIT_ENV, "0")
    assert guards.time_limit_s(30.0) is None  # 0 switches the limit off
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(guards.TIME_LIMIT_ENV, bad)
        with pytest.raises(ValueError, match=guards.TIME_LIMIT_ENV):
            guards.time_limit_s()


@pytest.mark.parametrize("name", sorted(registered_probes()))
def test_every_probe_stops_at_an_expired_time_limit(name, tiny_gemma):
    """A request past its limit stops at the probe's first progress update, leaving no hooks.

    Probes that need trained artefacts refuse earlier with FileNotFoundError, which is also fine.
    """
    probe = registered_probes()[name]()
    progress = guards.time_limited(lambda f, m="": None, 1e-9)
    try:
        probe.run(tiny_gemma, "The capital of France is", fast_config(name), progress)
    except Cancelled as exc:
        assert "time limit" in str(exc)
        STATS.add("time_limited")
    except (ValueError, FileNotFoundError) as exc:
        assert str(exc)
    else:
        STATS.note(f"probe {name} finished without calling progress(): the time limit cannot stop it")
    STATS.add("hook_checks")
    STATS.add("hooks_left", tiny_gemma.active_hook_count())
    assert tiny_gemma.active_hook_count() == 0


def test_time_limited_run_then_normal_run_is_unchanged(tiny_gemma):
    config = LogitLensConfig(k=3)
    before = LogitLens().run(tiny_gemma, "abc def", config)
    with pytest.raises(Cancelled):
        LogitLens().run(tiny_gemma, "abc def", config, guards.time_limited(lambda f, m="": None, 1e-9))
    after = LogitLens().run(tiny_gemma, "abc def", config)
    assert (before.top_ids == after.top_ids).all() and (before.top_probs == after.top_probs).all()


# ------------------------------------------------------------------------------------------ app
def _status_app(kind: str) -> None:
    import time

    import torch

    from lenslab.app import state

    def job(progress):
        if kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if kind == "cpu-oom":
            return torch.empty(2**50)
        for i in range(200):
            progress(i / 200, f"step {i}")
            time.sleep(0.01)
        return "finished"

    value = state.run_with_status(f"job {kind}", job)
    if value is not None:
        import streamlit as st

        st.success(str(value))


@pytest.mark.parametrize("kind", ["oom", "cpu-oom", "slow"])
def test_app_reports_guards_as_messages(kind, monkeypatch):
    monkeypatch.setenv(guards.TIME_LIMIT_ENV, "0.3")
    at = AppTest.from_function(_status_app, args=(kind,), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    expected = {"oom": "ran out of GPU memory", "cpu-oom": "ran out of CPU memory", "slow": "time limit"}[
        kind
    ]
    assert expected in errors, errors
    assert not at.success
    STATS.add("time_limited" if kind == "slow" else "oom_caught")


def test_app_without_limit_finishes(monkeypatch):
    monkeypatch.setenv(guards.TIME_LIMIT_ENV, "0")
    at = AppTest.from_function(_status_app, args=("slow",), default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.success[0].value == "finished"


def test_deadline_stops_the_next_forward_and_leaves_the_model_clean(tiny_gemma):
    """Inside ``deadline`` a forward after the limit raises ``Cancelled``; outside, runs are normal.

    Covers work that reports progress rarely: the session checks the deadline before every forward
    pass and every hook context.
    """
    now = [0.0]
    before = tiny_gemma.run("abc def").logits
    with guards.deadline(10, clock=lambda: now[0]):
        tiny_gemma.run("abc def")  # within the limit
        now[0] = 11.0
        with pytest.raises(Cancelled, match="time limit of 10 s"):
            tiny_gemma.run("abc def")
        with pytest.raises(Cancelled), tiny_gemma.hooks():
            pass
    assert torch.equal(tiny_gemma.run("abc def").logits, before)
    assert tiny_gemma.active_hook_count() == 0
    with guards.deadline(None):
        guards.check_deadline()  # no limit: nothing raised
