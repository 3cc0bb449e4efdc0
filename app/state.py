"""The only place holding Streamlit state: the shared model, the sidebar, per-session results.

The model is loaded once per process with ``st.cache_resource`` and shared by every browser
session; the ModelSession's lock keeps their forward passes from interleaving. Errors from probes
become ``st.error`` messages (never tracebacks) so the app stays usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from lenslab.analyses.report import Report, default_report_name, report_meta, resolve_in
from lenslab.app import heap, userfiles
from lenslab.app.plain import md, show_invalid
from lenslab.models import DEFAULT_MODEL, ModelSession, available_offline, guards
from lenslab.models.paths import reports_dir
from lenslab.probes import Result
from lenslab.probes.plotting import readable
from lenslab.progress import Cancelled

log = logging.getLogger("lenslab.app")
OTHER = "other (HF id or local folder)…"
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, Cancelled)


@st.cache_resource(show_spinner=False, max_entries=2, on_release=heap.released)
def _shared_session(name: str, device: str, dtype: str) -> ModelSession:
    loaded = ModelSession.load(name, device=device, dtype=dtype)
    heap.settle()  # the model lives as long as the server: out of every later full collection
    return loaded


_PAGES: dict[str, Any] = {}


def set_pages(pages: dict[str, Any]) -> None:
    """Remember the navigation's pages by URL path (for links such as 'open in inspector')."""
    _PAGES.clear()
    _PAGES.update(pages)


def page(url: str) -> Any | None:
    """The navigation's page at ``url`` (None when pages are rendered on their own, as in tests)."""
    return _PAGES.get(url)


def open_inspector(prompt: str, layer: int, position: int) -> None:
    """Switch to the state inspector on (prompt, layer, position), state kept in the URL."""
    from lenslab.probes.inspector import StateRef

    params = StateRef(prompt, layer, position).to_query()
    page = _PAGES.get("inspector")
    if page is None:  # pages rendered on their own (tests): just record the state
        st.query_params.from_dict(params)
        return
    st.switch_page(page, query_params=params)


def devices() -> list[str]:
    """Devices offered in the sidebar: CUDA first when present."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def sidebar() -> None:
    """Model picker, device/dtype and memory facts; stores the choice in session state."""
    ss = st.session_state
    with st.sidebar:
        st.markdown("### :material/biotech: lenslab")
        offline = available_offline()
        options = [*offline, OTHER]
        default = os.environ.get("LENSLAB_MODEL", DEFAULT_MODEL)
        choice = st.selectbox(
            "Model",
            options,
            index=options.index(default) if default in options else 0,
            key="model_choice",
            help="Embedded models work offline; others need a hub or a local HF folder.",
        )
        ss["model_refused"] = ""
        if choice == OTHER:
            local = userfiles.path_fields_enabled()
            typed = st.text_input(
                "HF id or local folder" if local else "HF id",
                key="model_other",
                placeholder="gpt2",
                help="A local folder must lie inside a data folder (LENSLAB_DATA_DIRS or the model cache)."
                if local
                else "Typed paths are off on a server reachable from other machines.",
            ).strip()
            ss["model_name"] = typed or default
            if typed and (userfiles.looks_like_path(typed) or Path(typed).exists()):
                try:
                    ss["model_name"] = str(userfiles.check_user_path(typed, "Model folder"))
                except userfiles.PathRefused as exc:
                    ss["model_refused"] = str(exc)
        else:
            ss["model_name"] = choice
        ss["device"] = st.selectbox("Device", devices(), key="device_choice")
        dtypes = ["float32", "bfloat16"] if ss["device"] == "cuda" else ["float32", "float64"]
        ss["dtype"] = st.selectbox("dtype", dtypes, key="dtype_choice")
        session = ss.get("_session")
        if session is not None and session.model_id:
            facts = session.describe()
            st.caption(
                f"{facts['architecture']} · {facts['n_layers']} layers · d_model "
                f"{facts['d_model']} · {facts['n_params'] / 1e6:.0f}M params · {facts['device']}"
            )
        st.caption(memory_line())


def memory_line() -> str:
    """One line of memory facts for the sidebar."""
    if torch.cuda.is_available():
        used = torch.cuda.memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"GPU memory: {used:.2f} / {total:.1f} GiB"
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return f"CPU · peak process memory {rss:.2f} GiB"
    except (ImportError, OSError):
        return "CPU"


def session() -> ModelSession | None:
    """The shared ModelSession for the sidebar's choice, loading it (once) with a status box."""
    ss = st.session_state
    heap.settle_if_released()  # a model the cache dropped is collected once, here
    if ss.get("model_refused"):
        show_invalid([ss["model_refused"]])
        return None
    name = ss.get("model_name", os.environ.get("LENSLAB_MODEL", DEFAULT_MODEL))
    device = ss.get("device", devices()[0])
    dtype = ss.get("dtype", "float32")
    try:
        with st.spinner(f"Loading {name} on {device} (first time converts the model: ~1 min)…"):
            loaded = _shared_session(name, device, dtype)
    except USER_ERRORS as exc:
        st.error(f"Could not load model: {md(exc)}")
        return None
    except Exception as exc:  # keep the app alive on any loader failure
        log.exception("model load failed")
        st.error(f"Could not load model {md(repr(name))}: {type(exc).__name__}: {md(exc)}")
        return None
    ss["_session"] = loaded
    return loaded


