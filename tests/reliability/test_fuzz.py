"""Bad input, generated: every registered probe's config fields and prompts, model/SAE names, reports.

Contract under test: every case either succeeds or raises ``ValueError``/``FileNotFoundError`` with a
non-empty message — never another exception type — and the model is left without hooks. A run that
exceeds the per-request time limit stops with ``Cancelled`` (the guard working, counted apart).
Probes join from the registry; fields are fuzzed from their type hints and ``min``/``max``/``choices``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from e2e_support import STATS
from fast_configs import fast_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenslab.analyses.report import Report, list_reports
from lenslab.models import guards
from lenslab.probes import LogitLens, LogitLensConfig, registered_probes
from lenslab.progress import NO_PROGRESS, Cancelled

EXAMPLES_PER_PROBE = 30
FAST_LIMIT_S = 3.0
NASTY_PROMPTS = [
    "",
    "   \n\t  ",
    "a" * 20_000,
    "abc\x00def",
    "\x01\x02\x1b[31mred\x7f\x08",
    "مرحبا بالعالم \u202eevil\u202c",
    "שלום עולם",
    "🧪🔬👩‍🔬 emoji 🏳️‍🌈",
    '<script>alert(1)</script>"><img src=x onerror=alert(2)>',
    "\ud800 lone surrogate",
    "\n",
    "x",
]
NASTY_STRINGS = [
    "",
    " ",
    "nonexistent-model-xyz",
    "../../etc/passwd",
    "/nonexistent/folder",
    "pretrained:nope/none",
    "trained:nope",
    "hf:nope/nope",
    "\x00",
    "<script>alert(1)</script>",
    "x" * 5000,
    "prompt => answer",
]
_SPEED: dict[str, bool] = {}


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _base(tp: Any) -> Any:
    if _optional(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def field_strategy(f: dataclasses.Field, tp: Any) -> st.SearchStrategy | None:
    """Edge and out-of-range values for one config field, from its type and metadata."""
    low, high, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    base = _base(tp)
    extra = [st.none()] if _optional(tp) else []
    if choices is not None or get_origin(base) is typing.Literal:
        options = list(choices if choices is not None else get_args(base))
        return st.one_of(st.sampled_from(options), st.sampled_from(["", "bogus", "DIRECT"]), *extra)
    if base is bool:
        return st.booleans()
    if base is int:
        edges = [0, 1, -1, -(10**9), 10**9, 2**63, -(2**63)]
        edges += [v for b in (low, high) if b is not None for v in (int(b) - 1, int(b), int(b) + 1)]
        return st.one_of(st.sampled_from(edges), st.integers(-(10**6), 10**6), *extra)
    if base is float:
        edges = [math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e308, 5e-324, -1e-300]
        edges += [float(b) + d for b in (low, high) if b is not None for d in (-1e-9, 0.0, 1e-9)]
        return st.one_of(st.sampled_from(edges), st.floats(allow_nan=True, allow_infinity=True), *extra)
    if base is str:
        return st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=40))
    if get_origin(base) is tuple and get_args(base)[:1] == (int,):
        return st.one_of(
            st.none() if _optional(tp) else st.just(()),
            st.lists(st.integers(-100, 100), max_size=5).map(tuple),
            st.sampled_from([(), (10**9,), (-(10**9),), (0, 0, 0), tuple(range(64))]),
        )
    return None


def _mutable_fields(config_cls: type) -> dict[str, st.SearchStrategy]:
    hints = get_type_hints(config_cls)
    found = {}
    for f in dataclasses.fields(config_cls):
        strategy = field_strategy(f, hints[f.name])
        if strategy is not None:
            found[f.name] = strategy
    return found


def _is_fast(name: str, session) -> bool:
    """Whether the probe's fast config finishes on the tiny model within the fuzz limit (cached)."""
    if name not in _SPEED:
        probe = registered_probes()[name]()
        try:
            probe.run(
                session,
                "The capital of France is",
                fast_config(name),
                guards.time_limited(NO_PROGRESS, FAST_LIMIT_S),
            )
            _SPEED[name] = True
        except Cancelled:
            _SPEED[name] = False
            STATS.note(
                f"fuzz: {name}'s fast config exceeds {FAST_LIMIT_S:g} s on the tiny model; its valid "
                "cases are run up to the first progress update only"
            )
        except (ValueError, FileNotFoundError):
            _SPEED[name] = True  # refuses at once (e.g. needs artefacts): cheap either way
    return _SPEED[name]


def check_outcome(action, what: str) -> str:
    """Run ``action``; return 'ok', 'rejected' or 'time' — any other exception fails the test."""
    STATS.add("fuzz_cases")
    try:
        action()
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc).strip()
        if not message:
            STATS.add("failures")
            pytest.fail(f"{what}: {type(exc).__name__} with an empty message")
        STATS.add("fuzz_rejected")
        return "rejected"
    except Cancelled:
        STATS.add("fuzz_time_limited")
        return "time"
    except Exception as exc:
        STATS.add("failures")
        raise AssertionError(f"{what}: raised {type(exc).__name__}: {exc}") from exc
    STATS.add("fuzz_ok")
    return "ok"


