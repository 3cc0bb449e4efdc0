"""Shared neurons page: pick two prompt sets (or a second model), compare top units, ablate them."""

from __future__ import annotations

import streamlit as st

from lenslab.app import state
from lenslab.app.components import LinkedWidgets, config_form, file_input, show_result
from lenslab.app.plain import md, show_invalid
from lenslab.probes import get_probe
from lenslab.probes.fields import config_field
from lenslab.probes.shared_neurons.probe import planned_forwards
from lenslab.probes.shared_neurons.result import PERTURBED, SharedNeuronsConfig, SharedNeuronsResult
from lenslab.probes.shared_neurons.tasks import builtin_names, is_typed, load_task_set, parse_lines
from lenslab.probes.shared_neurons.units import unit_statistics

TITLE = "Shared neurons"
ICON = ":material/hub:"
ORDER = 50
URL = "shared-neurons"
KEY = "shared_neurons"
TYPED = "type prompts…"
FILE = "load a .txt / .jsonl file…"
TWO_SETS, TWO_MODELS = "two prompt sets, one model", "two models, one prompt set"
TYPED_EXAMPLE = "12 + 7 => 19\n23 + 41 => 64\n30 + 15 => 45\nThe capital of France is => Paris"
NO_CONTROL = "none (no floor)"
ESTIMATE_ABOVE_S = 10.0  # show a time estimate before runs expected to take longer


def _prompts_per_second(session, spec: str, seed: int) -> float:
    """Forward throughput on this model: the last run's, else one timed pass over 2 prompts (cached)."""
    last = state.stored(KEY)
    if isinstance(last, SharedNeuronsResult) and last.model_id == session.model_id:
        return last.prompts_per_second
    cache_key = f"{KEY}:rate:{session.model_id}"
    rate = state.stored(cache_key)
    if rate is None:
        try:
            items = load_task_set(spec, n=2, seed=seed).items
        except (ValueError, FileNotFoundError):
            return 0.0
        rate = len(items) / max(unit_statistics(session, items, batch_size=2).seconds, 1e-6)
        state.store(cache_key, rate)
    return float(rate)


def _time_estimate(session, config: SharedNeuronsConfig) -> None:
    """Say how long a run will take before it starts, when that is more than a few seconds."""
    try:
        forwards = planned_forwards(config)
    except (ValueError, FileNotFoundError):
        return
    rate = _prompts_per_second(session, config.set_a, config.seed)
    if rate <= 0:
        return
    seconds = forwards / rate
    if seconds > ESTIMATE_ABOVE_S:
        minutes = f" (≈ {seconds / 60:.1f} min)" if seconds >= 120 else ""
        st.info(
            f"Estimated run time ≈ {seconds:.0f} s{minutes}: {forwards} prompt forward passes at "
            f"{rate:.2g} prompts/s measured on this model. Fewer prompts or switching the causal test "
            "off makes it faster."
        )


def _linkable_set(name: str, allowed: list[str] | None = None, *, empty: bool = False):
    """The check of a prompt set named in a link: a built-in name (of ``allowed``) or typed lines."""
    names = builtin_names() if allowed is None else allowed

    def check(spec: str) -> None:
        if spec in names or (empty and spec == ""):
            return
        if allowed is None and is_typed(spec):
            parse_lines(spec, f"setting {name}")  # a ValueError names the bad line
            return
        what = "typed 'prompt => answer' lines" if allowed is None else "empty (no control)"
        raise ValueError(
            f"setting {name}: {spec!r} is neither one of {names} nor {what} (a file cannot travel in a link)"
        )

    return check


def _set_picker(which: str, default: str, links: LinkedWidgets) -> str:
    """Built-in set, typed lines or a file path; returns the spec string the probe resolves.

    A built-in set or typed lines travel in the page's URL (``?set_a=capitals``); a file does not.
    """
    field = config_field(SharedNeuronsConfig, f"set_{which.lower()}")
    start = links.start(field, default, check=_linkable_set(field.name))
    options = [*builtin_names(), TYPED, FILE]
    choice = st.selectbox(
        f"Prompt set {which}",
        options,
        index=options.index(start if start in options else TYPED),
        key=f"{KEY}:set{which}",
    )
    if choice == TYPED:
        typed = st.text_area(
            f"Set {which}: one `prompt => answer` per line (`\\n` for a newline)",
            value=start if is_typed(start) else TYPED_EXAMPLE,
            key=f"{KEY}:typed{which}",
            height=140,
        )
        links.keep(field, typed)
        return typed
    if choice == FILE:
        links.drop(field)
        return file_input(
            f"Set {which}: a .txt (prompt => answer lines) or .jsonl ({{'prompt', 'answer'}}) file",
            key=f"{KEY}:file{which}",
        )
    links.keep(field, choice)
    return choice


