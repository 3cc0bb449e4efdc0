"""J-lens page: J-lens and logit-lens grids of one prompt, the J-gap, and fitting the lens."""

from __future__ import annotations

import streamlit as st

from lenslab.app import state
from lenslab.app.components import DEFAULT_PROMPT, settings_and_run, show_result, url_prompt
from lenslab.models.paths import family_dir
from lenslab.probes import get_probe
from lenslab.probes.jacobian_lens import (
    PREPARE_PROMPTS,
    FitSpec,
    JacobianLens,
    fit,
    prepare_default_artefacts,
)
from lenslab.probes.jacobian_lens.artefacts import FAMILY, lens_path
from lenslab.probes.jacobian_lens.probe import convergence_figure
from lenslab.probes.plotting import readable

TITLE = "Jacobian lens"
ICON = ":material/lens_blur:"  # not a framed square: that is the state inspector's
ORDER = 35
URL = "jacobian-lens"
KEY = "jacobian_lens"


def render() -> None:
    """Fit panel when no lens exists; otherwise the lens' provenance, the grids and the J-gap."""
    st.title("Jacobian lens (J-lens)")
    st.caption(
        "Each state h_l is carried to the last layer by J̄_l, the average over corpus positions of "
        "∂h_final/∂h_l (Gurnee et al. 2026), then decoded through the final norm and unembedding — "
        "beside the logit lens of the same states. The J-gap compares, at one state, this input's own "
        "Jacobian with J̄."
    )
    session = state.session()
    if session is None:
        return
    try:
        lens = JacobianLens.load(session)
    except FileNotFoundError:
        lens = None
    with st.expander("Fit the lens", expanded=lens is None):
        _fit_panel(session, lens)
    if lens is None:
        st.info("No J-lens is fitted for this model yet: fit one above (or run `lenslab prepare`).")
        return
    st.markdown(f"**Lens:** {lens.describe()}")
    spec = lens.provenance.get("spec", {})
    st.plotly_chart(
        readable(convergence_figure(lens.rel_change, spec.get("tol"), spec.get("smoothing", 10))),
        key=f"{KEY}:conv",
        width="stretch",
    )
    prompt = url_prompt(f"{KEY}:prompt", DEFAULT_PROMPT)
    result = settings_and_run(get_probe(KEY), KEY, session, prompt)
    if result is not None:
        show_result(result, KEY)
        state.save_report([result], session, KEY)


def _fit_panel(session, lens: JacobianLens | None) -> None:
    if lens is not None:
        st.write(f"A lens exists ({lens.provenance.get('n_prompts')} prompts); fitting again replaces it.")
    st.write(
        "**Quick fit** (what `lenslab prepare` builds): 16-token windows, first 4 positions skipped, "
        f"{PREPARE_PROMPTS} training prompts — far fewer than the reference's ≥ 100 prompts of 128 "
        "tokens; the deviation is recorded with the lens. **Full fit**: the reference specification "
        "(128 tokens, 16 skipped, stop when the smoothed relative change < 2e-3 after ≥ 100 prompts); "
        "on a CPU it takes hours, is checkpointed every 5 prompts and resumes after a cancel."
    )
    quick, full = st.columns(2)
    if quick.button("Fit (quick)", key=f"{KEY}:fit"):
        lens_path(session.model_id).unlink(missing_ok=True)
        if state.run_with_status("Fitting the J-lens", lambda p: prepare_default_artefacts(session, p)):
            st.rerun()
    if full.button("Fit (full specification)", key=f"{KEY}:fit_full"):
        checkpoint = family_dir(FAMILY, session.model_id) / "fit_state.pt"

        def job(progress):
            state_ = fit(session, FitSpec(), checkpoint=checkpoint, checkpoint_every=5, progress=progress)
            JacobianLens.from_state(state_).save()
            return state_

        if state.run_with_status("Full J-lens fit", job):
            st.rerun()
