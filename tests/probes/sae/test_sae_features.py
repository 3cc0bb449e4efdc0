"""SAE features on tiny random models: hooks, steering, streaming dashboards, loading, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes import get_probe
from lenslab.probes.base import Result
from lenslab.probes.sae.corpus import (
    corpus_texts,
    held_out_windows,
    read_text_file,
    split_documents,
    token_windows,
)
from lenslab.probes.sae.dashboards import (
    DashboardSettings,
    build_dashboards,
    get_dashboards,
    logit_effects,
    quantile_groups,
)
from lenslab.probes.sae.evaluation import (
    NOT_MEASURED,
    HeldOutEvaluation,
    ce_recovered,
    evaluate_sae,
    explained_variance,
    mean_hook,
    quality_lines,
    splice_hook,
    zero_hook,
)
from lenslab.probes.sae.features import SAEFeatureConfig, SAEFeaturesConfig, _mean_ce
from lenslab.probes.sae.loading import LoadedSAE, check_fits, load_sae, trained_dir
from lenslab.probes.sae.steering import SAESteeringConfig, steering_hook
from lenslab.probes.sae.training import SAETrainingConfig, ensure_trained, train_sae
from lenslab.progress import Cancelled

HOOK = hooknames.resid(1)
TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n\n"
    "def add(a, b):\n    return a + b\n\nSphinx of black quartz, judge my vow! 12 + 30 = 42.\n\n"
) * 6


def make_sae(d_in: int = 32, d_sae: int = 48, k: int = 4, hook: str = HOOK, seed: int = 0):
    """A random inference TopK SAE in sae-lens' own classes."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def capture(session, tokens, name, hooks=()):
    """Activations at ``name`` from the session's stop-early capture (``hooks`` run in the same pass)."""
    return session.capture(tokens, [name], hooks=hooks)[name]


@pytest.fixture
def sae_dir(tmp_path):
    path = tmp_path / "tiny_sae"
    make_sae().save_model(path)
    return path


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_encode_decode_through_hook_matches_sae_lens_forward(tiny_gemma, sae_dir):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    assert loaded.hook_name == HOOK and loaded.d_sae == 48
    tokens = tiny_gemma.tokenize("hello sparse world")
    clean = capture(tiny_gemma, tokens, HOOK)
    spliced = capture(tiny_gemma, tokens, HOOK, [(HOOK, splice_hook(loaded))])
    with torch.inference_mode():
        expected = loaded.sae(clean)  # sae-lens' own forward: encode + decode
        feats = loaded.sae.encode(clean)
    torch.testing.assert_close(spliced[:, 1:], expected[:, 1:])
    torch.testing.assert_close(spliced[:, 0], clean[:, 0])  # BOS left clean
    torch.testing.assert_close(loaded.encode(clean), feats)
    assert int((feats > 0).sum(-1).max()) <= 4  # TopK: at most k active
    assert tiny_gemma.active_hook_count() == 0


@pytest.mark.parametrize("alpha", [3.0, -1.5])
def test_steering_adds_exactly_alpha_times_decoder_row(tiny_gemma, sae_dir, alpha):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    tokens = tiny_gemma.tokenize("steer me")
    clean = capture(tiny_gemma, tokens, HOOK)
    steered = capture(tiny_gemma, tokens, HOOK, [(HOOK, steering_hook(loaded, 7, "add", alpha))])
    delta = steered - clean
    torch.testing.assert_close(delta[0, 1:], (alpha * loaded.sae.W_dec[7]).expand_as(delta[0, 1:]))
    assert torch.equal(delta[0, 0], torch.zeros_like(delta[0, 0]))


