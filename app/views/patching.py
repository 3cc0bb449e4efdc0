"""Activation patching page: a clean/corrupted prompt pair, its patching sweeps, and the patch lens."""

from __future__ import annotations

import dataclasses

import streamlit as st

from lenslab.app import state
from lenslab.app.components import DEFAULT_PROMPT, config_form, settings_and_run, show_result, url_prompt
from lenslab.probes import get_probe
from lenslab.probes.patching.pair import tokenize_pair

TITLE = "Activation patching"
ICON = ":material/healing:"
ORDER = 35
URL = "patching"
KEY = "activation_patching"


def render() -> None:
    """Two prompts and two answers → heatmaps of how much each patched activation restores."""
    st.title(TITLE)
    session = state.session()
    if session is None:
        return
    sweeps, lens = st.tabs(["Sweeps", "Patch lens"])
    with sweeps:
        _sweeps(session)
    with lens:
        _patch_lens(session)


def _sweeps(session) -> None:
    probe = get_probe(KEY)
    st.caption(
        "Denoising: each cell runs the corrupted prompt with ONE activation taken from the clean run and "
        "scores the answer, normalised so the clean run is 1 and the corrupted run 0 (noising, the reverse, "
        "is a setting). One prompt pair: every number is exact, not an estimate. Click a residual-stream "
        "cell to open the state inspector on the clean prompt's state."
    )
    default = probe.default_config()
    left, right = st.columns(2)
    with left:  # the clean prompt travels in the page's link (?prompt=...)
        clean = url_prompt(f"{KEY}:prompt", DEFAULT_PROMPT, label="Clean prompt")
    corrupted = right.text_area(
        "Corrupted prompt", value=default.corrupted, key=f"{KEY}:corrupted", height=80
    )
    clean_answer = left.text_input(
        "Clean answer (one token; empty: the clean prompt's prediction)",
        value=default.clean_answer,
        key=f"{KEY}:a",
    )
    corrupted_answer = right.text_input(
        "Corrupted answer (one token; empty: the corrupted prompt's prediction)",
        value=default.corrupted_answer,
        key=f"{KEY}:b",
    )
    aligned = _alignment(session, clean, corrupted)
    start = dataclasses.replace(
        default, corrupted=corrupted, clean_answer=clean_answer, corrupted_answer=corrupted_answer
    )
    with st.expander("Settings (metric, direction, sweeps, layers)", expanded=False):
        config = config_form(probe.config_cls, KEY, session, start)
    if st.button("Run", type="primary", key=f"{KEY}:run", disabled=config is None or not aligned):
        result = state.run_with_status(
            probe.title, lambda progress: probe.run(session, clean, config, progress)
        )
        if result is not None:
            state.store(KEY, result)
    result = state.stored(KEY)
    if result is not None:
        st.caption(
            f"Answers {result.answers[0]!r} (clean) vs {result.answers[1]!r} (corrupted), read at the "
            f"last position; {result.metric}: clean {result.clean_value:.4g}, "
            f"corrupted {result.corrupted_value:.4g}."
        )
        show_result(result, KEY)
        state.save_report([result], session, KEY)


def _alignment(session, clean: str, corrupted: str) -> bool:
    """The two prompts' tokens side by side; an error (and False) when their lengths differ."""
    try:
        clean_ids, corrupted_ids = tokenize_pair(session, clean, corrupted)
    except ValueError as exc:
        st.error(str(exc))
        return False
    rows = [
        {"position": i, "clean": a, "corrupted": b, "differs": "●" if a != b else ""}
        for i, (a, b) in enumerate(
            zip(session.str_tokens(clean_ids), session.str_tokens(corrupted_ids), strict=True)
        )
    ]
    with st.expander(
        f"Tokens ({len(rows)} each; {sum(bool(r['differs']) for r in rows)} differ)", expanded=False
    ):
        st.dataframe(rows, hide_index=True)
    return True


def _patch_lens(session) -> None:
    probe = get_probe("patch_lens")
    st.caption(
        "Patch one hidden state (the residual stream after a layer at one position) of the source "
        "prompt into a target prompt, and compare the target's logit lens before and after. The "
        "default target is the token-identity prompt of Patchscopes: the model continues '?' with "
        "what the state encodes. Settings hold the layers, positions and the target prompt."
    )
    source = st.text_area("Source prompt", value=DEFAULT_PROMPT, key="patch_lens:prompt", height=80)
    result = settings_and_run(probe, "patch_lens", session, source)
    if result is not None:
        show_result(result, "patch_lens")
        state.save_report([result], session, "patch_lens")
