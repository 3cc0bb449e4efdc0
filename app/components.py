"""Reusable page parts: a config form built from a dataclass, and the standard probe page."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

import streamlit as st

from lenslab.app import state
from lenslab.probes import Config, Result, get_probe

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"


def config_form(config_cls: type[Config], key: str, session: Any | None = None) -> Config | None:
    """Widgets for every field of ``config_cls``; returns the config or None (error shown)."""
    hints = get_type_hints(config_cls)
    values: dict[str, Any] = {}
    # LENSLAB_FAST_CONFIGS=1 (set by the browser tests) starts every form at Config.fast_for_tests().
    fast = config_cls.fast_for_tests() if os.environ.get("LENSLAB_FAST_CONFIGS") == "1" else None
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("hidden"):
            if fast is not None:
                values[f.name] = getattr(fast, f.name)
            continue
        start = getattr(fast, f.name) if fast is not None else dataclasses.MISSING
        values[f.name] = _field_widget(f, hints[f.name], f"{key}:{f.name}", session, start)
    try:
        config = config_cls(**values)
        if session is not None:
            config.validate(session)
    except (ValueError, TypeError) as exc:
        st.error(f"Invalid settings: {exc}")
        return None
    return config


def _field_widget(
    f: dataclasses.Field, tp: Any, key: str, session: Any | None, start: Any = dataclasses.MISSING
) -> Any:
    label = f.name.replace("_", " ")
    help_text = f.metadata.get("help")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if start is not dataclasses.MISSING:
        default = start
    choices = f.metadata.get("choices")
    origin = get_origin(tp)
    if choices is not None or origin is typing.Literal:
        options = list(choices if choices is not None else get_args(tp))
        return st.selectbox(label, options, index=options.index(default), key=key, help=help_text)
    if tp is bool:
        return st.checkbox(label, value=default, key=key, help=help_text)
    if tp is int:
        return int(
            st.number_input(
                label,
                value=int(default),
                step=1,
                key=key,
                help=help_text,
                min_value=f.metadata.get("min"),
                max_value=f.metadata.get("max"),
            )
        )
    if tp is float:
        return float(
            st.number_input(
                label,
                value=float(default),
                key=key,
                help=help_text,
                format="%g",
                min_value=_as_float(f.metadata.get("min")),
                max_value=_as_float(f.metadata.get("max")),
            )
        )
    if _is_int_tuple(tp):
        if f.name == "layers" and session is not None:
            picked = st.multiselect(
                label,
                list(range(session.n_layers)),
                default=list(default or []),
                key=key,
                help=(help_text or "") + " — empty means all",
            )
            return tuple(picked) or None
        text = st.text_input(
            label,
            value=", ".join(map(str, default or ())),
            key=key,
            help=(help_text or "") + " (comma-separated integers; empty: default)",
        )
        return _parse_ints(text, f.name) if text.strip() else (None if _optional(tp) else ())
    if tp is str or _optional(tp):
        return st.text_input(label, value=default or "", key=key, help=help_text) or default
    st.caption(f"{label}: {default!r} (not editable here)")
    return default


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _is_int_tuple(tp: Any) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)] if _optional(tp) else [tp]
    return any(get_origin(a) is tuple and get_args(a)[:1] == (int,) for a in args)


def _parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise ValueError(f"{name}: enter integers separated by commas") from exc


def show_result(result: Result, key: str) -> None:
    """Summary metrics and every figure of ``result``."""
    summary = result.summary()
    if summary:
        cols = st.columns(min(len(summary), 4))
        for col, (name, value) in zip(cols * 4, summary.items(), strict=False):
            col.metric(name, _fmt(value))
    for name, fig in result.figures().items():
        if name not in result.state_figures:
            st.plotly_chart(fig, key=f"{key}:{name}", width="stretch")
            continue
        event = st.plotly_chart(
            fig, key=f"{key}:{name}", width="stretch", on_select="rerun", selection_mode="points"
        )
        _inspect_link(result, name, event, key)


def _inspect_link(result: Result, figure: str, event: Any, key: str) -> None:
    """Under a figure of states: open the inspector on the clicked cell (or a picked one)."""
    points = list(getattr(getattr(event, "selection", None), "points", []) or [])
    picked = result.state_at(figure, points[0]) if points else None
    if picked is not None:
        layer, position = picked
        if st.button(f"🔍 Inspect layer {layer}, position {position}", key=f"{key}:{figure}:inspect"):
            state.open_inspector(result.prompt, layer, position)
    else:
        st.caption("Click a cell to open the state inspector on that hidden state.")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def settings_and_run(probe: Any, key: str, session: Any, text: str) -> Result | None:
    """Settings form and Run button for ``probe`` on ``text``; returns the result stored under ``key``.

    The run goes through :func:`state.run_with_status` (progress, cancel, guards); the result
    stays in the session so reruns of the page keep showing it.
    """
    with st.expander("Settings", expanded=False):
        config = config_form(probe.config_cls, key, session)
    if st.button("Run", type="primary", key=f"{key}:run", disabled=config is None):
        result = state.run_with_status(
            probe.title, lambda progress: probe.run(session, text, config, progress)
        )
        if result is not None:
            state.store(key, result)
    return state.stored(key)


def probe_page(probe_name: str, *, intro: str = "") -> Result | None:
    """The standard page: prompt, settings, run, figures, save. Returns the shown result."""
    probe = get_probe(probe_name)
    st.title(probe.title)
    if intro or probe.description:
        st.caption(intro or probe.description)
    session = state.session()
    if session is None:
        return None
    prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key=f"{probe_name}:prompt", height=80)
    result = settings_and_run(probe, probe_name, session, prompt)
    if result is not None:
        show_result(result, probe_name)
        state.save_report([result], session, probe_name)
    return result