def run_with_status(label: str, job: Callable[[Callable[[float, str], None]], Any]) -> Any | None:
    """Run ``job(progress)`` inside a status box with a progress bar; errors become messages.

    The run is one scheduler job on the shared model's lock: while other users' runs hold the
    model the box says "waiting for the model (n ahead)", and the final line splits the time
    into seconds waited for the model and seconds run.
    """
    cancel_key = f"cancel:{label}"
    st.session_state[cancel_key] = False
    st.session_state.pop(f"cancelled:{label}", None)
    shared = st.session_state.get("_session")
    scheduler = getattr(shared, "lock", None)
    cancel_slot = st.empty()
    cancel_slot.button(
        "Cancel",
        icon=":material/stop:",
        key=f"cancel-button:{label}",
        on_click=request_cancel,
        args=(label,),
        help="stops this run at its next progress update; nothing of it is kept",
    )
    early_slot = st.empty()
    early = early_slot.container()

    slots: dict[str, tuple[Any, int]] = {}

    def partial(name: str, figure: Any) -> None:  # a probe's first figures, shown before it ends
        slot, shown = slots.get(name) or (early.empty(), 0)  # a figure shown again replaces itself
        slots[name] = (slot, shown + 1)
        slot.plotly_chart(readable(figure), key=f"partial:{label}:{name}:{shown}", width="stretch")

    try:
        return _run_in_status(label, job, cancel_key, scheduler, partial)
    finally:  # the finished result (shown by the page) replaces the early figures; a failed run keeps none
        cancel_slot.empty()
        early_slot.empty()


def request_cancel(label: str) -> None:
    """What the Cancel button of a run labelled ``label`` does: flag it to stop at its next progress.

    In the browser the click also interrupts the page's script at its next Streamlit call, and the
    rerun that follows shows :func:`cancelled_notice`; either way no result of the run is kept.
    """
    st.session_state[f"cancel:{label}"] = True
    st.session_state[f"cancelled:{label}"] = True
    st.toast(f"{md(label)}: cancelling…", icon=":material/stop:")


def cancelled_notice(label: str) -> None:
    """Say so, once, where the last run labelled ``label`` was cancelled by the user."""
    if st.session_state.pop(f"cancelled:{label}", False):
        st.warning(f"{md(label)}: cancelled, no result (run it again to see one).")


def _run_in_status(
    label: str,
    job: Callable[[Callable[[float, str], None]], Any],
    cancel_key: str,
    scheduler: Any,
    partial: Callable[[str, Any], None],
) -> Any | None:
    """The body of :func:`run_with_status`: the status box, the scheduler job and the guards."""
    with st.status(label, expanded=False) as status:
        bar = st.progress(0.0)

        def progress(fraction: float, message: str = "") -> None:
            if st.session_state.get(cancel_key):
                raise Cancelled("cancelled by the user")
            bar.progress(min(max(float(fraction), 0.0), 1.0), text=message or None)

        progress.partial = partial  # type: ignore[attr-defined]  # see lenslab.progress.show_partial

        def on_wait(ahead: int) -> None:
            if st.session_state.get(cancel_key):
                raise Cancelled("cancelled by the user")
            status.update(label=f"{label}: waiting for the model ({ahead} ahead)" if ahead else label)

        accounting = scheduler.job(label, on_wait) if hasattr(scheduler, "job") else _no_job(label)
        try:
            limit = guards.time_limit_s(guards.DEFAULT_APP_TIME_LIMIT_S)
            with accounting as record, guards.oom_guard(label), guards.deadline(limit):
                value = job(guards.time_limited(progress, limit))
        except ValueError as exc:  # bad input found while running (e.g. a position past the prompt)
            if isinstance(exc, guards.OutOfMemory):
                guards.release_memory()
            status.update(label=f"{label}: refused", state="error", expanded=True)
            show_invalid([str(exc)])
            return None
        except Cancelled as exc:
            guards.release_memory()
            if not st.session_state.get(cancel_key):  # stopped by the time limit, not by the user
                status.update(label=f"{label}: stopped", state="error", expanded=True)
                st.error(md(exc))
                return None
            status.update(label=f"{label}: cancelled", state="error", expanded=False)
            st.session_state.pop(f"cancelled:{label}", None)
            st.warning(f"{md(label)}: cancelled, no result (run it again to see one).")
            return None
        except USER_ERRORS as exc:
            if isinstance(exc, guards.OutOfMemory):
                guards.release_memory()
            status.update(label=f"{label}: stopped", state="error", expanded=True)
            st.error(md(exc))
            return None
        except torch.OutOfMemoryError:
            _free_memory()
            status.update(label=f"{label}: out of memory", state="error", expanded=True)
            st.error("Out of memory: try a shorter prompt, fewer layers or the CPU.")
            return None
        except Exception as exc:
            log.exception("%s failed", label)
            status.update(label=f"{label}: failed", state="error", expanded=True)
            st.error(f"{type(exc).__name__}: {md(exc)}")
            return None
        _record_run(label, record.ran_s)
        status.update(label=f"{label}: {timing_text(record)}", state="complete")
    return value


