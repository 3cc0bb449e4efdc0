"""Sweeps page: start a sweep (probes × a prompt source), follow it, cancel or resume it, open its report."""

from __future__ import annotations

import os

import streamlit as st

from lenslab.analyses.report import Report
from lenslab.app.components import number_field, show_result
from lenslab.models import DEFAULT_MODEL
from lenslab.probes import registered_probes
from lenslab.sweeps.launch import SweepEntry, cancel, list_sweeps, start_detached
from lenslab.sweeps.runner import REPORT_DIR, new_sweep_folder
from lenslab.sweeps.sources import builtin_sources

TITLE = "Sweeps"
ICON = ":material/tune:"
ORDER = 85
URL = "sweeps"
KEY = "sweeps"
UPLOAD = "upload a .txt / .jsonl file"


def _start_form() -> None:
    """Probes, prompt source (built-in or uploaded), settings; Start launches ``lenslab sweep``."""
    with st.expander("Start a sweep", expanded=not list_sweeps(), icon=":material/play_arrow:"):
        probes = st.multiselect(
            "Probes", sorted(registered_probes()), default=["logit_lens"], key=f"{KEY}:probes"
        )
        choice = st.radio("Prompts", ["built-in set", UPLOAD], horizontal=True, key=f"{KEY}:kind")
        upload = None
        if choice == UPLOAD:
            upload = st.file_uploader(
                "One prompt per line (.txt) or JSON lines (.jsonl)", type=["txt", "jsonl"], key=f"{KEY}:up"
            )
            source = ""
        else:
            source = st.selectbox("Built-in set", builtin_sources(), key=f"{KEY}:builtin")
        cols = st.columns(3)
        limit = number_field(
            "At most (0: all)", 0, key=f"{KEY}:limit", min_value=0, max_value=100_000, where=cols[0]
        )
        backend = cols[1].selectbox("Backend", ["ray", "serial"], key=f"{KEY}:backend")
        workers = number_field(
            "Workers (0: one per CPU)", 0, key=f"{KEY}:workers", min_value=0, max_value=4096, where=cols[2]
        )
        config = st.text_input("Settings for every probe (key=value, space-separated)", key=f"{KEY}:config")
        grid = st.text_input("Grid (e.g. k=5,10; space-separated axes)", key=f"{KEY}:grid")
        model = st.session_state.get("model_name", os.environ.get("LENSLAB_MODEL", DEFAULT_MODEL))
        st.caption(f"Model: `{model}` (the sidebar's choice); each worker loads it once.")
        invalid = limit is None or workers is None
        if not st.button("Start sweep", type="primary", key=f"{KEY}:start", disabled=not probes or invalid):
            return
        if choice == UPLOAD and upload is None:
            st.error("Upload a prompt file first.")
            return
        folder = new_sweep_folder()
        if upload is not None:
            folder.mkdir(parents=True, exist_ok=True)
            suffix = ".jsonl" if upload.name.lower().endswith(".jsonl") else ".txt"
            path = folder / f"prompts-upload{suffix}"
            path.write_bytes(upload.getvalue())
            source = str(path)
        arguments = [",".join(probes), "--source", source, "--model", model, "--out", str(folder)]
        arguments += ["--backend", backend, "--limit", str(int(limit))]
        if workers:
            arguments += ["--workers", str(int(workers))]
        for pair in config.split():
            arguments += ["--config", pair]
        for axis in grid.split():
            arguments += ["--grid", axis]
        start_detached(arguments, folder)
        st.success(f"Started: {folder.name}")


def _show_entry(entry: SweepEntry) -> None:
    status = entry.status
    if status is not None and status.items_total:
        st.progress(min(1.0, status.items_done / status.items_total), text=status.line())
        st.caption(f"state: {status.state} · {status.message}")
    cols = st.columns(3)
    if entry.running and cols[0].button("Cancel", key=f"{KEY}:cancel:{entry.name}", icon=":material/stop:"):
        cancel(entry)
        st.info("Cancelling: finished shards are kept; resume to finish the rest.")
    if (
        not entry.running
        and not entry.has_report
        and cols[1].button("Resume", key=f"{KEY}:resume:{entry.name}", icon=":material/resume:")
    ):
        backend = status.backend if status is not None and status.backend else "ray"
        start_detached(["--resume", str(entry.path), "--backend", backend], entry.path)
        st.info("Resumed: only unfinished shards run.")
    if entry.has_report and cols[2].toggle("Open report", key=f"{KEY}:open:{entry.name}"):
        _show_report(entry)


def _show_report(entry: SweepEntry) -> None:
    try:
        report = Report.load(entry.path / REPORT_DIR)
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot open this report: {exc}")
        return
    for command in report.meta.get("rerun", []):
        st.code(command, language="bash")
    result = report.results[0]
    show_result(result, f"{KEY}:{entry.name}")
    failures = result.failures() if hasattr(result, "failures") else []
    if failures:
        st.markdown(f"**{len(failures)} item(s) failed**")
        st.table([{"item": i, "prompt": p[:80], "error": e} for i, p, e in failures[:200]])


@st.fragment(run_every=2.0)
def _sweep_list() -> None:
    """The sweeps, refreshed every 2 s while the page is open."""
    entries = list_sweeps()
    if not entries:
        st.info("No sweeps yet.")
        return
    for entry in entries:
        state = entry.status.state if entry.status else "?"
        with st.expander(f"{entry.title} — {state} · {entry.name}", expanded=entry.running):
            _show_entry(entry)


def render() -> None:
    """Start form on top, the sweeps below."""
    st.title("Sweeps")
    st.caption(
        "Run probes over many prompts (a built-in set or an uploaded file) on local Ray workers "
        "or a cluster (`RAY_ADDRESS`). Each item is one prompt × grid point; rates come with 95% "
        "intervals over prompts. Cancelled sweeps keep finished shards and can be resumed."
    )
    _start_form()
    _sweep_list()
