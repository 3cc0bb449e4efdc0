"""Reusable page parts: a config form built from a dataclass, and the standard probe page."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import streamlit as st

from lenslab.app import state, userfiles
from lenslab.app.plain import md, show_invalid
from lenslab.probes import Config, Result, get_probe, registered_probes
from lenslab.probes.fields import ConfigField, config_fields, range_problem, range_text
from lenslab.probes.plotting import readable

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"
ALLOWED = "Allowed:"  # a number field's help ends with "Allowed: <range>."


def number_field(
    label: str,
    value: float,
    *,
    key: str,
    min_value: float | None = None,
    max_value: float | None = None,
    integer: bool = True,
    help: str | None = None,
    where: Any = None,
) -> Any:
    """A number input checked on the server: the value, or None with the message shown.

    The browser gets no min/max (it would refuse an out-of-range entry silently and keep the old
    value); the range is checked here and named in the message and in the help text.
    """
    where = where if where is not None else st
    allowed = f"{ALLOWED} {range_text(min_value, max_value)}."
    kwargs: dict[str, Any] = {"step": 1} if integer else {"format": "%g"}
    raw = where.number_input(
        label,
        value=int(value) if integer else float(value),
        key=key,
        help=f"{help} {allowed}" if help else allowed,
        **kwargs,
    )
    problem = range_problem(label, raw, min_value, max_value)
    if problem is None and integer and raw is not None and float(raw) != int(raw):
        problem = f"{label} must be a whole number, got {raw:g}"
    if problem is not None:
        show_invalid([problem])
        return None
    return int(raw) if integer else float(raw)


def source_input(
    label: str, value: str, *, key: str, names: tuple[str, ...] = (), help: str | None = None
) -> str:
    """A text source: a built-in name, an uploaded .txt / .jsonl file, or a path in a data folder.

    Returns the spec the probe reads (the name, or the accepted file's path). Refused entries raise
    ``ValueError`` with the message to show: uploads too large, empty or binary; paths outside the
    data folders (without saying whether they exist); any path on a server reachable from other
    machines.
    """
    uploaded = st.file_uploader(
        f"{label}: upload a .txt / .jsonl file (optional)",
        type=list(userfiles.TEXT_SUFFIXES),
        key=f"{key}:upload",
        help=f"Up to {userfiles.upload_limit_mb()} MB of UTF-8 text; replaces the text field.",
        max_upload_size=userfiles.upload_limit_mb(),
    )
    typed = st.text_input(label, value=value, key=key, help=help).strip()
    if uploaded is not None:
        return str(userfiles.accept_text_upload(uploaded.name, uploaded.getvalue(), label).path)
    return checked_source(typed, label, names)


PROMPT_PARAM = "prompt"  # the query-string name of a page's prompt (the inspector uses it too)


def url_prompt(key: str, default: str, *, label: str = "Prompt", height: int = 80) -> str:
    """The page's prompt box, mirrored in the URL (``?prompt=...``): a link reopens the page with it.

    On the first render of a browser session the box starts at the link's prompt (else
    ``default``); every edit is written back to the query string, so copying the address bar
    shares what is on screen.
    """
    from_url = st.query_params.get(PROMPT_PARAM)
    if key not in st.session_state:
        st.session_state[key] = from_url if from_url else default
    text = st.text_area(label, key=key, height=height)
    if from_url != text:
        st.query_params[PROMPT_PARAM] = text
    return text


def file_input(label: str, key: str, *, help: str | None = None) -> str:
    """A .txt / .jsonl file: an upload, or (servers on this machine only) a path in a data folder.

    Returns the accepted file's path, or "" when there is none yet or it was refused (the message
    is shown in the one style).
    """
    limit = userfiles.upload_limit_mb()
    uploaded = st.file_uploader(
        label,
        type=list(userfiles.TEXT_SUFFIXES),
        key=f"{key}:upload",
        help=f"{help or ''} Up to {limit} MB of UTF-8 text.".strip(),
        max_upload_size=limit,
    )
    typed = ""
    if userfiles.path_fields_enabled():
        typed = st.text_input(
            "…or the path of a file inside a data folder",
            key=key,
            help="Allowed folders: LENSLAB_DATA_DIRS, the reports folder and lenslab's caches.",
        ).strip()
    try:
        if uploaded is not None:
            return str(userfiles.accept_text_upload(uploaded.name, uploaded.getvalue(), label).path)
        return str(userfiles.check_user_path(typed, label)) if typed else ""
    except ValueError as exc:
        show_invalid([str(exc)])
        return ""


def folder_input(label: str, key: str, *, help: str | None = None) -> str:
    """A folder inside a data folder (servers on this machine only); "" when none or refused."""
    if not userfiles.path_fields_enabled():
        st.info(f"{label}: typed paths are off on a server reachable from other machines.")
        return ""
    typed = st.text_input(label, key=key, help=help).strip()
    try:
        return str(userfiles.check_user_path(typed, label)) if typed else ""
    except ValueError as exc:
        show_invalid([str(exc)])
        return ""


def checked_source(typed: str, label: str, names: tuple[str, ...] = ()) -> str:
    """``typed`` if it is a name; a path only inside a data folder (``ValueError`` otherwise)."""
    if typed in names or not userfiles.looks_like_file(typed):
        return typed
    return str(userfiles.check_user_path(typed, label))


def config_form(
    config_cls: type[Config],
    key: str,
    session: Any | None = None,
    start: Config | None = None,
    *,
    link: str | None = None,
) -> Config | None:
    """Widgets for every field of ``config_cls``; returns the config or None (error shown).

    The form starts at ``start``, by default the registered probe's ``default_config()`` for this
    config class (so a probe's defaults live in one place), else ``config_cls()``. Each widget
    comes from the field's :class:`~lenslab.probes.fields.WidgetSpec`; text inputs are read back
    with the same parser as the CLI.

    The settings travel in the page's URL (:func:`linked_start`, :func:`link_settings`): a link
    opens the form at the settings it names, read by the same parsers and range checks as typed
    input. ``link`` is the prefix of their names in the query string: by default none for a
    page's main form (``?k=10``) and ``<suffix>.`` for a form keyed ``page:<suffix>``
    (``?eval.k=10``), so two forms on one page never share a name.
    """
    default = start if start is not None else _default_config(config_cls)
    prefix = link if link is not None else ("" if ":" not in key else key.split(":", 1)[1] + ".")
    start, unreadable = linked_start(config_cls, default, key, prefix, session)
    values: dict[str, Any] = {}
    for f in config_fields(config_cls):
        value = getattr(start, f.name)
        try:  # a field that does not parse must not hide the widgets after it
            values[f.name] = value if f.hidden else _field_widget(f, value, f"{key}:{f.name}", session)
        except ValueError as exc:
            unreadable.append(str(exc))
    unreadable = link_settings(config_cls, default, start, values, prefix, unreadable, session)
    if unreadable:
        show_invalid(unreadable)
        return None
    try:
        config = config_cls(**values)
        if session is not None:
            config.validate(session)
    except (ValueError, TypeError) as exc:
        show_invalid([str(exc)])
        return None
    return config


def _linked_fields(config_cls: type[Config]) -> list[ConfigField]:
    """The fields a URL carries: every shown field except file sources (an upload cannot travel)."""
    return [
        f
        for f in config_fields(config_cls)
        if not f.hidden
        and f.kind.widget != "fixed"
        and not (
            f.kind.widget == "text" and f.hint is str and userfiles.mentions_file(f.metadata.get("help"))
        )
    ]


def _is_file_source(f: ConfigField) -> bool:
    return f.kind.widget == "text" and f.hint is str and userfiles.mentions_file(f.metadata.get("help"))


def _url_value(
    f: ConfigField,
    raw: str,
    session: Any | None,
    *,
    bounded: bool = False,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """The value a link's text denotes for ``f``: the CLI's parser, then the layer range check.

    Number ranges are checked by a config form's widget (the same message as a typed value);
    ``bounded`` checks them here, for hand-built widgets that cannot even show an out-of-range
    value (a slider). Layers are checked here, since a multiselect cannot show a layer the model
    does not have; ``check`` is a page's own test of the value (``ValueError`` with the message).
    """
    value = f.parse(raw)
    if bounded and f.kind.widget in ("int", "float"):
        problem = range_problem(f.name, value, f.metadata.get("min"), f.metadata.get("max"))
        if problem is not None:
            raise ValueError(problem)
    if f.name == "layers" and f.kind.widget == "int_list" and session is not None and value:
        session.check_layers(value)
    if check is not None:
        check(value)
    return value


def _link_problem(f: ConfigField, raw: str | None, session: Any | None, **how: Any) -> str | None:
    """Why the link's text ``raw`` for ``f`` is refused (None: read fine, or no such setting)."""
    if raw is None:
        return None
    try:
        _url_value(f, raw, session, **how)
    except ValueError as exc:
        return str(exc)
    return None


def linked_start(
    config_cls: type[Config], default: Config, key: str, prefix: str, session: Any | None
) -> tuple[Config, list[str]]:
    """Where the form starts, and the link's settings that were refused (each names its field).

    The URL is read on the form's first render in a browser session (later edits are the
    widgets'); a refused setting starts at its default and keeps the form from running for as
    long as the URL holds it (:func:`link_settings`).
    """
    stored = f"{key}:_linked_start"
    problems = []
    for f in _linked_fields(config_cls):
        raw = st.query_params.get(prefix + f.name)
        if raw is None:
            continue
        try:
            _url_value(f, raw, session)
        except ValueError as exc:
            problems.append(str(exc))
    if stored not in st.session_state:
        values = {}
        for f in _linked_fields(config_cls):
            raw = st.query_params.get(prefix + f.name)
            if raw is not None:
                with contextlib.suppress(ValueError):  # refused: listed above, starts at the default
                    values[f.name] = _url_value(f, raw, session)
        st.session_state[stored] = values
    # only the link's values are kept: fields the page sets (hidden ones) follow its current start
    return dataclasses.replace(default, **st.session_state[stored]), problems


def _same(f: ConfigField, a: Any, b: Any) -> bool:
    """Whether two values of ``f`` read the same (floats and tuples compared by their text)."""
    try:
        return f.format(a) == f.format(b)
    except ValueError:
        return a == b


def link_settings(
    config_cls: type[Config],
    default: Config,
    start: Config,
    values: dict[str, Any],
    prefix: str,
    problems: list[str],
    session: Any | None = None,
) -> list[str]:
    """Write the form's settings that differ from the defaults into the URL; returns the problems left.

    A setting the link gave but could not be read stays in the URL (and its message on screen)
    until its widget is changed: the page runs nothing meanwhile.
    """
    left = list(problems)
    for f in _linked_fields(config_cls):
        if f.name not in values:  # its widget refused the value: the message is already listed
            continue
        name = prefix + f.name
        refused = _link_problem(f, st.query_params.get(name), session)
        left = _write_link(
            f, name, values[f.name], getattr(default, f.name), getattr(start, f.name), left, refused
        )
    return left


def _write_link(
    f: ConfigField, name: str, value: Any, default: Any, start: Any, problems: list[str], refused: str | None
) -> list[str]:
    """Write one setting into the URL as ``name`` (left out at its default); returns the problems left.

    ``refused`` is the message for the link's own text, if it was refused: it stays, and the text
    stays in the URL, while the widget still shows where it started.
    """
    raw = st.query_params.get(name)
    left = list(problems)
    if raw is not None and refused is not None:
        if _same(f, value, start):
            return left  # untouched: the refusal stands
        left = [p for p in left if p != refused]
    try:
        text = None if _same(f, value, default) else f.format(value)
    except ValueError:
        return left  # no text reads back as this value: it cannot travel in a link
    if text is None and raw is not None:
        del st.query_params[name]
    elif text is not None and raw != text:
        st.query_params[name] = text
    return left


class LinkedWidgets:
    """Hand-built widgets whose values travel in the page's URL, as a config form's settings do.

    For widgets a page draws itself (a slider, a prompt-set picker, a problem box), one per config
    field: :meth:`start` gives the value the widget starts at (the link's, read on the browser
    session's first render with the CLI's parser, the field's range and the page's ``check``; else
    ``default``); :meth:`keep` writes the widget's value back (left out at the default).
    :meth:`problems` lists the link's refused settings, worded as a config form's: each stays, and
    the page runs nothing, until its widget is changed. ``prefix`` keeps two panels of one page
    apart in the query string.
    """

    def __init__(self, key: str, *, prefix: str = "", session: Any | None = None) -> None:
        self.key, self.prefix, self.session = key, prefix, session
        self._started: dict[str, tuple[Any, Any, str | None]] = {}  # name → (default, start, refusal)
        self._problems: list[str] = []

    def start(self, f: ConfigField, default: Any, check: Callable[[Any], None] | None = None) -> Any:
        """Where the widget for ``f`` starts: the link's value if it is readable, else ``default``."""
        raw = st.query_params.get(self.prefix + f.name)
        refused = _link_problem(f, raw, self.session, bounded=True, check=check)
        if refused is not None and refused not in self._problems:
            self._problems.append(refused)
        stored = f"{self.key}:_linked:{self.prefix}{f.name}"
        if stored not in st.session_state:  # later edits are the widget's
            readable = raw is not None and refused is None
            st.session_state[stored] = {"value": f.parse(raw)} if readable else {}
        start = st.session_state[stored].get("value", default)
        self._started[f.name] = (default, start, refused)
        return start

    def keep(self, f: ConfigField, value: Any) -> None:
        """Write the widget's ``value`` into the URL (call after :meth:`start` for the same field)."""
        default, start, refused = self._started[f.name]
        self._problems = _write_link(f, self.prefix + f.name, value, default, start, self._problems, refused)

    def drop(self, f: ConfigField) -> None:
        """The widget holds what cannot travel in a link (an uploaded file): the URL names nothing."""
        name = self.prefix + f.name
        if name in st.query_params:
            del st.query_params[name]
        refused = self._started.get(f.name, (None, None, None))[2]
        self._problems = [p for p in self._problems if p != refused]

    def problems(self) -> list[str]:
        """The link's settings that were refused and are still in the URL."""
        return list(self._problems)


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
    if spec.kind in ("int", "float"):
        raw = st.number_input(
            spec.label,
            value=int(start) if spec.kind == "int" else float(start),
            key=key,
            help=f"{spec.help or ''} {ALLOWED} {range_text(spec.min, spec.max)}.".strip(),
            **({"step": 1} if spec.kind == "int" else {"format": "%g"}),
        )
        problem = range_problem(f.name, raw, spec.min, spec.max)
        if problem:  # the browser gets no bounds: it would keep the old value without a word
            raise ValueError(problem)
        return int(raw) if spec.kind == "int" else float(raw)
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
        if f.hint is str and userfiles.mentions_file(spec.help):
            return source_input(f.name, spec.text, key=key, help=spec.help) or start
        text = st.text_input(spec.label, value=spec.text, key=key, help=spec.help)
        if f.hint is str:
            checked_source(text.strip(), f.name)  # a typed path must lie in a data folder
        return f.parse(text) if text or spec.optional else start
    st.caption(f"{md(spec.label)}: {md(repr(start))} (not editable here)")
    return start


def show_result(result: Result, key: str, skip: tuple[str, ...] = ()) -> None:
    """Summary metrics and every figure of ``result`` (except those named in ``skip``: already shown)."""
    summary = result.summary()
    lines = {k: v for k, v in summary.items() if isinstance(v, str) and len(v) > LINE_CHARS}
    grid = {k: v for k, v in summary.items() if k not in lines}
    if grid:
        cols = st.columns(min(len(grid), 4))
        # text values read alike: all as metrics, or (one would be cut off) all as wrapped text
        texts_fit = all(_fits_metric("", v) for v in grid.values() if isinstance(v, str))
        for col, (name, value) in zip(cols * 4, grid.items(), strict=False):
            if not _fits_metric(name, value) or (isinstance(value, str) and not texts_fit):
                col.caption(md(name))
                col.markdown(md(value))
            else:
                col.metric(md(name), _fmt(value))
    for name, value in lines.items():  # a sentence: one full-width line, not a narrow column
        st.markdown(f"**{md(name)}:** {md(value)}")
    for name, fig in result.figures().items():
        if name in skip:
            continue
        readable(fig)
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
        if st.button(
            f"Inspect layer {layer}, position {position}",
            key=f"{key}:{figure}:inspect",
            icon=":material/frame_inspect:",
        ):
            state.open_inspector(result.prompt, layer, position)
    else:
        st.caption("Click a cell to open the state inspector on that hidden state.")


METRIC_CHARS = 12  # longer text does not fit a metric's large font in a quarter of a 1280 px page
METRIC_LABEL_CHARS = 28  # nor a longer label in its small one
LINE_CHARS = 48  # longer text gets a full-width line under the summary's grid


def _fits_metric(name: str, value: Any) -> bool:
    """Whether ``st.metric`` shows this summary entry whole (it cuts label and value with an ellipsis)."""
    text = value if isinstance(value, str) else _fmt(value)
    return len(str(name)) <= METRIC_LABEL_CHARS and len(text) <= METRIC_CHARS


def _fmt(value: Any) -> str:
    """A summary value for ``st.metric`` (whose value is Markdown): numbers short, text literal."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else md(value)


def cell_text(value: Any) -> str:
    """A table cell as text: floats to four significant digits (no 0.6272377967834473), else ``str``."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def rounded(value: Any) -> Any:
    """``value`` with every float inside (dicts, lists) rounded to four significant digits, for display."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def settings_and_run(probe: Any, key: str, session: Any, text: str, *, ready: bool = True) -> Result | None:
    """Settings form and Run button for ``probe`` on ``text``; returns the result stored under ``key``.

    The run goes through :func:`state.run_with_status` (progress, cancel, guards); the result
    stays in the session so reruns of the page keep showing it. ``ready=False`` (the page refused
    an input of its own, with the message shown) keeps Run disabled.
    """
    with st.expander("Settings", expanded=False):
        config = config_form(probe.config_cls, key, session, probe.default_config())
    run_hint(probe.title)
    clicked = st.button("Run", type="primary", key=f"{key}:run", disabled=config is None or not ready)
    if clicked and config is not None and ready:
        state.store(key, None)  # a new run replaces the shown result, also when it is cancelled
        result = state.run_with_status(
            probe.title, lambda progress: probe.run(session, text, config, progress)
        )
        if result is not None:
            state.store(key, result)
    return state.stored(key)


SLOW_S = 10.0  # runs expected to take longer get an estimate next to their button


def run_hint(label: str) -> None:
    """Before a run: that the last one was cancelled; if expected to exceed :data:`SLOW_S`, its usual time."""
    state.cancelled_notice(label)
    expected = state.expected_seconds(label)
    if expected is not None and expected[0] > SLOW_S:
        seconds, n = expected
        st.caption(
            f":material/timer: Expected ≈ {seconds:.0f} s (median of {n} earlier "
            f"run{'s' if n != 1 else ''} on this server, without waiting for other users)."
        )


def probe_page(probe_name: str, *, intro: str = "") -> Result | None:
    """The standard page: prompt, settings, run, figures, save. Returns the shown result."""
    probe = get_probe(probe_name)
    st.title(probe.title)
    if intro or probe.description:
        st.caption(intro or probe.description)
    session = state.session()
    if session is None:
        return None
    prompt = url_prompt(f"{probe_name}:prompt", DEFAULT_PROMPT)
    result = settings_and_run(probe, probe_name, session, prompt)
    if result is not None:
        show_result(result, probe_name)
        state.save_report([result], session, probe_name)
    return result