@st.cache_resource(show_spinner=False)
def _run_history() -> dict[str, list[float]]:
    """Seconds each kind of run took on this server (shared by all sessions; recent ones only)."""
    return {}


def _history_key(label: str) -> str:
    shared = st.session_state.get("_session")
    return f"{getattr(shared, 'model_id', '')}:{getattr(shared, 'device', '')}:{label}"


def expected_seconds(label: str) -> tuple[float, int] | None:
    """(median seconds, runs) of earlier runs labelled ``label`` on this model, if any."""
    times = _run_history().get(_history_key(label))
    if not times:
        return None
    ordered = sorted(times)
    return ordered[len(ordered) // 2], len(times)


def _record_run(label: str, seconds: float) -> None:
    times = _run_history().setdefault(_history_key(label), [])
    times.append(seconds)
    del times[:-20]


def timing_text(record: Any) -> str:
    """``done in 9.1 s (waited 6.0 s for the model, ran 3.1 s)``: wall time split truthfully."""
    total = record.elapsed_s
    if record.waited_s < 0.05:
        return f"done in {total:.1f} s"
    return f"done in {total:.1f} s (waited {record.waited_s:.1f} s for the model, ran {record.ran_s:.1f} s)"


@contextlib.contextmanager
def _no_job(label: str) -> Iterator[Any]:
    """Timing for a run outside any shared model (nothing to wait for)."""
    from lenslab.models.scheduler import Job

    yield Job(label)


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def store(key: str, value: Any) -> None:
    """Keep a result for this browser session."""
    st.session_state[f"result:{key}"] = value


def stored(key: str) -> Any | None:
    """A result kept by :func:`store`, if any."""
    return st.session_state.get(f"result:{key}")


def report_folder() -> Path:
    """The folder reports are saved into and listed from."""
    return reports_dir()


def default_title(results: list[Result]) -> str:
    """What was run: the probes' titles (all of them, as the inspector runs several) and the prompt."""
    from lenslab.probes import registered_probes

    probes = registered_probes()
    names = [probes[r.probe].title if r.probe in probes else r.probe.replace("_", " ") for r in results]
    title = ", ".join(dict.fromkeys(names))
    prompt = " ".join(results[0].prompt.split())
    if prompt:
        title += f" — “{prompt[:48]}{'…' if len(prompt) > 48 else ''}”"
    return title


def save_report(results: list[Result], session_: ModelSession | None, key: str) -> None:
    """A 'save report' form: title field + button; shows where it was saved."""
    with st.form(f"save:{key}", clear_on_submit=False, border=False):
        title = st.text_input("Report title", value=default_title(results), key=f"t:{key}")
        submitted = st.form_submit_button("Save report", icon=":material/save:")
    if not submitted:
        return
    try:
        meta = report_meta(results, session_, title)
        folder = report_folder()
        path = Report(results, meta).save(resolve_in(folder, default_report_name(results)))
    except USER_ERRORS as exc:
        st.error(f"Could not save the report: {md(exc)}")
        return
    except OSError as exc:
        st.error(f"Could not write the report: {md(exc)}")
        return
    st.success(f"Saved report {path.name} (open it on the Reports page)")
