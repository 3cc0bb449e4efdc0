"""Reusable page parts: a config form built from a dataclass, and the standard probe page."""

from __future__ import annotations

from typing import Any

import streamlit as st

from lenslab.app import state
from lenslab.probes import Config, Result, get_probe, registered_probes
from lenslab.probes.fields import ConfigField, config_fields

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"


def config_form(
    config_cls: type[Config], key: str, session: Any | None = None, start: Config | None = None
) -> Config | None:
    """Widgets for every field of ``config_cls``; returns the config or None (error shown).

    The form starts at ``start``, by default the registered probe's ``default_config()`` for this
    config class (so a probe's defaults live in one place), else ``config_cls()``. Each widget
    comes from the field's :class:`~lenslab.probes.fields.WidgetSpec`; text inputs are read back
    with the same parser as the CLI.
    """
    start = start if start is not None else _default_config(config_cls)
    values: dict[str, Any] = {}
    unreadable = []
    for f in config_fields(config_cls):
        value = getattr(start, f.name)
        try:  # a field that does not parse must not hide the widgets after it
            values[f.name] = value if f.hidden else _field_widget(f, value, f"{key}:{f.name}", session)
        except ValueError as exc:
            unreadable.append(str(exc))
    if unreadable:
        st.error(f"Invalid settings: {'; '.join(unreadable)}")
        return None
    try:
        config = config_cls(**values)
        if session is not None:
            config.validate(session)
    except (ValueError, TypeError) as exc:
        st.error(f"Invalid settings: {exc}")
        return None
    return config


def _default_config(config_cls: type[Config]) -> Config:
    for cls in registered_probes().values():
        if cls.config_cls is config_cls:
            return cls().default_config()
    return config_cls()


def _field_widget(f: ConfigField, start: Any, key: str, session: Any | None) -> Any:
    """One streamlit widget for field ``f`` starting at ``start``; returns the value it holds."""
    spec = f.widget(start)
    if spec.kind == "select":
        options = list(spec.options)
        return st.selectbox(spec.label, options, index=options.index(start), key=key, help=spec.help)
    if spec.kind == "checkbox":
        return st.checkbox(spec.label, value=start, key=key, help=spec.help)
    if spec.kind == "int":
        return int(
            st.number_input(
                spec.label,
                value=int(start),
                step=1,
                key=key,
                help=spec.help,
                min_value=spec.min,
                max_value=spec.max,
            )
        )
    if spec.kind == "float":
        return float(
            st.number_input(
                spec.label,
                value=float(start),
                key=key,
                help=spec.help,
                format="%g",
                min_value=_as_float(spec.min),
                max_value=_as_float(spec.max),
            )
        )
    if spec.kind == "int_list" and f.name == "layers" and session is not None:
        picked = st.multiselect(
            spec.label,
            list(range(session.n_layers)),
            default=list(start or []),
            key=key,
            help=(spec.help or "") + " — empty means all",
        )
        return tuple(picked) or (None if spec.optional else ())
    if spec.kind in ("int_list", "text_list"):
        what = "integers" if spec.kind == "int_list" else "values"
        text = st.text_input(
            spec.label,
            value=spec.text,
            key=key,
            help=(spec.help or "") + f" (comma-separated {what}; empty: default)",
        )
        return f.parse(text)
    if spec.kind == "text":
        text = st.text_input(spec.label, value=spec.text, key=key, help=spec.help)
        return f.parse(text) if text or spec.optional else start
    st.caption(f"{spec.label}: {start!r} (not editable here)")
    return start


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def show_result(result: Result, key: str, skip: tuple[str, ...] = ()) -> None:
    """Summary metrics and every figure of ``result`` (except those named in ``skip``: already shown)."""
    summary = result.summary()
    if summary:
        cols = st.columns(min(len(summary), 4))
        for col, (name, value) in zip(cols * 4, summary.items(), strict=False):
            col.metric(name, _fmt(value))
    for name, fig in result.figures().items():
        if name in skip:
            continue
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
        config = config_form(probe.config_cls, key, session, probe.default_config())
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