def test_zero_and_clamp_move_only_along_the_feature(tiny_gemma, sae_dir):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    tokens = tiny_gemma.tokenize("ablate it")
    clean = capture(tiny_gemma, tokens, HOOK)
    feats = loaded.encode(clean)
    feature = int(feats[0, 1:].sum(0).argmax())  # a feature that fires here
    zeroed = capture(tiny_gemma, tokens, HOOK, [(HOOK, steering_hook(loaded, feature, "zero", 0.0))])
    expected = clean[0, 1:] - feats[0, 1:, feature : feature + 1] * loaded.sae.W_dec[feature]
    torch.testing.assert_close(zeroed[0, 1:], expected)
    clamped = capture(tiny_gemma, tokens, HOOK, [(HOOK, steering_hook(loaded, feature, "clamp", 5.0))])
    expected = clean[0, 1:] + (5.0 - feats[0, 1:, feature : feature + 1]) * loaded.sae.W_dec[feature]
    torch.testing.assert_close(clamped[0, 1:], expected)
    with pytest.raises(ValueError, match="mode"):
        steering_hook(loaded, feature, "double", 1.0)
    with pytest.raises(ValueError, match="out of range"):
        steering_hook(loaded, 48, "add", 1.0)


def test_streaming_dashboards_equal_brute_force(tiny_gemma, sae_dir, corpus_file):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    settings = DashboardSettings(
        corpus=str(corpus_file), n_seq=10, context_size=16, top_k=5, n_samples=6, batch_size=3
    )
    windows = token_windows(tiny_gemma, settings.corpus, context_size=16, n_seq=10)
    dash = build_dashboards(tiny_gemma, loaded, windows, settings)
    acts = loaded.encode(capture(tiny_gemma, torch.from_numpy(windows.tokens), HOOK))[:, 1:]
    flat_index = (np.arange(10)[:, None] * 16 + np.arange(1, 16)[None, :]).reshape(-1)
    acts = acts.reshape(-1, loaded.d_sae).detach().numpy()
    for f in range(loaded.d_sae):
        column = acts[:, f]
        order = np.argsort(-column, kind="stable")[:5]
        expected_values = np.where(column[order] > 0, column[order], 0.0)
        np.testing.assert_allclose(dash.top_values[f], expected_values, rtol=1e-5, atol=1e-6)
        firing = column[order] > 0
        assert set(dash.top_index[f][firing]) == set(flat_index[order][firing])
        assert (dash.top_index[f][~firing] == -1).all()
        # samples are real firings with their true activation
        for value, index in zip(dash.sample_values[f], dash.sample_index[f], strict=True):
            if index >= 0:
                row = int(np.nonzero(flat_index == index)[0][0])
                assert column[row] > 0 and np.isclose(column[row], value, rtol=1e-5)
    np.testing.assert_array_equal(dash.fire_count, (acts > 0).sum(0))
    np.testing.assert_array_equal(dash.hist_counts.sum(1), dash.fire_count)
    np.testing.assert_allclose(dash.act_sum, acts.sum(0), rtol=1e-4, atol=1e-5)
    assert dash.n_tokens == 10 * 15


@pytest.mark.parametrize("forward_batches", [2, 4])
def test_dashboards_with_wider_forwards_equal_one_forward_per_batch(
    tiny_gemma, sae_dir, corpus_file, monkeypatch, forward_batches
):
    """Several statistics batches per forward give the same dashboards as one forward each
    (histogram edges from the first batch, random samples, top-k), also across a ragged end."""
    from lenslab.probes.sae import dashboards

    loaded = load_sae(tiny_gemma, str(sae_dir))
    settings = DashboardSettings(
        corpus=str(corpus_file), n_seq=10, context_size=16, top_k=5, n_samples=6, batch_size=3
    )
    windows = token_windows(tiny_gemma, settings.corpus, context_size=16, n_seq=10)
    monkeypatch.setattr(dashboards, "FORWARD_BATCHES", 1)
    plain = build_dashboards(tiny_gemma, loaded, windows, settings)
    monkeypatch.setattr(dashboards, "FORWARD_BATCHES", forward_batches)
    wide = build_dashboards(tiny_gemma, loaded, windows, settings)
    for name in ("top_values", "top_index", "sample_values", "sample_index", "hist_counts", "fire_count"):
        np.testing.assert_array_equal(getattr(wide, name), getattr(plain, name), err_msg=name)
    np.testing.assert_allclose(wide.act_sum, plain.act_sum, rtol=1e-6)
    assert (plain.fire_count > 0).any()  # the comparison covers firing features


