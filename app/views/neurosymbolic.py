"""Neurosymbolic page: where problems become readable as symbols, and a typed problem solved."""

from __future__ import annotations

import math

import streamlit as st

from lenslab.app import state
from lenslab.app.components import PROMPT_PARAM, LinkedWidgets, settings_and_run, show_result
from lenslab.app.plain import md, md_code, show_invalid
from lenslab.probes import get_probe
from lenslab.probes.fields import ConfigField, StrKind
from lenslab.probes.neurosymbolic.artefact import Artefact
from lenslab.probes.neurosymbolic.probe import (
    DEFAULT_PROBLEM,
    FitSummary,
    checked_problem,
    fit_summary,
    load_artefact,
    prepare_default_artefacts,
)
from lenslab.probes.neurosymbolic.tasks import OPERATIONS
from lenslab.probes.plotting import readable

TITLE = "Neurosymbolic"
ICON = ":material/calculate:"
ORDER = 70
URL = "neurosymbolic"
KEY = "neurosymbolic"
FIT_FIGURES = ("layer_curve", "evaluation", "evaluation_ce")  # drawn once, above the problem
PROBLEM_FIELD = ConfigField(PROMPT_PARAM, str, StrKind(), {})  # the problem box: ``?prompt=`` in the URL


def render() -> None:
    """Layer curve and evaluation of the fitted maps; a typed problem read out and answered."""
    probe = get_probe(KEY)
    st.title(probe.title)
    st.caption(
        "A linear encoder reads the last prompt token's hidden state as a vector-symbolic problem "
        "(operation + two operands bound to roles); the operands are unbound and the answer computed "
        "exactly, then decoded back into the residual stream: h ← (1−w)·h + w·decoded at every "
        "answer digit (Dhanraj & Eliasmith 2025). The system acts only where its read-out is "
        "calibrated to be right; otherwise it abstains and the model answers alone."
    )
    session = state.session()
    if session is None:
        return
    try:
        artefact = load_artefact(session)
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, ValueError) and "older than" not in str(exc):
            st.error(str(exc))
            return
        status = (
            f"No encoders are fitted for {session.model_id} yet."
            if isinstance(exc, FileNotFoundError)
            else f"The encoders fitted for {session.model_id} are an older format: refit them."
        )
        st.info(
            f"{status} Fitting collects hidden states for several hundred few-shot problems (train, "
            "calibration and test splits) and solves ridge regressions (several minutes on a CPU)."
        )
        if st.button("Fit encoders", type="primary", key=f"{KEY}:fit"):
            folder = state.run_with_status(
                "Fitting neurosymbolic encoders",
                lambda progress: prepare_default_artefacts(session, progress),
            )
            if folder is not None:
                st.rerun()
        return

    summary = fit_summary(artefact)
    _overview(summary)

    st.subheader("Try a problem")
    symbols = ", ".join(f"`{OPERATIONS[op][0]}`" for op in artefact.codebook.operations)
    links = LinkedWidgets(KEY, session=session)  # ?prompt=What is 12 * 3?
    problem = st.text_input(
        "Problem",
        value=links.start(PROBLEM_FIELD, _default_problem(artefact)),
        key=f"{KEY}:prompt",
        help=f"Two whole numbers below {artefact.config.bound} and one of {symbols} "
        "(or words: plus, minus, times, mod, xor, gcd(a, b) ...).",
    )
    links.keep(PROBLEM_FIELD, problem)
    try:  # typed or linked: refused here, before Run, in the one message style
        checked_problem(problem, artefact)
        refused = []
    except ValueError as exc:
        refused = [f"problem: {exc}"]
    show_invalid(refused)
    result = settings_and_run(probe, KEY, session, problem, ready=not refused)
    if result is not None:
        _explain(result)
        show_result(result, KEY, skip=FIT_FIGURES)
        state.save_report([result], session, KEY)


def _default_problem(artefact: Artefact) -> str:
    """The page's example, or one inside the fitted operand range.

    Encoders fitted on smaller numbers would refuse the usual example, and a default the page
    itself refuses would greet the user with an error.
    """
    candidates = [DEFAULT_PROBLEM]
    bound = int(artefact.config.bound)
    for op in ("mul", *artefact.codebook.operations):
        if op in artefact.codebook.operations:
            candidates.append(f"What is {bound - 1} {OPERATIONS[op][0]} {max(1, bound // 3)}?")
    for text in candidates:
        try:
            checked_problem(text, artefact)
            return text
        except ValueError:
            continue
    return DEFAULT_PROBLEM


def _overview(summary: FitSummary) -> None:
    figures = summary.figures()
    st.subheader("Where do hidden states hold the problem?")
    st.plotly_chart(readable(figures["layer_curve"]), key=f"{KEY}:curve", width="stretch")
    st.caption(
        f"Encoders fitted on {summary.n_train} problems; gate thresholds chosen on "
        f"{summary.n_calibration} calibration problems; everything scored on {summary.n_test} test "
        f"problems (three disjoint sets of operand pairs). Best layer: {summary.chosen_layer}; the "
        f"decoder writes at layer {summary.merge_layer}. Gate: {summary.gate_text()}."
    )
    st.subheader("Evaluation on the test split")
    st.markdown(
        f"Baseline: **{summary.baseline_name}**. A chain-of-thought baseline is not run: the "
        "embedded 270M model does not produce usable chains of thought (see docs/neurosymbolic.md "
        f"for where one plugs in). {summary.ce_change_verdict()}."
    )
    st.plotly_chart(readable(figures["evaluation"]), key=f"{KEY}:table", width="stretch")
    st.plotly_chart(readable(figures["evaluation_ce"]), key=f"{KEY}:ce", width="stretch")


def _explain(result) -> None:
    top = float(result.operation_scores.max())
    decoded = f"**{md(result.decoded_text)}**"  # decoded from the model: text, never markup
    if result.fired:
        action = (
            f"confidence {result.confidence:.2f} ≥ calibrated {result.gate_threshold:.2f}, score "
            f"{top:.2f} ≥ {result.config.threshold:g}: the system **acts** and computes "
            f"**{md(result.system_answer)}**"
        )
        if not result.config.calibrated_gate:
            action += " (calibrated gate switched off: the paper's score gate alone)"
    else:
        action = f"the system **abstains**: {md(result.abstain_reason)}"
    right = (
        result.decoded_operation == result.operation
        and result.decoded_first == result.first
        and result.decoded_second == result.second
    )
    st.markdown(
        f"Layer {result.readout_layer}'s encoder reads {decoded} ({action}). Exact answer: "
        f"**{md(result.exact_answer)}**; the read-out is {'right' if right else 'wrong'}."
    )
    if result.fired and math.isfinite(result.gate_threshold):
        st.caption(f"Gate on held-out problems: {result.fit.gate_text(result.readout_layer)}.")
    elif not result.fired:
        st.caption(
            "Abstaining leaves the model's own answer. Gate on held-out problems: "
            f"{result.fit.gate_text(result.readout_layer)}."
        )
    col1, col2 = st.columns(2)
    col1.markdown(
        f"Model alone (few-shot): {md_code(result.baseline_answer.strip() or '∅')} · CE of the exact answer "
        f"{result.baseline_answer_ce:.3g} nats"
    )
    merged = "unchanged (no merge)" if not result.fired else md_code(result.merged_answer.strip() or "∅")
    col2.markdown(
        f"With merge (layer {result.merge_layer}): {merged} · CE {result.merged_answer_ce:.3g} nats"
    )
    with st.expander("Prompt the model saw"):
        st.code(result.few_shot_prompt, language=None)
