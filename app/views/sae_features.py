"""SAE features page: per-token features of a prompt, feature pages, steering, and training an SAE."""

from __future__ import annotations

import dataclasses

import streamlit as st

from lenslab.app import state
from lenslab.app.components import (
    DEFAULT_PROMPT,
    LinkedWidgets,
    config_form,
    folder_input,
    number_field,
    rounded,
    run_hint,
    show_result,
    source_input,
    url_prompt,
)
from lenslab.app.plain import html_text, md, show_invalid, show_text
from lenslab.probes import get_probe
from lenslab.probes.fields import config_field
from lenslab.probes.plotting import readable
from lenslab.probes.sae.corpus import SUBSETS
from lenslab.probes.sae.evaluation import quality_lines
from lenslab.probes.sae.features import (
    SAEFeatureConfig,
    SAEFeatureResult,
    SAEFeaturesConfig,
    SAEFeaturesResult,
)
from lenslab.probes.sae.loading import LoadedSAE, available_specs, load_sae
from lenslab.probes.sae.steering import MODES, SAESteeringConfig
from lenslab.probes.sae.training import SAETrainingConfig, train_sae

TITLE = "SAE features"
ICON = ":material/extension:"
ORDER = 30
URL = "sae-features"
KEY = "sae"
PRETRAINED = "pretrained (sae-lens release/id)…"
FOLDER = "folder on disk (sae-lens format)…"


def _pick_sae(session) -> str:
    """SAE picker: trained ones for this model, a sae-lens release/id, or a folder."""
    options = [*available_specs(session), PRETRAINED, FOLDER]
    choice = st.selectbox("SAE", options, key=f"{KEY}:choice", help="SAEs trained here are listed first")
    if choice == PRETRAINED:
        typed = st.text_input(
            "release/sae_id",
            key=f"{KEY}:pretrained",
            placeholder="gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small",
            help="Needs the Hugging Face hub (or its local cache).",
        )
        return f"pretrained:{typed.strip()}" if typed.strip() else ""
    if choice == FOLDER:
        return folder_input("SAE folder", f"{KEY}:folder", help="a folder in sae-lens format")
    return choice


def _load(session, spec: str) -> LoadedSAE | None:
    if not spec:
        return None
    try:
        return load_sae(session, spec)
    except (ValueError, FileNotFoundError) as exc:
        st.error(md(exc))
        return None


def render() -> None:
    """SAE picker, then four tabs: prompt, feature page, steering, training."""
    st.title(TITLE)
    st.caption(
        "Sparse-autoencoder features of the loaded model: which features fire on each token, what a "
        "feature responds to across a corpus, what happens when you steer with it, and training a new SAE."
    )
    session = state.session()
    if session is None:
        return
    if not available_specs(session):
        st.info(
            f"No SAE has been trained for {session.model_id} yet. Train one in the **Train** tab "
            "(or run `lenslab prepare`), or pick a pretrained SAE or a folder."
        )
    spec = _pick_sae(session)
    loaded = _load(session, spec)
    if loaded is not None:
        st.caption(md(loaded.label))
        if loaded.info:  # trained here: quality on held-out documents, 95% intervals
            st.caption(" · ".join(quality_lines(loaded.info)))
    tab_prompt, tab_feature, tab_steer, tab_train = st.tabs(["Prompt", "Feature page", "Steer", "Train"])
    with tab_prompt:
        if loaded is not None:
            _prompt_tab(session, loaded)
    with tab_feature:
        if loaded is not None:
            _feature_tab(session, loaded)
    with tab_steer:
        if loaded is not None:
            _steer_tab(session, loaded)
    with tab_train:
        _train_tab(session)


# The prompt tab's starting values and ranges are the config's own (one place to change them).
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SAEFeaturesConfig) if f.name in ("k", "n_heatmap")}


