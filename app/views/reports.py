"""Reports page: list, search, open (re-rendered from saved data), download and delete."""

import streamlit as st

from lenslab.analyses.report import Report, delete_report, list_reports, zip_report
from lenslab.app import state
from lenslab.app.components import show_result

TITLE = "Reports"
ICON = "📁"
ORDER = 90
URL = "reports"


def render() -> None:
    """Saved reports; opening one needs no model."""
    st.title("Reports")
    folder = state.report_folder()
    st.caption(f"Folder: `{folder}`")
    query = st.text_input("Search (model, probe, prompt, title)", key="reports:q").strip().lower()
    entries = list_reports(folder)
    if query:
        entries = [e for e in entries if query in " ".join([e.title, e.model, e.prompt, *e.probes]).lower()]
    if not entries:
        st.info("No reports yet: run a probe and press “Save report”.")
        return
    _compare(entries)
    for entry in entries:
        with st.expander(f"{entry.title} — {', '.join(entry.probes)} · {entry.model} · {entry.created}"):
            st.text(entry.prompt[:500])
            cols = st.columns(3)
            opened = cols[0].toggle("Open", key=f"open:{entry.name}")
            cols[1].download_button(
                "⬇ Download zip",
                data=zip_report(entry.path),
                file_name=f"{entry.name}.zip",
                key=f"dl:{entry.name}",
                mime="application/zip",
            )
            if cols[2].button("🗑 Delete", key=f"del:{entry.name}"):
                try:
                    delete_report(folder, entry.name)
                except (ValueError, FileNotFoundError, OSError) as exc:
                    st.error(str(exc))
                else:
                    st.rerun()
            if opened:
                _show_report(entry, "report")


def _compare(entries) -> None:
    """Two reports side by side, each re-rendered from its saved data."""
    labels = {f"{e.title} · {e.name}": e for e in entries}
    picked = st.multiselect("Compare two reports side by side", list(labels), max_selections=2, key="cmp")
    if len(picked) != 2:
        return
    for column, name in zip(st.columns(2), picked, strict=True):
        entry = labels[name]
        with column:
            st.subheader(entry.title)
            st.caption(f"{entry.model} · {entry.created}")
            _show_report(entry, "cmp")
    st.divider()


def _show_report(entry, key: str) -> None:
    """Re-render a saved report from its data (no model needed), with its re-run commands."""
    try:
        report = Report.load(entry.path)
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot open this report: {exc}")
        return
    for command in report.meta.get("rerun", []):
        st.code(command, language="bash")
    for i, result in enumerate(report.results):
        show_result(result, f"{key}:{entry.name}:{i}")
