"""Jacobian page: the exact linear system the model computes for one prompt."""

from __future__ import annotations

import streamlit as st

from lenslab.app.components import probe_page

TITLE = "Jacobian"
ICON = ":material/functions:"
ORDER = 30
URL = "jacobian"


def render() -> None:
    """Prompt → reconstruction check, token contributions, singular directions, layer sweep."""
    result = probe_page(
        "jacobian",
        intro="Every nonlinear coefficient (norm scales, MLP gates, attention patterns) is frozen at its "
        "value on this prompt, which makes the model exactly linear in its input embeddings: "
        "y = Σᵢ Jᵢ xᵢ (+ a bias for GPT-2). The reconstruction error checks it; the bars split the "
        "predicted token's logit exactly over the input tokens. Settings: target position / layer / part, "
        "float64 (CPU), full Jacobian or matrix-free SVD.",
    )
    if result is None:
        return
    error = result.reconstruction_error
    bound = 1e-12 if result.dtype == "float64" else 1e-5
    message = (
        f"Reconstruction error ‖Σᵢ Jᵢ xᵢ + b − y‖/‖y‖ = {error:.2e} ({result.dtype}); detached vs normal "
        f"logits differ by {result.detach_error:.1e} (relative); target {result.target_description} "
        f"({result.target}) at position {result.position}, method {result.method}."
    )
    (st.success if error < bound else st.warning)(message)
    timings = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
    svd = (
        f"SVD: J built from {result.svd_products} adjoint rows, exact"
        if result.svd_error_estimate == 0.0
        else f"SVD: matrix-free, {result.svd_products} J·v / Jᵀ·u products, singular values within "
        f"≈{result.svd_error_estimate:.0e} (relative, estimated from the residuals)"
    )
    st.caption(f"Time: {timings}. {svd}. Stable rank ‖J‖_F²/σ_max²: {result.stable_rank_text()}.")
