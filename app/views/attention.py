"""Attention-heads page: per-head score heatmaps; a clicked cell opens that head's pattern."""

from __future__ import annotations

from typing import Any

import streamlit as st

from lenslab.app import state
from lenslab.app.components import DEFAULT_PROMPT, settings_and_run, url_prompt
from lenslab.probes import get_probe
from lenslab.probes.attention.result import SCORES, AttentionResult
from lenslab.probes.plotting import readable

TITLE = "Attention heads"
ICON = ":material/visibility:"
ORDER = 35
URL = "attention"
KEY = "attention"


def render() -> None:
    """Prompt → score heatmaps (click a head) → that head's pattern with tokens on both axes."""
    probe = get_probe(KEY)
    st.title(probe.title)
    st.caption(
        "Every layer × head attention pattern of the prompt. Scores are means over query positions "
        "1…n−1 with n and a 95% Student-t interval in the hover (descriptive: positions of one prompt "
        "are not independent); induction is measured on repeated random token sequences, its interval "
        "over sequences. Click a cell of a score heatmap to open that head below."
    )
    session = state.session()
    if session is None:
        return
    prompt = url_prompt(f"{KEY}:prompt", DEFAULT_PROMPT)
    result = settings_and_run(probe, KEY, session, prompt)
    if result is None:
        return
    _summary(result)
    figures = result.figures()
    names = [name for name in SCORES if name in figures]
    for tab, name in zip(st.tabs([SCORES[n].split(" (")[0] for n in names]), names, strict=True):
        with tab:
            event = st.plotly_chart(
                readable(figures[name]),
                key=f"{KEY}:fig:{name}",
                width="stretch",
                on_select="rerun",
                selection_mode="points",
            )
            _take_click(result, name, event)
    _focus_head(result)
    with st.expander("All patterns (layers × heads)", expanded=False):
        st.plotly_chart(readable(figures["patterns"]), key=f"{KEY}:fig:patterns", width="stretch")
    state.save_report([result], session, KEY)


def _summary(result: AttentionResult) -> None:
    summary = result.summary()
    for col, (name, value) in zip(st.columns(len(summary)), summary.items(), strict=True):
        col.caption(name)
        col.markdown(f"**{value}**")


def _take_click(result: AttentionResult, figure: str, event: Any) -> None:
    """A newly clicked cell moves the head selectors below to that head."""
    points = list(getattr(getattr(event, "selection", None), "points", []) or [])
    picked = result.head_at(figure, points[0]) if points else None
    if picked is None or st.session_state.get(f"{KEY}:clicked:{figure}") == picked:
        return
    st.session_state[f"{KEY}:clicked:{figure}"] = picked
    st.session_state[f"{KEY}:focus:layer"], st.session_state[f"{KEY}:focus:head"] = picked


def _focus_head(result: AttentionResult) -> None:
    """The selected head's pattern, large, with the prompt's tokens on both axes."""
    layers = result.layers.tolist()
    heads = list(range(result.patterns.shape[1]))
    default_layer, default_head = result.focus()
    if st.session_state.get(f"{KEY}:focus:layer") not in layers:
        st.session_state[f"{KEY}:focus:layer"] = default_layer
    if st.session_state.get(f"{KEY}:focus:head") not in heads:
        st.session_state[f"{KEY}:focus:head"] = default_head
    left, right = st.columns(2)
    layer = left.selectbox(
        "layer", layers, key=f"{KEY}:focus:layer", format_func=lambda x: result.layer_label(layers.index(x))
    )
    head = right.selectbox("head", heads, key=f"{KEY}:focus:head", format_func=lambda h: f"H{h}")
    st.plotly_chart(readable(result.head_figure(layer, head)), key=f"{KEY}:fig:head", width="stretch")
