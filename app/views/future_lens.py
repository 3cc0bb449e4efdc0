"""Future Lens page: the (layer × position) grid of future tokens, training and the evaluation."""

from __future__ import annotations

import functools

import streamlit as st

from lenslab.app import state
from lenslab.app.components import (
    DEFAULT_PROMPT,
    LinkedWidgets,
    cell_text,
    config_form,
    number_field,
    run_hint,
    show_result,
    url_prompt,
)
from lenslab.app.plain import md, show_invalid
from lenslab.probes.fields import config_field
from lenslab.probes.future_lens.artefacts import artefact_signature
from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, default_eval_layers, run_evaluation
from lenslab.probes.future_lens.methods import METHODS, Artefacts
from lenslab.probes.future_lens.probe import (
    FutureLens,
    FutureLensConfig,
    prepare_default_artefacts,
    train_learned_prompt,
)
from lenslab.probes.future_lens.prompts import DEFAULT_PROTOCOL, PROTOCOLS, PromptTraining

TITLE = "Future Lens"
ICON = ":material/fast_forward:"
ORDER = 20
URL = "future-lens"
KEY = "future_lens"
PROTOCOL_HELP = {
    "free-running": "the intervened run continues on its own greedy tokens (the paper's protocol)",
    "teacher-forced": "the actual tokens (top row) are fed after the context: N ≥ 1 then measures "
    "the state and the fed tokens together",
}
METHOD_HELP = {
    "direct": "logit lens of the state, read as the guess for every future token (no training)",
    "linear": "linear map to the last layer's state at t+N (saved maps)",
    "fixed": "state transplanted into a generic prompt that the model continues (no training)",
    "learned": "state transplanted into a learned soft prompt (one trained prompt per layer)",
}


def render() -> None:
    """Prompt → grid; train / evaluate panel; save everything as a report."""
    st.title(TITLE)
    st.caption(
        "Does one hidden state h_t^ℓ already know the tokens at t+2, t+3, …? Each cell shows the tokens "
        "t+1 … t+1+N predicted from the one state h_t^ℓ (Pal et al., 2023): direct decodes it, linear "
        "maps it to the last layer's state at t+N, and fixed / learned transplant it into a prompt and "
        "let the model run on — free-running (its own greedy tokens, the default) or teacher-forced "
        "(fed the actual tokens). The top row is what the model actually produces."
    )
    session = state.session()
    if session is None:
        return
    artefacts = _saved_artefacts(session)
    _grid_panel(session, artefacts)
    with st.expander("Train / evaluate", expanded=False):
        _train_panel(session, artefacts)
        st.divider()
        _evaluation_panel(session)
    results = [r for r in (state.stored(KEY), state.stored(f"{KEY}_eval")) if r is not None]
    if results:
        st.subheader("Save")
        state.save_report(results, session, KEY)


def _saved_artefacts(session) -> Artefacts:
    """The saved artefacts, re-read from disk only when a file changed (linear maps are ~100 MB)."""
    signature = (session.model_id, artefact_signature(session))
    cached = state.stored(f"{KEY}_artefacts")
    if cached is None or cached[0] != signature:
        cached = (signature, Artefacts.saved(session))
        state.store(f"{KEY}_artefacts", cached)
    return cached[1]


