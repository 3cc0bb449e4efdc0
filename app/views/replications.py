"""Replications page: each seed paper's key claim re-measured on the loaded model, with a verdict."""

from __future__ import annotations

import streamlit as st

from lenslab.app import state
from lenslab.app.components import settings_and_run, show_result
from lenslab.probes import get_probe

TITLE = "Replications"
ICON = ":material/fact_check:"
ORDER = 88
URL = "replications"

INTRO = (
    "One run re-measures each seed paper's key check on the loaded model and shows, side by side, "
    "the paper's number and model, lenslab's number with its 95% interval, and a verdict: holds "
    "(the whole interval on the claimed side), does not hold (the whole interval on the other side), "
    "or inconclusive at 95%. The papers measured much larger models: on a small one, expect the "
    "shape of a result, not its value. Quick mode uses small sizes and the prepared artefacts "
    "(minutes); full mode uses the papers' sizes (hours on a CPU). Claims whose artefact is missing "
    "say 'not measured' and why."
)


def render() -> None:
    """Run button (progress, cancel), the table, the forest plot and per-claim notes."""
    probe = get_probe("replications")
    st.title(probe.title)
    st.caption(INTRO)
    session = state.session()
    if session is None:
        return
    result = settings_and_run(probe, "replications", session, "")
    if result is None:
        return
    show_result(result, "replications")
    st.caption(
        f"Re-run: `{result.command}` · time per family: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    )
    st.subheader("Notes per claim")
    for claim, outcome in zip(result.claims, result.outcomes, strict=True):
        with st.expander(f"{claim.paper} — {claim.claim}: {outcome.verdict}"):
            st.markdown(
                f"**Paper:** {claim.paper_value} on {claim.paper_model}  \n"
                f"**lenslab measures:** {claim.measure}  \n"
                f"**Here:** {outcome.note}"
            )
    state.save_report([result], session, "replications")