def _prompt_tab(session, loaded: LoadedSAE) -> None:
    probe = get_probe("sae_features")
    prompt = url_prompt(f"{KEY}:prompt", DEFAULT_PROMPT)
    links = LinkedWidgets(f"{KEY}:prompt_tab", session=session)  # ?k=8&n_heatmap=40
    k_field, n_field = config_field(SAEFeaturesConfig, "k"), config_field(SAEFeaturesConfig, "n_heatmap")
    cols = st.columns(2)
    k = number_field(
        "top features per token",
        links.start(k_field, DEFAULTS["k"]),
        min_value=k_field.metadata["min"],
        max_value=k_field.metadata["max"],
        key=f"{KEY}:k",
        where=cols[0],
    )
    n_heat = number_field(
        "features in the heatmap",
        links.start(n_field, DEFAULTS["n_heatmap"]),
        min_value=n_field.metadata["min"],
        max_value=n_field.metadata["max"],
        key=f"{KEY}:nheat",
        where=cols[1],
    )
    for f, value in ((k_field, k), (n_field, n_heat)):
        if value is not None:
            links.keep(f, value)
    show_invalid(links.problems())
    valid = k is not None and n_heat is not None and not links.problems()
    run_hint("SAE features")
    if st.button("Run", type="primary", key=f"{KEY}:run", disabled=not valid) and valid:
        config = SAEFeaturesConfig(sae=loaded.spec, k=k, n_heatmap=n_heat)
        result = state.run_with_status(
            "SAE features", lambda progress: probe.run(session, prompt, config, progress, loaded=loaded)
        )
        if result is not None:
            state.store("sae_features", result)
    result: SAEFeaturesResult | None = state.stored("sae_features")
    if result is None:
        return
    show_result(result, "sae_features")
    st.caption(
        f"CE with the activation zeroed: {result.ce_zero:.3f} nats · MSE {result.mse:.4g} · "
        f"{len(result.tokens) / max(result.seconds, 1e-9):.3g} tokens/s (3 forward passes)"
    )
    options = list(range(1, len(result.tokens))) or [0]
    position = st.selectbox(
        "Token",
        options,
        index=len(options) - 1,
        format_func=lambda p: f"{p}: {result.tokens[p]!r}",  # options are plain text
        key=f"{KEY}:token",
    )
    st.plotly_chart(readable(result.token_figure(position)), key=f"{KEY}:tokenfig", width="stretch")
    pairs = result.token_features(position)
    if pairs:
        picked = st.selectbox(
            "Open a feature page for",
            [f for f, _ in pairs],
            format_func=lambda f: f"feature {f} ({dict(pairs)[f]:.3g})",
            key=f"{KEY}:open",
        )
        if st.button("Show in the Feature page tab", key=f"{KEY}:goto"):
            state.store("sae_feature_pick", int(picked))
            st.info(f"Feature {picked} selected: open the **Feature page** tab.")
    state.save_report([result], session, "sae_features")


def _feature_tab(session, loaded: LoadedSAE) -> None:
    probe = get_probe("sae_feature")
    picked = state.stored("sae_feature_pick") or 0
    feature = number_field(
        "Feature", int(picked), min_value=0, max_value=loaded.d_sae - 1, key=f"{KEY}:feature:{picked}"
    )
    with st.expander("Corpus for the dashboards", expanded=False):
        try:
            corpus: str | None = source_input(
                "corpus",
                "python-docs",
                key=f"{KEY}:corpus",
                names=("python-docs",),
                help="'python-docs' (Python's documentation, always offline), or upload a .txt / .jsonl file",
            )
        except ValueError as exc:
            show_invalid([str(exc)])
            corpus = None
        cols = st.columns(3)
        documents = cols[0].selectbox(
            "documents",
            SUBSETS,
            index=SUBSETS.index("held-out"),
            key=f"{KEY}:documents",
            help="held-out: documents no SAE trained here has seen (every 4th document of the corpus)",
        )
        n_seq = number_field("windows", 256, min_value=1, max_value=100_000, key=f"{KEY}:nseq", where=cols[1])
        context = number_field(
            "tokens per window", 64, min_value=4, max_value=1024, key=f"{KEY}:ctx", where=cols[2]
        )
    st.caption(
        "The first request builds dashboards for all features in one pass over the corpus "
        "(cached on disk); later features open instantly."
    )
    valid = None not in (feature, corpus, n_seq, context) and bool(corpus)
    run_hint("Feature dashboard")
    if st.button("Show feature", type="primary", key=f"{KEY}:showfeature", disabled=not valid) and valid:
        config = SAEFeatureConfig(
            sae=loaded.spec,
            feature=feature,
            corpus=corpus,
            documents=documents,
            n_seq=n_seq,
            context_size=context,
        )
        result = state.run_with_status(
            "Feature dashboard", lambda progress: probe.run(session, "", config, progress, loaded=loaded)
        )
        if result is not None:
            state.store("sae_feature", result)
    result: SAEFeatureResult | None = state.stored("sae_feature")
    if result is None:
        return
    show_result_summary(result)
    st.markdown("**Top-activating contexts** (activating token highlighted)")
    for context in result.top_contexts:
        _context_line(context)
    if not result.top_contexts:
        st.info("This feature never fired on the corpus (a dead feature).")
    for band, contexts in zip(result.quantile_labels, result.quantile_contexts, strict=True):
        st.markdown(f"**{md(band)}**")
        for context in contexts:
            _context_line(context)
    figures = result.figures()
    left, right = st.columns(2)
    left.plotly_chart(readable(figures["histogram"]), key=f"{KEY}:hist", width="stretch")
    right.plotly_chart(readable(figures["logits"]), key=f"{KEY}:logits", width="stretch")
    state.save_report([result], session, "sae_feature")


