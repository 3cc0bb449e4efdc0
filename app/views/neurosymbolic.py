"""Neurosymbolic page: where problems become readable as symbols, and a typed problem solved."""

from __future__ import annotations

import streamlit as st

from lenslab.app import state
from lenslab.app.components import settings_and_run, show_result
from lenslab.probes import get_probe
from lenslab.probes.neurosymbolic.probe import (
    DEFAULT_PROBLEM,
    fit_summary,
    load_artefact,
    prepare_default_artefacts,
)
from lenslab.probes.neurosymbolic.tasks import OPERATIONS

TITLE = "Neurosymbolic"
ICON = "🧮"
ORDER = 70
URL = "neurosymbolic"
KEY = "neurosymbolic"


def render() -> None:
    """Layer curve and evaluation of the fitted maps; a typed problem read out and answered."""
    probe = get_probe(KEY)
    st.title(probe.title)
    st.caption(
        "A linear encoder reads the last prompt token's hidden state as a vector-symbolic problem "
        "(operation + two operands bound to roles); the operands are unbound and the answer computed "
        "exactly, then decoded back into the residual stream: h ← (1−w)·h + w·decoded at every "
        "answer digit (Dhanraj & Eliasmith 2025)."
    )
    session = state.session()
    if session is None:
        return
    try:
        artefact = load_artefact(session)
    except FileNotFoundError:
        st.info(
            f"No encoders are fitted for {session.model_id} yet. Fitting collects hidden states for a "
            "few hundred few-shot problems and solves ridge regressions (about 2 minutes on a CPU)."
        )
        if st.button("Fit encoders", type="primary", key=f"{KEY}:fit"):
            folder = state.run_with_status(
                "Fitting neurosymbolic encoders",
                lambda progress: prepare_default_artefacts(session, progress),
            )
            if folder is not None:
                st.rerun()
        return
    except ValueError as exc:
        st.error(str(exc))
        return

    summary = fit_summary(artefact)
    overview = summary.figures()
    st.subheader("Where do hidden states hold the problem?")
    st.plotly_chart(overview["layer_curve"], key=f"{KEY}:curve", width="stretch")
    st.caption(
        f"Encoders fitted on {summary.n_train} problems, scored on {summary.n_test} held-out ones "
        f"(operand pairs never seen in training). Best layer: {summary.chosen_layer}; the decoder "
        f"writes at layer {summary.merge_layer}."
    )

    st.subheader("Try a problem")
    symbols = ", ".join(f"`{OPERATIONS[op][0]}`" for op in artefact.codebook.operations)
    problem = st.text_input(
        "Problem",
        value=DEFAULT_PROBLEM,
        key=f"{KEY}:prompt",
        help=f"Two whole numbers below {artefact.config.bound} and one of {symbols} "
        "(or words: plus, minus, times, mod, xor, gcd(a, b) ...).",
    )
    result = settings_and_run(probe, KEY, session, problem)
    if result is not None:
        _explain(result)
        show_result(result, KEY)
        state.save_report([result], session, KEY)
    else:
        st.subheader("Evaluation on the test split")
        st.plotly_chart(overview["evaluation"], key=f"{KEY}:table", width="stretch")
        st.plotly_chart(overview["evaluation_ce"], key=f"{KEY}:ce", width="stretch")


def _explain(result) -> None:
    symbol = OPERATIONS[result.decoded_operation][0]
    top = float(result.operation_scores.max())
    action = (
        f"score {top:.2f} ≥ {result.config.threshold:g}: the system acts and computes "
        f"**{result.system_answer}**"
        if result.fired
        else f"score {top:.2f} — below {result.config.threshold:g} or no valid answer: no intervention"
    )
    st.markdown(
        f"Layer {result.readout_layer}'s encoder reads **{result.decoded_first} {symbol} "
        f"{result.decoded_second}** ({action}). Exact answer: **{result.exact_answer}**."
    )
    col1, col2 = st.columns(2)
    col1.markdown(
        f"Model alone: `{result.baseline_answer.strip() or '∅'}` · CE of the exact answer "
        f"{result.baseline_answer_ce:.3f} nats"
    )
    col2.markdown(
        f"With merge (layer {result.merge_layer}): `{result.merged_answer.strip() or '∅'}` · CE "
        f"{result.merged_answer_ce:.3f} nats"
    )
    with st.expander("Prompt the model saw"):
        st.code(result.few_shot_prompt, language=None)