@pytest.mark.parametrize("name", sorted(registered_probes()))
def test_fuzz_probe_configs_and_prompts(name, tiny_gemma):
    session = tiny_gemma
    probe_cls = registered_probes()[name]
    base = fast_config(name)
    strategies = _mutable_fields(probe_cls.config_cls)
    limit = FAST_LIMIT_S if _is_fast(name, session) else 1e-9
    field_names = sorted(strategies)

    @settings(
        max_examples=EXAMPLES_PER_PROBE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def case(data):
        changes = {}
        if field_names:
            for field_name in data.draw(st.lists(st.sampled_from(field_names), max_size=2, unique=True)):
                changes[field_name] = data.draw(strategies[field_name], label=field_name)
        prompt = data.draw(st.one_of(st.sampled_from(NASTY_PROMPTS), st.text(max_size=60)), label="prompt")

        def action():
            config = dataclasses.replace(base, **changes)
            result = probe_cls().run(session, prompt, config, guards.time_limited(NO_PROGRESS, limit))
            result.figures()
            json.dumps(result.to_dict()["data"], allow_nan=True)  # saves as plain JSON

        check_outcome(action, f"{name} with {changes!r} and prompt {prompt[:40]!r}")
        STATS.add("hook_checks")
        STATS.add("hooks_left", session.active_hook_count())
        assert session.active_hook_count() == 0

    case()


@pytest.mark.parametrize(
    "model",
    ["no-such-model-xyz", "nobody/nothing-here", "a b c!", "../../../etc", "/nonexistent/dir", "\x00"],
)
def test_unknown_model_names(model):
    from lenslab.models import ModelSession

    check_outcome(lambda: ModelSession.load(model), f"ModelSession.load({model!r})")


@pytest.mark.parametrize(
    "spec",
    ["trained:nope", "pretrained:nope/none", "pretrained:", "/nonexistent/sae", "../../etc", "default"],
)
def test_unknown_sae_names(spec, tiny_gemma, lenslab_home):
    sae_loading = pytest.importorskip("lenslab.probes.sae.loading")
    assert check_outcome(lambda: sae_loading.load_sae(tiny_gemma, spec), f"load_sae({spec!r})") == "rejected"


def test_sae_with_the_wrong_width_is_refused(tiny_gemma, tmp_path):
    sae_loading = pytest.importorskip("lenslab.probes.sae.loading")
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=tiny_gemma.d_model + 3, d_sae=16)
    config.metadata.hook_name = tiny_gemma.resid_name(0)
    StandardSAE(config).save_model(str(tmp_path / "wide"))
    outcome = check_outcome(
        lambda: sae_loading.load_sae(tiny_gemma, str(tmp_path / "wide")), "wrong-width SAE"
    )
    assert outcome == "rejected"
    with pytest.raises(ValueError, match=r"different model|expects"):
        sae_loading.load_sae(tiny_gemma, str(tmp_path / "wide"))
    assert tiny_gemma.active_hook_count() == 0


def test_wrong_model_artefacts_are_refused(tiny_gemma, lenslab_home):
    """Future Lens linear maps made for another model, placed where this model's would be; then truncated."""
    methods = pytest.importorskip("lenslab.probes.future_lens.linear")
    import torch

    from lenslab.models.tiny import tiny_session

    other = tiny_session("llama")
    d = other.d_model
    from lenslab.probes.future_lens.artefacts import ARTEFACT_FORMAT

    meta = {"format": ARTEFACT_FORMAT, "kind": "linear", "model_id": other.model_id, "d_model": d}
    maps = methods.LinearMaps([0], [0], torch.zeros(1, 1, d, d), torch.zeros(1, d), torch.zeros(1, d), meta)
    target = methods.linear_path(tiny_gemma.model_id)
    maps.save(target)
    assert (
        check_outcome(lambda: methods.load_linear(tiny_gemma), "linear maps of another model") == "rejected"
    )
    with pytest.raises(ValueError, match="not on the loaded model"):
        methods.load_linear(tiny_gemma)
    target.write_bytes(target.read_bytes()[:50])
    assert check_outcome(lambda: methods.load_linear(tiny_gemma), "truncated linear maps") == "rejected"


