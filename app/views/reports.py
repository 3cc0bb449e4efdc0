"""Reports page: list, search, open (re-rendered from saved data), download and delete."""

import streamlit as st

from lenslab.analyses.report import (
    Report,
    delete_report,
    list_deleted,
    list_reports,
    restore_report,
    zip_report,
)
from lenslab.app import state
from lenslab.app.components import show_result
from lenslab.app.plain import md, md_code, show_text

TITLE = "Reports"
ICON = ":material/folder_open:"
ORDER = 90
URL = "reports"


def render() -> None:
    """Saved reports; opening one needs no model. Deleting asks first and keeps a restorable copy."""
    st.title("Reports")
    folder = state.report_folder()
    st.caption(f"Folder: {md_code(folder)}")
    query = st.text_input("Search (model, probe, prompt, title)", key="reports:q").strip().lower()
    entries = list_reports(folder)
    if query:
        entries = [e for e in entries if query in " ".join([e.title, e.model, e.prompt, *e.probes]).lower()]
    if not entries:
        st.info("No reports yet: run a probe and press “Save report”.")
    else:
        _compare(entries)
    for entry in entries:
        label = f"{md(entry.title)} — {md(', '.join(entry.probes))} · {md(entry.model)} · {md(entry.created)}"
        with st.expander(label):
            show_text(entry.prompt, limit=500)
            cols = st.columns(3)
            opened = cols[0].toggle("Open", key=f"open:{entry.name}")
            cols[1].download_button(
                "Download zip",
                icon=":material/download:",
                data=lambda path=entry.path: zip_report(path),  # zipped on click, not on every rerun
                file_name=f"{entry.name}.zip",
                key=f"dl:{entry.name}",
                mime="application/zip",
            )
            _delete_button(cols[2], folder, entry)
            if opened:
                _show_report(entry, "report")
    _recently_deleted(folder)


def _delete_button(column, folder, entry) -> None:
    """Delete asks for confirmation; confirmed, the report moves to the trash (see Recently deleted)."""
    asking = f"confirm-del:{entry.name}"
    if not st.session_state.get(asking):
        if column.button("Delete", key=f"del:{entry.name}", icon=":material/delete:"):
            st.session_state[asking] = True
            st.rerun()
        return
    st.warning(
        f"Delete the report “{md(entry.title)}”? It moves to Recently deleted, where it can be restored."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, delete", key=f"del-yes:{entry.name}", type="primary"):
        st.session_state[asking] = False
        try:
            delete_report(folder, entry.name)
        except (ValueError, FileNotFoundError, OSError) as exc:
            st.error(md(str(exc)))
        else:
            st.rerun()
    if no.button("Cancel", key=f"del-no:{entry.name}"):
        st.session_state[asking] = False
        st.rerun()


def _recently_deleted(folder) -> None:
    """Reports in the trash, each with a Restore button."""
    deleted = list_deleted(folder)
    if not deleted:
        return
    st.subheader("Recently deleted")
    for entry in deleted:
        cols = st.columns([5, 1])
        cols[0].markdown(f"{md(entry.title)} — {md(', '.join(entry.probes))} · {md(entry.created)}")
        if cols[1].button("↩ Restore", key=f"restore:{entry.name}"):
            try:
                restore_report(folder, entry.name)
            except (ValueError, FileNotFoundError, FileExistsError, OSError) as exc:
                st.error(md(str(exc)))
            else:
                st.rerun()


def _compare(entries) -> None:
    """Two reports side by side, each re-rendered from its saved data."""
    labels = {f"{e.title} · {e.name}": e for e in entries}
    picked = st.multiselect(
        "Compare two reports side by side",
        list(labels),
        max_selections=2,
        key="cmp",
    )
    if len(picked) != 2:
        return
    for column, name in zip(st.columns(2), picked, strict=True):
        entry = labels[name]
        with column:
            st.subheader(md(entry.title))
            st.caption(f"{md(entry.model)} · {md(entry.created)}")
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
        st.code(command, language="bash")  # code blocks render their text literally
    for i, result in enumerate(report.results):
        show_result(result, f"{key}:{entry.name}:{i}")