def test_dashboards_cache_round_trip(tiny_gemma, sae_dir, corpus_file, lenslab_home):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    settings = DashboardSettings(corpus=str(corpus_file), n_seq=4, context_size=12, batch_size=2)
    first = get_dashboards(tiny_gemma, loaded, settings)
    files = list((lenslab_home / "artefacts").rglob("*.npz"))
    assert len(files) == 1
    calls = []
    second = get_dashboards(tiny_gemma, loaded, settings, lambda f, m="": calls.append(m))
    assert calls[-1] == "dashboards loaded from cache"
    for name in ("top_values", "top_index", "hist_counts", "fire_count", "tokens"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    np.load(files[0], allow_pickle=False)  # plain numpy, no pickle


def test_quantile_groups_are_ordered():
    values = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0], dtype=np.float32)
    index = np.array([10, 11, 12, 13, 14, -1])
    groups = quantile_groups(values, index, n_groups=2, per_group=2)
    assert len(groups) == 2
    assert groups[0]["values"].min() >= groups[1]["values"].max()
    assert -1 not in np.concatenate([g["index"] for g in groups])


def test_mismatched_sae_refused(tiny_gemma, tmp_path):
    wrong_width = tmp_path / "wide"
    make_sae(d_in=16).save_model(wrong_width)
    with pytest.raises(ValueError, match="16-wide"):
        load_sae(tiny_gemma, str(wrong_width))
    wrong_hook = tmp_path / "deep"
    make_sae(hook=hooknames.resid(7)).save_model(wrong_hook)
    with pytest.raises(ValueError, match="does not have"):
        load_sae(tiny_gemma, str(wrong_hook))
    with pytest.raises(FileNotFoundError, match="sae-lens format"):
        load_sae(tiny_gemma, str(tmp_path / "nothing"))


def test_trained_sae_of_another_model_refused(tiny_gemma, lenslab_home):
    target = trained_dir(tiny_gemma, "other")
    make_sae().save_model(target)
    (target / "lenslab.json").write_text(json.dumps({"model_id": "some-other-model"}))
    with pytest.raises(ValueError, match="trained for 'some-other-model'"):
        load_sae(tiny_gemma, "trained:other")
    with pytest.raises(FileNotFoundError, match="lenslab prepare"):
        load_sae(tiny_gemma, "default")
    with pytest.raises(ValueError, match="invalid SAE name"):
        load_sae(tiny_gemma, "trained:../../etc")


def test_offline_pretrained_request_gives_clear_error(tiny_gemma, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="offline"):
        load_sae(tiny_gemma, "pretrained:gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small")
    with pytest.raises(ValueError, match="unknown SAE release"):
        load_sae(tiny_gemma, "pretrained:no-such-release/x")
    with pytest.raises(ValueError, match="has no SAE"):
        load_sae(tiny_gemma, "pretrained:gpt2-small-res-jb/blocks.99.hook_resid_pre")