# --------------------------------------------------------------------------- reports, corrupted
@pytest.fixture(scope="module")
def saved_report(tiny_gemma, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-report")
    result = LogitLens().run(tiny_gemma, "hello <b>world</b>", LogitLensConfig(k=3))
    return Report([result], {"title": "fuzz"}).save(folder / "r")


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(
    which=st.sampled_from(["report.json", "arrays.npz", "report.html", None]),
    cut=st.floats(0.0, 1.0),
    flip=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4),
    drop=st.sampled_from([None, "report.json", "arrays.npz"]),
)
def test_corrupt_or_truncated_report_folders(saved_report, tmp_path_factory, which, cut, flip, drop):
    folder = tmp_path_factory.mktemp("corrupt") / "r"
    shutil.copytree(saved_report, folder)
    if which is not None:
        path = folder / which
        data = bytearray(path.read_bytes())
        data = data[: int(len(data) * cut)] if cut < 0.98 else data
        for position, value in flip:
            if data:
                data[min(int(position * len(data)), len(data) - 1)] = value
        path.write_bytes(bytes(data))
    if drop is not None:
        (folder / drop).unlink()
    STATS.add("reports_checked")
    outcome = check_outcome(lambda: Report.load(folder), f"load of a corrupted report ({which}, {cut:.2f})")
    listed = [e.name for e in list_reports(folder.parent)]  # listing never raises
    if outcome == "ok":
        loaded = Report.load(folder)
        assert loaded.results[0].probe == "logit_lens"
    if drop == "report.json":
        assert listed == [], "a report without report.json must not be listed"


def test_wrong_types_in_a_report_are_rejected(saved_report, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(saved_report, folder)
    document = json.loads((folder / "report.json").read_text())
    for mutation in (
        lambda d: d.update(results="nope"),
        lambda d: d["results"][0].update(probe="no_such_probe"),
        lambda d: d["results"][0]["data"].update(config={"k": "many"}),
        lambda d: d["results"][0]["data"].update(tokens={"__array__": "missing"}),
        lambda d: d.update(format=99),
        lambda d: d["results"][0].pop("data"),
    ):
        broken = json.loads(json.dumps(document))
        mutation(broken)
        (folder / "report.json").write_text(json.dumps(broken))
        check_outcome(lambda: Report.load(folder), "a report.json with wrong types")


# ------------------------------------------------------------------------------------ the app
@pytest.mark.slow
def test_app_bad_inputs_show_messages_and_next_run_works(lenslab_home):
    from streamlit.testing.v1 import AppTest

    script = (
        "from lenslab.app import state\n"
        "from lenslab.app.views import logit_lens as page\n"
        "state.sidebar()\n"
        "page.render()\n"
    )
    at = AppTest.from_string(script, default_timeout=300).run()

    def run():  # the widget tree is rebuilt on every run: look the button up afresh
        return next(b for b in at.button if b.label == "Run")

    for bad in ["", "   ", "a" * 20_000, "abc\x00def"]:
        at.text_area[0].set_value(bad)
        run().click().run()
        STATS.add("fuzz_cases")
        assert not at.exception, [e.value for e in at.exception]
        assert at.error and all(e.value.strip() for e in at.error), f"no message for {bad[:20]!r}"
        assert at.text_area[0].value == bad
        STATS.add("fuzz_rejected")
    for odd in ["🧪 emoji مرحبا", '<script>alert(1)</script>"><img src=x onerror=alert(2)>']:
        at.text_area[0].set_value(odd)
        run().click().run()
        STATS.add("fuzz_cases")
        assert not at.exception and not at.error
        STATS.add("fuzz_ok")
    at.text_area[0].set_value("The capital of France is")
    run().click().run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) >= 1


@pytest.mark.slow
def test_app_unknown_model_shows_a_message(lenslab_home):
    from streamlit.testing.v1 import AppTest

    script = "from lenslab.app import state\nstate.sidebar()\ns = state.session()\n"
    at = AppTest.from_string(script, default_timeout=120).run()
    at.sidebar.selectbox(key="model_choice").select(
        at.sidebar.selectbox(key="model_choice").options[-1]
    ).run()
    at.sidebar.text_input(key="model_other").set_value("no-such-model-xyz-123").run()
    STATS.add("fuzz_cases")
    assert not at.exception
    assert any("Could not load model" in e.value for e in at.error)
    STATS.add("fuzz_rejected")


def test_strategies_are_built_without_the_model(monkeypatch):
    """Building the fuzz strategies reads only the config classes: no model is loaded or run.

    (Their cost is a property of that, not of the machine's load: no wall-clock bound here.)
    """
    from lenslab.models import ModelSession

    def refuse(*args, **kwargs):
        raise AssertionError("building the fuzz strategies touched the model")

    monkeypatch.setattr(ModelSession, "load", classmethod(refuse))
    monkeypatch.setattr(ModelSession, "run", refuse)
    built = {name: _mutable_fields(cls.config_cls) for name, cls in registered_probes().items()}
    assert any(built.values()), "no probe has a fuzzable config field"
    for strategies in built.values():
        assert all(isinstance(s, st.SearchStrategy) for s in strategies.values())
