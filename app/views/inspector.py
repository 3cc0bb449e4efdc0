"""State inspector: every registered lens on one hidden state, side by side.

The state (prompt, layer, position) lives in the URL query string, so the view is shareable and
survives reloads; figure cells on other pages link here.
"""

import streamlit as st

from lenslab.app import state
from lenslab.app.components import DEFAULT_PROMPT, number_field, show_result
from lenslab.app.plain import md, md_code, show_invalid
from lenslab.probes.inspector import StateRef, inspect_state, state_views

TITLE = "State inspector"
ICON = ":material/frame_inspect:"
ORDER = 5
URL = "inspector"


def _ref_from_url() -> StateRef | None:
    try:
        return StateRef.from_query(st.query_params.to_dict())
    except ValueError as exc:
        st.error(f"The link's state is invalid: {exc}")
        return None


def render() -> None:
    """Pick a state (or arrive with one in the URL) and show every lens's view of it."""
    st.title(TITLE)
    st.caption(
        "One hidden state — the residual stream after a layer at one position — seen by every "
        "lens: " + ", ".join(v.title for v in state_views())
    )
    session = state.session()
    if session is None:
        return
    from_url = _ref_from_url()
    linked_prompt = st.query_params.get("prompt") or DEFAULT_PROMPT  # a link may carry just the prompt
    current = from_url or StateRef(linked_prompt, session.n_layers // 2, -1)
    with st.form("inspector:pick"):
        prompt = st.text_area("Prompt", value=current.prompt, height=80)
        cols = st.columns(2)
        layer = number_field(
            "Layer",
            int(current.layer),
            min_value=0,
            max_value=session.n_layers - 1,
            key="inspector:layer",
            where=cols[0],
        )
        position = number_field(
            "Position (-1 = last token)",
            int(current.position),
            min_value=-session.max_tokens,
            max_value=session.max_tokens - 1,
            key="inspector:position",
            where=cols[1],
        )
        go = st.form_submit_button("Inspect", type="primary")
    if go and (layer is None or position is None):
        return
    if go:
        current = StateRef(prompt, int(layer), int(position))
        st.query_params.from_dict(current.to_query())
    elif from_url is None:  # every lens on a state takes a while on CPU: run only when asked
        st.info(
            "Pick a prompt, layer and position and press Inspect, or click a cell of a logit-lens or "
            "Future Lens grid to arrive here with its state."
        )
        return
    try:
        ref = current.resolve(session)
    except ValueError as exc:
        show_invalid([str(exc)])
        return
    tokens = session.str_tokens(ref.prompt)
    st.markdown(
        f"**State:** layer {ref.layer}, position {ref.position} "
        f"(token {md_code(repr(tokens[ref.position]))}) · model {md_code(session.model_id)}"
    )
    cache_key = f"inspector:{session.model_id}:{ref}"
    outcomes = state.stored(cache_key)
    if outcomes is None:
        outcomes = state.run_with_status("Inspecting the state", lambda p: inspect_state(session, ref, p))
        if outcomes is None:
            return
        state.store(cache_key, outcomes)
    columns = st.columns(2)
    for i, outcome in enumerate(outcomes):
        with columns[i % 2], st.container(border=True):
            st.subheader(outcome.title)
            if outcome.error:
                st.warning(md(outcome.error))
                continue
            for line in outcome.lines:
                st.markdown(f"- {md(line)}")
            with st.expander("Figures", expanded=False):
                show_result(outcome.result, f"inspector:{outcome.view}")
    results = [o.result for o in outcomes if o.result is not None]
    if results:
        state.save_report(results, session, "inspector")