def _grid_panel(session, artefacts: Artefacts) -> None:
    prompt = url_prompt(f"{KEY}:prompt", DEFAULT_PROMPT)
    links = LinkedWidgets(f"{KEY}:grid", session=session)  # ?method=fixed&horizon=2&layers=3,6&k=4
    field = functools.partial(config_field, FutureLensConfig)
    cols = st.columns([2, 1, 3, 1, 2])
    default_method = "linear" if artefacts.linear is not None else "direct"
    method = cols[0].selectbox(
        "Method",
        METHODS,
        index=METHODS.index(links.start(field("method"), default_method)),
        key=f"{KEY}:method",
        help="; ".join(f"**{m}**: {h}" for m, h in METHOD_HELP.items()),  # the box is too narrow for them
    )
    horizon = cols[1].slider(
        "N", 0, 3, links.start(field("horizon"), 3), key=f"{KEY}:horizon", help="show t+1 … t+1+N"
    )
    if method == "learned":
        default_layers = sorted(artefacts.prompts) or [session.n_layers // 2]
    elif method == "fixed":
        default_layers = default_eval_layers(session.n_layers)
    else:
        default_layers = list(range(session.n_layers))
    layers = cols[2].multiselect(
        "Layers",
        list(range(session.n_layers)),
        default=list(links.start(field("layers"), tuple(default_layers)) or default_layers),
        key=f"{KEY}:layers:{method}",
        help="the causal methods run a short continuation per cell: pick fewer layers on a CPU",
    )
    k = number_field(
        "top-k", links.start(field("k"), 5), min_value=1, max_value=20, key=f"{KEY}:k", where=cols[3]
    )
    protocol = cols[4].selectbox(
        "Protocol (N ≥ 1)",
        PROTOCOLS,
        index=PROTOCOLS.index(links.start(field("protocol"), DEFAULT_PROTOCOL)),
        key=f"{KEY}:protocol",
        help="fixed / learned only: " + "; ".join(f"{p}: {h}" for p, h in PROTOCOL_HELP.items()),
        disabled=method not in ("fixed", "learned"),
    )
    for name, value in (
        ("method", method),
        ("horizon", horizon),
        ("layers", tuple(layers)),
        ("protocol", protocol),
    ):
        links.keep(field(name), value)
    if k is not None:
        links.keep(field("k"), k)
    st.caption(f"**{method}**: {METHOD_HELP[method]}.")
    refused = links.problems()
    show_invalid(refused)
    missing = artefacts.missing(method, layers)
    if missing:
        st.warning(f"The {method} method needs a trained artefact: {missing}.")
        fit = method == "linear" and st.button(
            "Fit the linear maps now (≈1–2 min on a CPU)", key=f"{KEY}:prep"
        )
        if fit and state.run_with_status(
            "Fitting linear maps", lambda p: prepare_default_artefacts(session, p)
        ):
            st.rerun()
    config = None
    if k is not None:
        config = FutureLensConfig(
            method=method, horizon=int(horizon), layers=tuple(layers) or None, k=k, protocol=protocol
        )
    runnable = config is not None and not missing and bool(layers) and not refused
    run_hint("Future Lens")
    if st.button("Run", type="primary", key=f"{KEY}:run", disabled=not runnable) and runnable:
        state.store(KEY, None)  # a new run replaces the shown grid, also when it is cancelled
        result = state.run_with_status(
            "Future Lens", lambda progress: FutureLens().run(session, prompt, config, progress, artefacts)
        )
        if result is not None:
            state.store(KEY, result)
    result = state.stored(KEY)
    if result is not None:
        if result.causal:
            st.caption(f"N ≥ 1 is {result.protocol}: {PROTOCOL_HELP.get(result.protocol, '')}.")
        if result.artefact:
            st.caption(f"Artefact: {md(result.artefact)}")
        show_result(result, KEY)


def _train_panel(session, artefacts: Artefacts) -> None:
    st.markdown("#### Trained artefacts")
    if artefacts.linear is not None:
        meta = artefacts.linear.meta
        chosen = sorted({v for row in meta.get("ridge_chosen") or [[meta.get("ridge")]] for v in row})
        how = (
            f"ridge chosen per layer and N from {meta['ridge_grid']} on "
            f"{meta['validation']['n_examples']} held-out training examples: {chosen}"
            if meta.get("ridge_grid")
            else f"ridge fixed at {chosen}"
        )
        layers = artefacts.linear.layers
        contiguous = layers == list(range(layers[0], layers[-1] + 1))
        shown = f"{layers[0]}–{layers[-1]}" if contiguous else ", ".join(map(str, layers))
        st.write(
            f"Linear maps: layers {shown}, "
            f"N = 0..3, {meta.get('n_train')} training examples, {how}; applied at positions "
            f"{artefacts.linear.positions} (where they were fitted)."
        )
    else:
        st.write("Linear maps: none yet.")
    st.write(f"Learned prompts: layers {sorted(artefacts.prompts) or 'none yet'}.")
    fit = st.button("Fit linear maps on the default corpus", key=f"{KEY}:fit")
    if fit and state.run_with_status("Fitting linear maps", lambda p: prepare_default_artefacts(session, p)):
        st.rerun()
    st.markdown("#### Train a learned prompt")
    cols = st.columns(4)
    layer = number_field(
        "layer",
        session.n_layers // 2,
        min_value=0,
        max_value=session.n_layers - 1,
        key=f"{KEY}:tl",
        where=cols[0],
    )
    epochs = number_field("epochs", 2, min_value=1, max_value=50, key=f"{KEY}:te", where=cols[1])
    lr = number_field(
        "lr", 5e-4, min_value=1e-5, max_value=1e-1, integer=False, key=f"{KEY}:tlr", where=cols[2]
    )
    limit = number_field(
        "max examples (0: all)", 0, min_value=0, max_value=100000, key=f"{KEY}:tmax", where=cols[3]
    )
    st.caption(
        "KL(original ‖ intervened) at t+1 … t+4, AdamW, 10 soft-prompt vectors initialised N(0, 0.02) "
        "in the raw embedding space (Gemma multiplies embeddings by √d_model). On a CPU one epoch of "
        "the default 240 training examples takes about a minute."
    )
    valid = None not in (layer, epochs, lr, limit)
    title = f"Train the learned prompt for layer {layer}" if valid else "Train the learned prompt"
    run_hint("Training learned prompt")
    if st.button(title, key=f"{KEY}:train", disabled=not valid) and valid:
        label = "Training learned prompt"
        training = PromptTraining(epochs=epochs, lr=lr, max_examples=limit or None)
        prompt = state.run_with_status(
            label, lambda p: train_learned_prompt(session, int(layer), training, progress=p)
        )
        if prompt is not None:
            losses = prompt.meta["losses"]
            st.success(
                f"Saved the learned prompt for layer {prompt.layer}: KL {losses[0]:.3f} → {losses[-1]:.3f}, "
                f"{prompt.meta['examples_per_second']:.1f} examples/s"
            )


def _evaluation_panel(session) -> None:
    st.markdown("#### Evaluation")
    st.caption(
        "Top-1 and precision@k against the model's own greedy continuation on held-out documents, "
        "with a bigram baseline and 95% intervals from resampling whole test documents. The protocol "
        "says how fixed / learned reach N ≥ 1 (free-running: the intervened run's own tokens, the "
        "paper's; teacher-forced: the original tokens are fed). Collected hidden states and linear "
        "maps are cached; maps and learned prompts fitted on other data than the page's are kept "
        "apart, so an evaluation never replaces the maps or prompts the grid above reads."
    )
    config = config_form(FutureLensEvalConfig, f"{KEY}:eval", session)
    run_hint("Future Lens evaluation")
    if st.button("Evaluate", key=f"{KEY}:evaluate", disabled=config is None) and config is not None:
        result = state.run_with_status("Future Lens evaluation", lambda p: run_evaluation(session, config, p))
        if result is not None:
            state.store(f"{KEY}_eval", result)
    result = state.stored(f"{KEY}_eval")
    if result is not None:
        st.caption(
            f"{md(result.split_text())}; "
            + (f"{result.causal_note}." if result.causal_note else "no causal method.")
            + (f" Linear ridge: {result.ridge_text()}." if result.ridge_text() else "")
        )
        st.dataframe(
            [{k: cell_text(v) for k, v in row.items()} for row in result.table_rows()], hide_index=True
        )
        for note in result.notes:
            st.caption(md(note))
        show_result(result, f"{KEY}_eval")