def _context_line(context) -> None:
    """One dashboard context as HTML (escaped tokens, never Markdown: ``__x__`` stays literal)."""
    st.html(
        f"<div style='font-size:0.9rem'><code>{html_text(f'{context.value:.3g}')}</code>&nbsp; "
        f"{SAEFeatureResult.context_html(context)}</div>"
    )


def show_result_summary(result: SAEFeatureResult) -> None:
    """Metric boxes for a feature page."""
    cols = st.columns(4)
    for col, (name, value) in zip(cols, result.summary().items(), strict=False):
        col.metric(md(name), f"{value:.4g}" if isinstance(value, float) else md(value))


def _steer_tab(session, loaded: LoadedSAE) -> None:
    probe = get_probe("sae_steering")
    prompt = st.session_state.get(f"{KEY}:prompt", DEFAULT_PROMPT)
    st.caption("Prompt (edit it in the Prompt tab):")
    show_text(prompt, limit=400)
    picked = state.stored("sae_feature_pick") or 0
    cols = st.columns(4)
    feature = number_field(
        "Feature",
        int(picked),
        min_value=0,
        max_value=loaded.d_sae - 1,
        key=f"{KEY}:sfeat:{picked}",
        where=cols[0],
    )
    mode = cols[1].selectbox(
        "Mode", MODES, key=f"{KEY}:mode", help="add α·W_dec[f]; clamp the feature to α; zero it"
    )
    alpha = number_field(
        "α",
        150.0,
        key=f"{KEY}:alpha",
        integer=False,
        min_value=-1e6,
        max_value=1e6,
        help="≈ the feature's max activation (see its feature page) is a good start.",
        where=cols[2],
    )
    n_new = number_field("new tokens", 12, min_value=1, max_value=64, key=f"{KEY}:nnew", where=cols[3])
    valid = None not in (feature, alpha, n_new)
    run_hint("SAE steering")
    if st.button("Steer", type="primary", key=f"{KEY}:steer", disabled=not valid) and valid:
        config = SAESteeringConfig(sae=loaded.spec, feature=feature, mode=mode, alpha=alpha, n_new=n_new)
        result = state.run_with_status(
            "SAE steering", lambda progress: probe.run(session, prompt, config, progress, loaded=loaded)
        )
        if result is not None:
            state.store("sae_steering", result)
    result = state.stored("sae_steering")
    if result is None:
        return
    left, right = st.columns(2)
    left.markdown("**Clean continuation**")
    left.code(result.prompt + result.continuation_before, language=None, wrap_lines=True)
    right.markdown(f"**{md(result.config.mode)} feature {result.feature} (α={result.config.alpha:g})**")
    right.code(result.prompt + result.continuation_after, language=None, wrap_lines=True)
    show_result(result, "sae_steering")
    state.save_report([result], session, "sae_steering")


def _train_tab(session) -> None:
    st.markdown(
        "Train a TopK SAE on one hook point with sae-lens' trainer: activations are collected from the "
        "corpus once, then the trainer streams shuffled batches. Saved in sae-lens format under "
        "lenslab's artefacts folder, with its training config and its quality measured on held-out "
        "documents (never trained on), with 95% intervals from a bootstrap over documents."
    )
    config = config_form(SAETrainingConfig, f"{KEY}:train", session)
    overwrite = st.checkbox("Replace an existing SAE of the same name", key=f"{KEY}:overwrite")
    run_hint("Training SAE")
    clicked = st.button("Train SAE", type="primary", key=f"{KEY}:trainbtn", disabled=config is None)
    if clicked and config is not None:
        trained = state.run_with_status(
            "Training SAE", lambda progress: train_sae(session, config, progress, overwrite=overwrite)
        )
        if trained is not None:
            state.store("sae_trained", trained.info)
    info = state.stored("sae_trained")
    if info:
        st.success(
            f"Trained {md(repr(info['training_config']['name']))} on {md(info['hook_name'])}; "
            "on held-out documents: " + "; ".join(quality_lines(info)) + " — pick it in the SAE box above."
        )
        st.json(rounded(info), expanded=False)