def _preview(spec: str, n: int, seed: int) -> bool:
    """Show the first items of a set; False (with the message shown) if it cannot be loaded."""
    try:
        task_set = load_task_set(spec, n=n, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        st.error(str(exc))
        return False
    with st.expander(f"{task_set.name}: {len(task_set.items)} prompts — {task_set.description}"):
        st.table([{"prompt": md(i.prompt[-80:]), "expected": md(i.answer)} for i in task_set.items[:5]])
    return True


def render() -> None:
    """Set pickers, settings, run; overlap figures, the causal test and a plain-language reading."""
    probe = get_probe(KEY)
    st.title(probe.title)
    st.caption(
        "Which MLP units (the hidden activation before the down projection) are most active for two "
        "prompt sets — or for two models of the same architecture — at the answer position; how much "
        "they overlap next to two halves of one task (ceiling) and a task against an unrelated control "
        "(floor); and whether ablating the shared or set-specific units hurts each task on held-out "
        "prompts, against random units matched in activation rank on the control task."
    )
    session = state.session()
    if session is None:
        return
    mode = st.radio("Compare", [TWO_SETS, TWO_MODELS], horizontal=True, key=f"{KEY}:mode")
    with st.expander("Settings", expanded=False):
        base = config_form(SharedNeuronsConfig, KEY, session)
    n_prompts = base.n_prompts if base is not None else SharedNeuronsConfig.n_prompts
    seed = base.seed if base is not None else 0
    links = LinkedWidgets(f"{KEY}:sets", session=session)  # ?set_a=capitals&set_b=...&control=
    left, right = st.columns(2)
    with left:
        spec_a = _set_picker("A", "exact_arithmetic", links)
        ok = _preview(spec_a, n_prompts, seed) if spec_a.strip() else False
    with right:
        if mode == TWO_SETS:
            spec_b, model_b = _set_picker("B", "approximate_arithmetic", links), ""
            ok = (_preview(spec_b, n_prompts, seed) if spec_b.strip() else False) and ok
        else:
            spec_b = ""
            kind = st.selectbox(
                "Second model",
                ["perturbed copy of this model (offline demo)", "HF folder or id of the same architecture"],
                key=f"{KEY}:model_kind",
            )
            if kind.startswith("perturbed"):
                model_b = PERTURBED
                st.caption(
                    "Noise of size `noise scale` × each weight matrix's std is added to the block "
                    "weights for the scoring pass and removed afterwards."
                )
            else:
                model_b = st.text_input(
                    "Model B", key=f"{KEY}:model_b", placeholder="/path/to/finetuned-checkpoint"
                )
    unrelated = [n for n in builtin_names() if n not in (spec_a, spec_b)]
    control_field = config_field(SharedNeuronsConfig, "control")
    control_start = links.start(
        control_field,
        "capitals" if "capitals" in unrelated else "",
        check=_linkable_set("control", unrelated, empty=True),
    )
    controls = [NO_CONTROL, *unrelated]
    control = st.selectbox(
        "Control task (the floor: a task unrelated to both sets)",
        controls,
        index=controls.index(control_start) if control_start in controls else 0,
        key=f"{KEY}:control",
    )
    links.keep(control_field, "" if control == NO_CONTROL else control)
    refused = links.problems()
    show_invalid(refused)
    config = None
    if base is not None:
        try:
            config = base.replace(
                set_a=spec_a,
                set_b=spec_b or base.set_b,
                model_b=model_b,
                control="" if control == NO_CONTROL else control,
            )
            config.validate(session)
        except (ValueError, TypeError) as exc:
            st.error(f"Invalid settings: {exc}")
            config = None
    if mode == TWO_MODELS and not model_b.strip():
        st.info("Name the second model (an HF folder or id) or choose the perturbed copy.")
    runnable = config is not None and ok and not refused and (mode == TWO_SETS or bool(model_b.strip()))
    if runnable and config is not None:
        _time_estimate(session, config)
    if st.button("Run", type="primary", key=f"{KEY}:run", disabled=not runnable):
        result = state.run_with_status(probe.title, lambda progress: probe.run(session, "", config, progress))
        if result is not None:
            state.store(KEY, result)
    result = state.stored(KEY)
    if isinstance(result, SharedNeuronsResult):
        for warning in result.warnings():
            st.warning(warning)
        st.markdown(result.interpretation(with_warnings=False))
        if result.pairs:
            st.subheader("Overlap of the compared pair and the control pairs (95% bootstrap over prompts)")
            st.dataframe(result.pair_text_table(), hide_index=True)
        show_result(result, KEY)
        if result.conditions:
            st.subheader("Causal test on held-out prompts, per condition and set (95% intervals)")
            st.dataframe(result.causal_text_table(), hide_index=True)
        state.save_report([result], session, KEY)
