"""Direct logit attribution page: a logit split over components and heads, with its identity check."""

from __future__ import annotations

import streamlit as st

from lenslab.app.components import probe_page

TITLE = "Direct logit attribution"
ICON = ":material/receipt_long:"
ORDER = 36
URL = "dla"


def render() -> None:
    """Prompt → waterfall over components, attention vs MLP by layer, layer × head; the sum check."""
    result = probe_page(
        "dla",
        intro="The residual stream at the chosen position is a sum of what the embeddings, every attention "
        "layer (split over its heads) and every MLP added — for Gemma after the post-attention / post-MLP "
        "norms. Through the final norm with its scale frozen at this run's value (the standard DLA "
        "linearisation; LayerNorm centres each part), the parts plus the biases sum to the logit. "
        "Settings: position, answer token, contrast token (logit difference).",
    )
    if result is None:
        return
    ok = abs(result.residual) <= 1e-4 * max(1.0, abs(result.actual))
    (st.success if ok else st.warning)(
        f"Σ parts + biases = {result.values.sum() + result.constant:+.6f}; actual {result.target_text()} = "
        f"{result.actual:+.6f}; residual {result.residual:.1e} (components vs residual stream: "
        f"{result.resid_error:.1e} relative). Final norm: {result.norm}."
        + (" The model soft-caps its logits: the pre-cap logit is attributed." if result.softcap else "")
    )