def test_pretrained_path_loads_from_local_hub_cache(tmp_path, monkeypatch):
    """The sae-lens registry path end to end, served from a Hugging Face cache laid out on disk."""
    import huggingface_hub.constants as hf_constants

    from lenslab.models.tiny import tiny_session

    tiny_gpt2 = tiny_session("gpt2")
    cache = tmp_path / "hub"
    repo = cache / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    make_sae(hook="blocks.0.hook_resid_pre").save_model(
        repo / "snapshots" / commit / "blocks.0.hook_resid_pre"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    loaded = load_sae(tiny_gpt2, "pretrained:gpt2-small-res-jb/blocks.0.hook_resid_pre")
    block_input = hooknames.resid_pre(0)
    assert loaded.hook_name == block_input  # alias resolved to the bridge's canonical name
    assert loaded.path is None and check_fits(tiny_gpt2, loaded.sae) == block_input
    tokens = tiny_gpt2.tokenize("abc")
    act = capture(tiny_gpt2, tokens, block_input)
    torch.testing.assert_close(loaded.encode(act), loaded.sae.encode(act))


def test_per_prompt_probe_on_tiny_model(tiny_gemma, sae_dir):
    probe = get_probe("sae_features")
    result = probe.run(
        tiny_gemma, "features per token", SAEFeaturesConfig(sae=str(sae_dir), k=3, n_heatmap=10)
    )
    n = len(result.tokens)
    assert result.top_ids.shape == (n, 3) and (result.top_ids[0] == -1).all()
    assert result.l0[0] == 0 and (result.l0[1:] <= 4).all() and (result.l0[1:] >= 1).all()
    assert np.isfinite([result.mse, result.explained_variance, result.ce_clean, result.ce_sae]).all()
    for position in range(1, n):
        pairs = result.token_features(position)
        assert [v for _, v in pairs] == sorted((v for _, v in pairs), reverse=True)
    if result.l0_constant():  # TopK: a constant chart is omitted and the summary says so
        assert (
            set(result.figures()) == {"heatmap", "last_token"} and "on every token" in result.summary()["L0"]
        )
    else:
        assert set(result.figures()) == {"heatmap", "l0", "last_token"}
    constant = dataclasses.replace(result, l0=np.array([0, 4, 4, 4], dtype=np.float32))
    varying = dataclasses.replace(result, l0=np.array([0, 4, 2, 3], dtype=np.float32))
    assert "l0" not in constant.figures() and "l0" in varying.figures()

    assert varying.summary()["mean L0"] == pytest.approx(3.0)
    again = Result.from_dict(result.to_dict())
    np.testing.assert_array_equal(again.heatmap, result.heatmap)
    assert again.config == result.config


def test_per_prompt_ces_equal_one_forward_per_counterfactual(tiny_gemma, sae_dir):
    """The spliced and zeroed CEs come from one forward of both rows; each equals a run of its own."""
    config = SAEFeaturesConfig(sae=str(sae_dir), k=3, n_heatmap=10)
    prompt = "features per token"
    result = get_probe("sae_features").run(tiny_gemma, prompt, config)
    loaded = load_sae(tiny_gemma, config.sae)
    tokens = tiny_gemma.tokenize(prompt)
    for value, hook in ((result.ce_sae, splice_hook(loaded)), (result.ce_zero, zero_hook())):
        alone = _mean_ce(tiny_gemma.logits(tokens, [(loaded.hook_name, hook)]), tokens)
        assert value == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert result.ce_sae != pytest.approx(result.ce_zero, rel=1e-3)  # the two rows differ


def test_feature_probe_on_tiny_model(tiny_gemma, sae_dir, corpus_file, lenslab_home):
    probe = get_probe("sae_feature")
    loaded = load_sae(tiny_gemma, str(sae_dir))
    settings = DashboardSettings(corpus=str(corpus_file), n_seq=8, context_size=16)
    dash = get_dashboards(tiny_gemma, loaded, settings)
    feature = int(np.argmax(dash.fire_count))
    config = SAEFeatureConfig(
        sae=str(sae_dir), feature=feature, corpus=str(corpus_file), n_seq=8, context_size=16
    )
    result = probe.run(tiny_gemma, "", config)
    assert result.top_contexts and result.max_activation == pytest.approx(float(dash.top_values[feature, 0]))
    top = result.top_contexts[0]
    seq, pos = divmod(int(dash.top_index[feature, 0]), 16)
    assert top.tokens[top.focus] == tiny_gemma.decode_each([int(dash.tokens[seq, pos])])[0]
    assert 0 < result.frequency <= 1 and result.hist_counts.sum() == dash.fire_count[feature]
    assert len(result.logit_top) == 10 and result.logit_top_values[0] >= result.logit_bottom_values[0]
    assert "<b>[[" in result.figures()["contexts"].data[0].cells.values[2][0]
    html_text = type(result).context_html(top)
    assert "<script" not in html_text
    Result.from_dict(result.to_dict())


def test_context_html_escapes_tokens():
    from lenslab.probes.sae.features import FeatureContext, SAEFeatureResult

    text = SAEFeatureResult.context_html(FeatureContext(tokens=["a", "<script>", "b"], focus=1, value=1.0))
    assert "&lt;script&gt;" in text and "<script>" not in text


def test_steering_probe_alpha_zero_changes_nothing(tiny_gemma, sae_dir):
    probe = get_probe("sae_steering")
    same = probe.run(tiny_gemma, "abc", SAESteeringConfig(sae=str(sae_dir), feature=3, alpha=0.0, n_new=4))
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.continuation_before == same.continuation_after
    moved = probe.run(tiny_gemma, "abc", SAESteeringConfig(sae=str(sae_dir), feature=3, alpha=50.0, n_new=4))
    assert moved.kl > 1e-3
    assert not np.allclose(moved.probs_before, moved.probs_after)
    Result.from_dict(moved.to_dict())
    assert tiny_gemma.active_hook_count() == 0


def _tiny_training(corpus_file, **settings) -> SAETrainingConfig:
    """A training config for the tiny model: layer 1, 32-token windows, the test corpus."""
    return SAETrainingConfig(**{"layer": 1, "context_size": 32, "corpus": str(corpus_file), **settings})


def test_train_sae_on_tiny_model(tiny_gemma, corpus_file, lenslab_home):
    sizes = {"d_sae": 64, "k": 4, "n_tokens": 600, "steps": 60, "batch_size": 64, "lr": 1e-2}
    config = _tiny_training(corpus_file, name="tiny", eval_windows=2, **sizes)
    messages = []
    loaded = train_sae(tiny_gemma, config, lambda f, m="": messages.append((f, m)))
    folder = trained_dir(tiny_gemma, "tiny")
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    info = json.loads((folder / "lenslab.json").read_text())
    assert info["model_id"] == tiny_gemma.model_id and info["training_config"] == config.to_dict()
    metrics = info["metrics"]
    assert 0 < metrics["l0"] <= 4 and np.isfinite(metrics["explained_variance"])
    assert metrics["explained_variance"] > 0.2
    # trained on training documents only, measured on held-out ones
    train_docs, held_docs = split_documents(len(corpus_texts(str(corpus_file))))
    assert set(info["documents"]["train"]) <= set(train_docs)
    assert info["held_out"]["documents"] and set(info["held_out"]["documents"]) <= set(held_docs)
    evaluation = HeldOutEvaluation.from_info(info)
    assert evaluation is not None and evaluation.n_tokens == 2 * 31
    assert evaluation.estimates["ce_clean"] == metrics["ce_clean"]
    assert "(62 tokens, " in evaluation.text("l0")
    assert messages[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in messages)
    assert loaded.hook_name == HOOK and loaded.sae.cfg.architecture() == "topk"
    mtime = (folder / "sae_weights.safetensors").stat().st_mtime
    ensure_trained(tiny_gemma, config)  # idempotent: no retraining
    assert (folder / "sae_weights.safetensors").stat().st_mtime == mtime
    with pytest.raises(FileExistsError, match="already exists"):
        train_sae(tiny_gemma, config)


def test_train_sae_cancel_leaves_nothing(tiny_gemma, corpus_file, lenslab_home):
    sizes = {"d_sae": 32, "k": 2, "n_tokens": 300, "steps": 200, "batch_size": 32}
    config = _tiny_training(corpus_file, name="cancelled", eval_windows=1, **sizes)

    def cancel(fraction, message=""):
        if "training step" in message:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        train_sae(tiny_gemma, config, cancel)
    assert not trained_dir(tiny_gemma, "cancelled").exists()


def test_training_config_validation(tiny_gemma):
    with pytest.raises(ValueError, match="layer"):
        SAETrainingConfig(layer=9).validate(tiny_gemma)
    with pytest.raises(ValueError, match="cannot exceed"):
        SAETrainingConfig(layer=1, d_sae=8, k=16).validate(tiny_gemma)
    with pytest.raises(ValueError, match="invalid SAE name"):
        SAETrainingConfig(layer=1, name="a/b").validate(tiny_gemma)


def test_corpus_errors(tiny_gemma, tmp_path):
    with pytest.raises(FileNotFoundError):
        read_text_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_text_file(bad)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(ValueError, match="windows"):
        token_windows(tiny_gemma, str(short), context_size=16, n_seq=4)
    windows = token_windows(tiny_gemma, "python-docs", context_size=8, n_seq=3)
    assert (
        windows.tokens.shape == (3, 8) and (windows.tokens[:, 0] == tiny_gemma.tokenizer.bos_token_id).all()
    )


# ------------------------------------------------------------------- held-out evaluation
class FunctionSAE(torch.nn.Module):
    """A stand-in SAE: its features are the activations, its decoder is ``reconstruct``."""

    def __init__(self, d_in, reconstruct):
        super().__init__()
        self.dtype = torch.float32
        self.reconstruct = reconstruct
        self.W_dec = torch.nn.Parameter(torch.eye(d_in))

    def encode(self, activations):
        return activations

    def decode(self, features):
        return self.reconstruct(features)


def _held_out(tiny_gemma, corpus_file, n_seq=6):
    return held_out_windows(tiny_gemma, str(corpus_file), context_size=16, n_seq=n_seq)


def test_split_and_held_out_windows_are_disjoint_from_training(tiny_gemma, corpus_file):
    n_docs = len(corpus_texts(str(corpus_file)))
    train_docs, held_docs = split_documents(n_docs)
    assert held_docs == [i for i in range(n_docs) if i % 4 == 3] and not set(train_docs) & set(held_docs)
    assert sorted(train_docs + held_docs) == list(range(n_docs))
    train = token_windows(tiny_gemma, str(corpus_file), context_size=16, n_seq=20, subset="train")
    held = _held_out(tiny_gemma, corpus_file, n_seq=len(held_docs) + 1)
    assert set(train.used_documents()) <= set(train_docs)
    assert set(held.used_documents()) == set(held_docs)
    # round robin: the first windows come from distinct documents; each window stays in one
    assert len(set(held.documents[: len(held_docs), 0])) == len(held_docs)
    assert (held.documents == held.documents[:, :1]).all()
    # the window's text is the document's own tokens
    first_doc = int(held.documents[0, 0])
    ids = tiny_gemma.tokenizer(corpus_texts(str(corpus_file))[first_doc], add_special_tokens=False)[
        "input_ids"
    ]
    assert held.tokens[0, 1:].tolist() == ids[:15]
    with pytest.raises(ValueError, match="at least 2"):
        split_documents(1)


def test_metric_formulas_known_answers():
    x = np.array([1.0, 2.0, 3.0])
    assert explained_variance(np.zeros(3), x) == 1.0
    assert explained_variance(x, x) == 0.0
    assert explained_variance(np.array([1.0]), np.array([4.0])) == 0.75
    assert ce_recovered(2.0, 2.0, 6.0) == 1.0 and ce_recovered(2.0, 6.0, 6.0) == 0.0
    assert ce_recovered(2.0, 3.0, 6.0) == 0.75 and np.isnan(ce_recovered(2.0, 3.0, 2.0))


def test_perfect_reconstruction_recovers_everything(tiny_gemma, corpus_file):
    """An identity "SAE" gives EV = 1 and CE recovered = 1 exactly, against both ablations."""
    identity = LoadedSAE(sae=FunctionSAE(32, lambda f: f), hook_name=HOOK, spec="identity")
    result = evaluate_sae(tiny_gemma, identity, _held_out(tiny_gemma, corpus_file), batch_size=4)
    est = result.estimates
    assert est["explained_variance"] == 1.0 and est["mse"] == 0.0
    assert est["ce_sae"] == est["ce_clean"] < est["ce_zero_ablation"]
    assert est["ce_recovered"] == 1.0 and est["ce_recovered_mean"] == 1.0
    assert result.intervals["ce_recovered"] == (1.0, 1.0)
    assert result.n_tokens == 6 * 15 and result.n_documents == 4
    assert tiny_gemma.active_hook_count() == 0


def test_zero_and_mean_reconstructions_recover_nothing(tiny_gemma, corpus_file):
    """Reconstructing 0 is zero-ablation (CE recovered 0); reconstructing the mean is mean-ablation."""
    windows = _held_out(tiny_gemma, corpus_file)
    zero = LoadedSAE(sae=FunctionSAE(32, torch.zeros_like), hook_name=HOOK, spec="zero")
    est = evaluate_sae(tiny_gemma, zero, windows).estimates
    assert est["ce_sae"] == est["ce_zero_ablation"] and est["ce_recovered"] == 0.0
    mean = torch.linspace(-1, 1, 32)
    constant = LoadedSAE(sae=FunctionSAE(32, lambda f: mean.expand_as(f)), hook_name=HOOK, spec="mean")
    est = evaluate_sae(tiny_gemma, constant, windows, mean_activation=mean).estimates
    assert est["ce_sae"] == est["ce_mean_ablation"] and est["ce_recovered_mean"] == 0.0


def test_evaluation_same_with_wider_forwards(tiny_gemma, sae_dir, corpus_file):
    """Forwards over several batches give exactly the figures of one forward per batch."""
    loaded = load_sae(tiny_gemma, str(sae_dir))
    windows = _held_out(tiny_gemma, corpus_file)  # 6 windows: forwards of 4 and 2 below
    one = evaluate_sae(tiny_gemma, loaded, windows, batch_size=2, forward_batches=1)
    wide = evaluate_sae(tiny_gemma, loaded, windows, batch_size=2, forward_batches=2)
    assert wide.estimates == one.estimates and wide.intervals == one.intervals
    assert (wide.n_tokens, wide.n_ce_positions) == (one.n_tokens, one.n_ce_positions)
    with pytest.raises(ValueError, match="forward_batches"):
        evaluate_sae(tiny_gemma, loaded, windows, forward_batches=0)


def test_evaluation_equals_an_independent_computation(tiny_gemma, sae_dir, corpus_file):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    windows = _held_out(tiny_gemma, corpus_file)
    result = evaluate_sae(tiny_gemma, loaded, windows, position_stride=1)
    tokens = torch.from_numpy(windows.tokens)
    act = capture(tiny_gemma, tokens, HOOK)[:, 1:].reshape(-1, 32)
    with torch.inference_mode():
        feats = loaded.sae.encode(act)
        recon = loaded.sae.decode(feats)
        logits = tiny_gemma.logits(tokens, [])
    ev = 1 - float(((recon - act) ** 2).sum() / ((act - act.mean(0)) ** 2).sum())
    assert result.estimates["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert result.estimates["l0"] == pytest.approx(float((feats > 0).sum(-1).float().mean()))
    nll = torch.nn.functional.cross_entropy(
        logits[:, 1:-1].reshape(-1, logits.shape[-1]), tokens[:, 2:].reshape(-1)
    )
    assert result.estimates["ce_clean"] == pytest.approx(float(nll), rel=1e-5)
    # Ablations: every window run with the hook (the evaluation runs one window for all of them).
    mean = act.mean(0)
    for name, hook in (("ce_zero_ablation", zero_hook()), ("ce_mean_ablation", mean_hook(mean))):
        with torch.inference_mode():
            ablated = tiny_gemma.logits(tokens, [(HOOK, hook)])
        expected = torch.nn.functional.cross_entropy(
            ablated[:, 1:-1].reshape(-1, ablated.shape[-1]), tokens[:, 2:].reshape(-1)
        )
        assert result.estimates[name] == pytest.approx(float(expected), rel=1e-5)
    for name in ("l0", "explained_variance", "ce_recovered"):
        interval = result.interval(name)
        assert interval.low <= interval.estimate <= interval.high and interval.n == 4


def test_old_sae_files_load_as_not_measured(tiny_gemma, sae_dir):
    (sae_dir / "lenslab.json").write_text(json.dumps({"metrics": {"l0": 4.0, "explained_variance": 0.9}}))
    loaded = load_sae(tiny_gemma, str(sae_dir))
    assert HeldOutEvaluation.from_info(loaded.info) is None
    assert quality_lines(loaded.info) == [f"held-out quality: {NOT_MEASURED}"]


# --------------------------------------------------------------------- decoding directions
def test_decode_direction_reads_through_the_final_norm_weight(tiny_any):
    session = tiny_any
    norm = session.hf_final_norm()
    with torch.no_grad():
        norm.weight.normal_(0, 1)  # a non-trivial weight, so leaving it out would show
    torch.manual_seed(0)
    direction = torch.randn(3, session.d_model)
    got = session.decode_direction(direction)
    w_out = session.output_embedding().weight.detach()
    gain = norm.weight.detach() + (1.0 if session.architecture.startswith("Gemma") else 0.0)
    torch.testing.assert_close(got, (direction * gain) @ w_out.T)  # by hand
    if hasattr(norm, "bias") and norm.bias is not None:
        return  # LayerNorm (GPT-2): centring and bias; the hand computation above is the check
    # RMSNorm: the model's own norm and unembedding, up to the positive 1/rms scale
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0))
    rms = (direction.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    with torch.inference_mode():
        through_model = session.final_logits(session.final_norm(direction))
    torch.testing.assert_close(got / rms, through_model, rtol=1e-4, atol=1e-4)


def test_logit_effects_use_decode_direction(tiny_gemma, sae_dir):
    loaded = load_sae(tiny_gemma, str(sae_dir))
    top_i, top_v, _, bot_v = logit_effects(tiny_gemma, loaded, [5, 7], k=3)
    expected = tiny_gemma.decode_direction(loaded.sae.W_dec[[5, 7]].detach())
    values, ids = expected.topk(3, dim=-1)
    np.testing.assert_array_equal(top_i, ids.numpy())
    np.testing.assert_allclose(top_v, values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(bot_v, expected.topk(3, dim=-1, largest=False).values.numpy(), rtol=1e-6)


def _uncached_greedy(session, tokens, n_new, hooks):
    """The definition: re-run the whole sequence (hooks on every row but BOS) for each new token."""
    ids, first = tokens, None
    with session.hooks(hooks) as model, torch.inference_mode():
        for _ in range(n_new):
            logits = model(ids)[0, -1].float()
            first = logits.softmax(-1) if first is None else first
            ids = torch.cat([ids, logits.argmax()[None, None]], dim=1)
    return ids[0, tokens.shape[1] :], first


@pytest.mark.parametrize(("mode", "alpha"), [("add", 40.0), ("clamp", 5.0), ("zero", 0.0), ("add", 0.0)])
def test_cached_steered_generation_equals_rerunning_the_sequence(tiny_gemma, sae_dir, mode, alpha):
    from lenslab.probes.sae.steering import greedy

    loaded = load_sae(tiny_gemma, str(sae_dir))
    tokens = tiny_gemma.tokenize("The cat sat on")
    hooks = [(loaded.hook_name, steering_hook(loaded, 3, mode, alpha))]
    ids, first = greedy(tiny_gemma, tokens, 8, hooks)
    want_ids, want_first = _uncached_greedy(tiny_gemma, tokens, 8, hooks)
    assert torch.equal(ids, want_ids), (ids, want_ids)
    torch.testing.assert_close(first, want_first, rtol=1e-4, atol=1e-6)
    assert tiny_gemma.active_hook_count() == 0


def test_loaded_sae_is_reused_until_its_files_change(tiny_gemma, sae_dir, monkeypatch):
    import os

    first = load_sae(tiny_gemma, str(sae_dir))
    checks = []
    monkeypatch.setattr(
        "lenslab.probes.sae.loading.check_fits", lambda s, sae: checks.append(sae) or first.hook_name
    )
    again = load_sae(tiny_gemma, str(sae_dir))
    assert again.sae is first.sae and not checks  # no second read, no second check forward
    make_sae(seed=1).save_model(sae_dir)  # retrained in place
    for file in sae_dir.iterdir():  # a later modification time even on coarse-grained file systems
        stamp = file.stat().st_mtime_ns + 2_000_000_000
        os.utime(file, ns=(stamp, stamp))
    fresh = load_sae(tiny_gemma, str(sae_dir))
    assert fresh.sae is not first.sae and len(checks) == 1
    assert not torch.equal(fresh.sae.W_dec, first.sae.W_dec)
