"""Future Lens unit tests on tiny random models: math, hooks, data, artefacts, probe, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens.data import (
    HORIZONS,
    DataSettings,
    build_dataset,
    cache_dir,
    load_documents,
)
from lenslab.probes.future_lens.evaluation import (
    FutureLensEvalConfig,
    FutureLensEvalResult,
    bigram_top_ids,
    bigram_training_pairs,
    document_intervals,
    evaluate,
    hits_at_ks,
    precision_at_k,
    run_evaluation,
)
from lenslab.probes.future_lens.linear import (
    LinearMaps,
    evaluation_linear_path,
    fit_linear_map,
    fit_linear_maps,
    linear_path,
    load_linear,
)
from lenslab.probes.future_lens.methods import Artefacts, method_logits
from lenslab.probes.future_lens.probe import (
    FutureLens,
    FutureLensConfig,
    FutureLensResult,
    prepare_default_artefacts,
    train_learned_prompt,
)
from lenslab.probes.future_lens.prompts import (
    PromptTraining,
    SoftPrompt,
    causal_logits,
    embedding_multiplier,
    fixed_context_ids,
    free_running_logits,
    kl_original_intervened,
    train_soft_prompt,
    transplant_hook,
)
from lenslab.probes.stats import wilson

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox number {i} jumps over the lazy dog and keeps running far away."
    for i in range(40)
)


@pytest.fixture
def corpus(tmp_path):
    """40 one-paragraph documents (a .jsonl file), so the test split holds several documents."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in TEXT.split("\n\n")), encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tiny_gemma, corpus, lenslab_home):
    return build_dataset(tiny_gemma, DataSettings(source=str(corpus), n_examples=80, prefix_tokens=10))


# ------------------------------------------------------------------------------------ linear fit
def test_closed_form_fit_recovers_known_map():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen) * 50 + 7
    true_w = torch.randn(16, 12, generator=gen)
    bias = torch.randn(12, generator=gen)
    y = x @ true_w + bias
    weight, x_mean, y_mean = fit_linear_map(x, y, ridge=0.0)
    assert torch.allclose(weight, true_w, atol=1e-4)
    assert torch.allclose((x - x_mean) @ weight + y_mean, y, atol=1e-2)
    ridge_w, _, _ = fit_linear_map(x, y, ridge=1.0)
    assert ridge_w.norm() < weight.norm()  # ridge shrinks
    # few examples, y = x: shrinking toward the identity keeps W = I, toward zero does not
    few = x[:8]
    toward_i, _, _ = fit_linear_map(few, few, ridge=0.5, toward_identity=True)
    toward_0, _, _ = fit_linear_map(few, few, ridge=0.5)
    assert torch.allclose(toward_i, torch.eye(16), atol=1e-4)
    assert not torch.allclose(toward_0, torch.eye(16), atol=1e-2)
    with pytest.raises(ValueError, match="d_in == d_out"):
        fit_linear_map(x, y, ridge=0.5, toward_identity=True)
    with pytest.raises(ValueError, match="ridge"):
        fit_linear_map(x, y, ridge=-1.0)
    with pytest.raises(ValueError, match="rows"):
        fit_linear_map(x, y[:10])


# ----------------------------------------------------------------------------------- transplant
def test_transplant_writes_exactly_one_position_and_is_removed(tiny_gemma):
    session = tiny_gemma
    tokens = session.tokenize("hello world")
    name = session.resid_name(0)
    clean = session.run(tokens, [name]).activations[name][0]
    states = torch.randn(1, session.d_model) * 3
    seen = {}

    def capture(tensor, *, hook):
        seen["resid"] = tensor[0].detach().clone()

    hooks = [(name, transplant_hook(states, 4)), (name, capture)]
    with session.hooks(hooks) as model, torch.inference_mode():
        model(tokens)
    assert session.active_hook_count() == 0
    changed = (seen["resid"] != clean).any(-1)
    assert changed.tolist() == [i == 4 for i in range(tokens.shape[1])]
    assert torch.equal(seen["resid"][4], states[0])
    with pytest.raises(RuntimeError), session.hooks([(name, transplant_hook(states, 4))]):
        raise RuntimeError("boom")
    assert session.active_hook_count() == 0


def test_identity_transplant_leaves_the_model_unchanged(tiny_gemma):
    """Transplanting the state the context already has must reproduce the plain forward."""
    session = tiny_gemma
    context = fixed_context_ids(session, "Tell me about")
    teacher = torch.tensor([[10, 11, 12], [20, 21, 22]])
    layer = 1
    plain = session.run(torch.cat([context.expand(2, -1), teacher], 1), [session.resid_name(layer)])
    own = plain.activations[session.resid_name(layer)][:, len(context) - 1]
    with torch.inference_mode():
        logits = causal_logits(session, own, layer, teacher, context_ids=context)
    assert logits.shape == (2, 4, session.d_vocab)
    assert torch.allclose(logits, plain.logits[:, len(context) - 1 :], atol=1e-4)
    assert session.active_hook_count() == 0


# ----------------------------------------------------------------------------------- protocols
def _plain_free_run(session, states, layer, context, horizon, prompt=None):
    """Independent free-running loop: transplant, full forward (no cache), argmax, append, repeat.

    With a soft prompt the context is built as input embeddings (BOS, prompt · multiplier, then
    the generated tokens' embeddings) instead of through the method's embedding hook.
    """
    position = len(context) - 1
    tokens = context.expand(states.shape[0], -1).clone()
    steps = []
    embed = session.input_embedding()
    for _ in range(horizon):
        hooks = [(session.resid_name(layer), transplant_hook(states, position))]
        with session.hooks(hooks) as model, torch.inference_mode():
            if prompt is None:
                logits = model(tokens)[:, -1]
            else:
                vectors, multiplier = prompt
                embeds = embed(tokens)
                embeds[:, 1 : 1 + len(vectors)] = vectors * multiplier
                logits = model.hf(inputs_embeds=embeds).logits[:, -1]
        steps.append(logits)
        tokens = torch.cat([tokens, logits.float().argmax(-1, keepdim=True)], 1)
    return torch.stack(steps, 1), tokens[:, len(context) :]


def test_free_running_equals_a_plain_loop(tiny_gemma):
    session = tiny_gemma
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(3, session.d_model, generator=gen) * 4
    context = fixed_context_ids(session, "Tell me about")
    with torch.inference_mode():
        fast = free_running_logits(session, states, 0, 4, context_ids=context)
    slow, chosen = _plain_free_run(session, states, 0, context, 4)
    assert fast.shape == (3, 4, session.d_vocab)
    assert torch.equal(fast.float().argmax(-1), chosen)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    # the learned prompt: BOS + soft vectors, continued on its own tokens
    vectors = torch.randn(3, session.d_model, generator=gen) * 0.05
    multiplier = embedding_multiplier(session)
    bos_context = torch.full((4,), int(context[0]))
    with torch.inference_mode():
        fast = free_running_logits(session, states, 1, 3, soft_prompt=vectors, multiplier=multiplier)
    slow, chosen = _plain_free_run(session, states, 1, bos_context, 3, prompt=(vectors, multiplier))
    assert torch.equal(fast.float().argmax(-1), chosen)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    assert session.active_hook_count() == 0


def test_teacher_forced_is_the_old_single_forward_and_free_running_differs(tiny_gemma):
    """Teacher forcing = one forward of context + fed tokens; free-running = the run's own tokens.

    Where the fed tokens happen to equal the intervened run's own greedy tokens, the two
    protocols must agree; elsewhere N ≥ 1 differs, and N = 0 never depends on the protocol.
    """
    session = tiny_gemma
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(4, session.d_model, generator=gen) * 4
    context = fixed_context_ids(session)
    artefacts = Artefacts()
    with torch.inference_mode():
        free = method_logits(session, "fixed", 1, states, 4, artefacts)
    own = free.float().argmax(-1)[:, :3]
    other = (own + 1 + torch.randint(0, 5, own.shape, generator=gen)) % session.d_vocab
    teacher = torch.cat([own[:2], other[2:]])  # rows 0-1 fed their own tokens, rows 2-3 others
    with torch.inference_mode():
        forced = method_logits(
            session, "fixed", 1, states, 4, artefacts, protocol="teacher-forced", teacher=teacher
        )
    # the old behaviour: one plain forward over context + teacher with the transplant
    hooks = [(session.resid_name(1), transplant_hook(states, len(context) - 1))]
    with session.hooks(hooks) as model, torch.inference_mode():
        old = model(torch.cat([context.expand(4, -1), teacher], 1))[:, len(context) - 1 :]
    torch.testing.assert_close(forced, old, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(forced[:, 0], free[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(forced[:2], free[:2], atol=1e-4, rtol=1e-4)
    assert (forced[2:, 1:] - free[2:, 1:]).abs().amax() > 1e-2
    with pytest.raises(ValueError, match="teacher forcing needs"):
        method_logits(session, "fixed", 1, states, 4, artefacts, protocol="teacher-forced")
    with pytest.raises(ValueError, match="protocol"):
        method_logits(session, "fixed", 1, states, 4, artefacts, protocol="sideways")
    assert session.active_hook_count() == 0


# -------------------------------------------------------------------------------- intervals
def test_intervals_resample_documents_not_windows():
    # two documents, one always right and one always wrong: 100 windows say little
    hits = np.repeat([True, False], 50)[:, None]
    docs = np.repeat([7, 9], 50)
    estimate, ci = document_intervals(hits, docs)
    assert estimate[0] == 0.5
    assert ci[0, 0] <= 0.05 and ci[0, 1] >= 0.95  # resampling two documents spans almost everything
    windows = wilson(50, 100)  # as if the windows were independent
    assert windows.high - windows.low < 0.25
    # many documents, mostly right: the interval holds the estimate and excludes chance (0.5)
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(40), 5)
    per_doc = rng.random(40) < 0.9
    hits = np.stack([per_doc[docs], np.ones(200, bool)], -1)
    estimate, ci = document_intervals(hits, docs)
    assert ci[0, 0] <= estimate[0] <= ci[0, 1] and ci[0, 0] > 0.5
    assert ci[1].tolist() == [1.0, 1.0]  # every document right: no spread
    # the same hits as 200 single-window documents give a narrower interval
    _, narrow = document_intervals(hits, np.arange(200))
    assert narrow[0, 1] - narrow[0, 0] < ci[0, 1] - ci[0, 0]
    # the hits' order within the data does not matter, only which document each belongs to
    order = rng.permutation(200)
    _, shuffled = document_intervals(hits[order], docs[order])
    assert np.abs(shuffled - ci).max() < 0.03
    top = np.array([[[5, 1]], [[2, 5]]])
    assert hits_at_ks(top, np.array([[5], [5]]), [1, 2]).tolist() == [[[True, True]], [[False, True]]]


# -------------------------------------------------------------------------------------- metrics
def test_precision_at_k_math():
    top = np.array([[[5, 1, 2], [7, 8, 9]], [[3, 5, 1], [1, 2, 3]]])  # [n=2, horizon=2, k=3]
    labels = np.array([[5, 9], [5, 4]])
    assert precision_at_k(top, labels, 1).tolist() == [0.5, 0.0]
    assert precision_at_k(top, labels, 2).tolist() == [1.0, 0.0]
    assert precision_at_k(top, labels, 3).tolist() == [1.0, 0.5]
    with pytest.raises(ValueError):
        precision_at_k(top, labels, 4)


def test_bigram_baseline_counts_and_fallback():
    train_current = np.array([1, 1, 1, 2])
    train_labels = np.array([[7], [7], [8], [9]])
    top = bigram_top_ids(train_current, train_labels, np.array([1, 2, 3]), k=2)
    assert top[0, 0].tolist() == [7, 8]
    assert top[1, 0].tolist() == [9, 7]  # seen once, then the most frequent label overall
    assert top[2, 0].tolist() == [7, 8]  # unseen token: overall frequency
    assert precision_at_k(top, np.array([[8], [9], [1]]), 1).tolist() == [1 / 3]


def test_bigram_counts_every_training_token_and_no_test_document(tiny_gemma, tiny_data):
    session, data = tiny_gemma, tiny_data
    current, following = bigram_training_pairs(session, data)
    docs = load_documents(data.settings.source)
    train_docs = sorted(set(data.doc_ids[~data.is_test].tolist()))
    texts = [session.tokenizer(docs[d], add_special_tokens=False)["input_ids"] for d in train_docs]
    # exactly the training documents' positions: no test document contributes a pair
    assert len(current) == sum(len(ids) - HORIZONS for ids in texts) > len(data.split(test=False))
    first = texts[0]
    assert current[:3].tolist() == first[:3]
    assert following[0].tolist() == first[1 : 1 + HORIZONS]  # t+1 .. t+4 in the document's text


# ----------------------------------------------------------------------------------------- data
def test_sources(tmp_path):
    assert len(load_documents("pydoc")) > 50
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert len(load_documents(str(text))) == 2  # paragraphs grouped into ~2000-character documents
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "one doc"}\n"second doc"\n\n', encoding="utf-8")
    assert load_documents(str(jsonl)) == ["one doc", "second doc"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="text"):
        load_documents(str(bad))
    with pytest.raises(FileNotFoundError):
        load_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="empty"):
        load_documents("  ")


def test_dataset_labels_split_and_cache(tiny_gemma, tiny_data, corpus):
    session, data = tiny_gemma, tiny_data
    assert data.labels.shape == (80, HORIZONS)
    assert data.resid.shape == (80, session.n_layers, session.d_model)
    assert data.is_test.sum() == 20
    # split by document: no document on both sides
    assert not set(data.doc_ids[data.is_test].tolist()) & set(data.doc_ids[~data.is_test].tolist())
    # labels are the greedy continuation; states match a plain forward over prefix + continuation
    i = 3
    sequence = torch.cat(
        [torch.as_tensor(data.prefix_ids[i : i + 1]), torch.as_tensor(data.labels[i : i + 1, :3])], 1
    )
    names = [session.resid_name(0), session.resid_name(session.n_layers - 1)]
    run = session.run(sequence, names)
    t = data.prefix_ids.shape[1] - 1
    assert run.logits[0, t:].argmax(-1).tolist() == data.labels[i].tolist()
    assert np.allclose(run.activations[names[0]][0, t].numpy(), data.resid[i, 0], atol=1e-4)
    assert np.allclose(run.activations[names[1]][0, t:].numpy(), data.final[i], atol=1e-4)
    # cached: same key → loaded from disk, identical
    again = build_dataset(session, data.settings)
    assert again.key == data.key and np.array_equal(again.resid, data.resid)
    assert (cache_dir(session.model_id) / "data" / data.key / "meta.json").is_file()
    other = DataSettings(source=str(corpus), n_examples=80, prefix_tokens=10, seed=1)
    assert other.key(session.model_id) != data.key
    with pytest.raises(ValueError, match="n_examples"):
        build_dataset(session, DataSettings(n_examples=2))


# ------------------------------------------------------------------------------------ artefacts
def test_linear_maps_round_trip_and_mismatch(tiny_gemma, tiny_data, lenslab_home):
    from lenslab.models.tiny import tiny_session

    session = tiny_gemma
    maps = fit_linear_maps(session, tiny_data, ridge=0.0)
    path = maps.save(linear_path(session.model_id))
    loaded = load_linear(session)
    assert loaded is not None and loaded.layers == maps.layers
    assert torch.equal(loaded.weight, maps.weight)
    states = torch.as_tensor(tiny_data.resid[:5, 1])
    assert torch.allclose(loaded.predict(states, 1), maps.predict(states, 1))
    other = tiny_session("llama")
    with pytest.raises(ValueError, match="trained on"):
        LinearMaps.load(path, other)
    wrong_width = LinearMaps(
        maps.layers,
        maps.horizons,
        maps.weight,
        maps.x_mean,
        maps.y_mean,
        {**maps.meta, "model_id": other.model_id, "d_model": 999},
    )
    with pytest.raises(ValueError, match="d_model"):
        LinearMaps.load(wrong_width.save(lenslab_home / "w.safetensors"), other)
    (lenslab_home / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="readable"):
        LinearMaps.load(lenslab_home / "junk.safetensors", session)
    with pytest.raises(FileNotFoundError):
        LinearMaps.load(lenslab_home / "none.safetensors", session)
    with pytest.raises(ValueError, match="no linear map for layer"):
        LinearMaps(maps.layers[:1], maps.horizons, maps.weight[:1], maps.x_mean[:1], maps.y_mean).predict(
            states, 1
        )


def test_linear_at_last_layer_is_exact_for_n0(tiny_gemma, tiny_data):
    """With n > d the least-squares map from the last layer to itself is the identity."""
    maps = fit_linear_maps(tiny_gemma, tiny_data, layers=[1], ridge=0.0)
    assert torch.allclose(maps.weight[0, 0], torch.eye(tiny_gemma.d_model), atol=1e-3)


def test_soft_prompt_training_lowers_kl_and_round_trips(tiny_gemma, tiny_data, lenslab_home):
    session = tiny_gemma
    before = [p.detach().clone() for _, p in session.named_weights()]
    settings = PromptTraining(epochs=6, lr=5e-2, batch_size=16)
    prompt = train_soft_prompt(session, tiny_data, 1, settings)
    losses = prompt.meta["losses"]
    assert len(losses) == 6 * 4
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert all(torch.equal(a, b) for a, (_, b) in zip(before, session.named_weights(), strict=True))
    assert all(p.grad is None for _, p in session.named_weights())
    assert prompt.vectors.shape == (10, session.d_model)
    assert prompt.meta["multiplier"] == pytest.approx(session.d_model**0.5, rel=1e-3)  # Gemma scales by √d
    path = prompt.save(lenslab_home / "p.safetensors")
    loaded = SoftPrompt.load(path, session)
    assert loaded.layer == 1 and torch.equal(loaded.vectors, prompt.vectors)
    from lenslab.models.tiny import tiny_session

    with pytest.raises(ValueError, match="trained on"):
        SoftPrompt.load(path, tiny_session("gpt2"))
    with pytest.raises(ValueError, match="not a soft-prompt"):
        SoftPrompt.load(
            fit_linear_maps(session, tiny_data, [1]).save(lenslab_home / "l.safetensors"), session
        )
    with pytest.raises(ValueError, match="horizons"):
        PromptTraining(horizons=(5,)).validate()


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(3, 4, 50)
    assert kl_original_intervened(logits, logits).abs() < 1e-6
    assert kl_original_intervened(logits, torch.randn(3, 4, 50)) > 0


def test_embedding_multiplier_per_family(tiny_any):
    value = embedding_multiplier(tiny_any)
    expected = tiny_any.d_model**0.5 if "gemma" in tiny_any.model_id else 1.0
    assert value == pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------------- grid probe
def test_grid_direct_matches_the_model_at_the_last_layer(tiny_gemma, lenslab_home):
    session = tiny_gemma
    config = FutureLensConfig(method="direct", horizon=2, k=3)
    result = FutureLens().run(session, "the quick brown", config)
    seq = len(result.tokens)
    assert result.top_ids.shape == (session.n_layers, seq, 3, 3)
    plain = session.run("the quick brown").logits[0].argmax(-1)
    assert result.actual_ids[:, 0].tolist() == plain.tolist()
    assert result.actual_ids[:-1, 1].tolist() == plain[1:].tolist()  # teacher-forced on the prompt
    assert (result.top_ids[-1, :, 0, 0] == result.actual_ids[:, 0]).all()  # last layer = the model
    assert (result.top_ids[:, :, 0] == result.top_ids[:, :, 1]).all()  # direct: same guess for every N
    assert np.all(np.diff(result.top_probs, axis=-1) <= 1e-7)
    figures = result.figures()
    assert set(figures) == {"grid", "agreement"}
    grid, cells = figures["grid"].data  # states with the actual continuation on top, clickable points
    assert list(grid.y) == [f"L{layer}" for layer in result.layers] + ["actual"]
    assert np.isnan(np.asarray(grid.z[-1], dtype=float)).all()  # the actual row carries no colour value
    assert len(cells.x) == (grid.z.shape[0] - 1) * grid.z.shape[1]  # only states are clickable
    last = {"x": cells.x[-1], "y": cells.y[-1]}  # a click reaches the app as the point's labels
    assert result.state_at("grid", last) == (int(result.layers[-1]), seq - 1)
    again = FutureLensResult.from_dict(result.to_dict())
    assert np.array_equal(again.top_ids, result.top_ids) and again.top_tokens == result.top_tokens
    assert session.active_hook_count() == 0


def test_grid_every_method_on_tiny(tiny_gemma, tiny_data, lenslab_home):
    session = tiny_gemma
    with pytest.raises(ValueError, match="no linear maps"):
        FutureLens().run(session, "abc", FutureLensConfig(method="linear"))
    info = prepare_default_artefacts(
        session, settings=DataSettings(source=tiny_data.settings.source, n_examples=80, prefix_tokens=10)
    )
    assert info["layers"] == [0, 1]
    with pytest.raises(ValueError, match="learned prompt for layer"):
        FutureLens().run(session, "abc", FutureLensConfig(method="learned", layers=(1,)))
    train_learned_prompt(
        session,
        1,
        PromptTraining(epochs=1, batch_size=32),
        DataSettings(source=tiny_data.settings.source, n_examples=80, prefix_tokens=10),
    )
    for method in ("linear", "fixed", "learned"):
        layers = (1,) if method == "learned" else None
        result = FutureLens().run(
            session, "the fox", FutureLensConfig(method=method, horizon=3, layers=layers)
        )
        assert result.top_ids.shape[2] == 4
        assert np.isfinite(result.top_probs).all()
        if method == "linear":
            assert "linear maps" in result.artefact
    assert session.active_hook_count() == 0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"method": "magic"}, "method"),
        ({"horizon": 4}, "horizon"),
        ({"layers": (5,)}, "out of range"),
        ({"k": 0}, "k"),
    ],
)
def test_grid_config_validation(tiny_gemma, changes, match):
    with pytest.raises(ValueError, match=match):
        FutureLens().run(tiny_gemma, "abc", FutureLensConfig(**changes))


def test_grid_protocols(tiny_gemma, lenslab_home):
    session = tiny_gemma
    free = FutureLens().run(session, "the fox jumps", FutureLensConfig(method="fixed", horizon=3))
    forced = FutureLens().run(
        session, "the fox jumps", FutureLensConfig(method="fixed", horizon=3, protocol="teacher-forced")
    )
    assert free.protocol == "free-running" and forced.protocol == "teacher-forced"
    np.testing.assert_array_equal(free.top_ids[:, :, 0], forced.top_ids[:, :, 0])  # N = 0: no continuation
    assert "free-running" in free.figures()["grid"].layout.title.text
    assert "teacher-forced" in forced.figures()["agreement"].layout.title.text
    assert free.summary()["protocol (N ≥ 1)"] == "free-running"
    # the first cell, re-run as an independent loop, gives the same tokens
    layer, position = int(free.layers[0]), 2
    tokens = session.tokenize("the fox jumps")
    state = session.run(tokens, [session.resid_name(layer)]).activations[session.resid_name(layer)][
        :, position
    ]
    _, chosen = _plain_free_run(session, state, layer, fixed_context_ids(session), 4)
    assert free.top_ids[0, position, :, 0].tolist() == chosen[0].tolist()
    direct = FutureLens().run(session, "the fox", FutureLensConfig(method="direct", horizon=2))
    assert "protocol (N ≥ 1)" not in direct.summary()
    assert "single state" in direct.figures()["grid"].layout.title.text
    back = FutureLensResult.from_dict(forced.to_dict())
    assert back.protocol == "teacher-forced" and back.config == forced.config


def test_grid_on_other_families(tiny_any):
    result = FutureLens().run(tiny_any, "abc de", FutureLensConfig(method="fixed", horizon=1))
    assert result.top_ids.shape[:3] == (tiny_any.n_layers, len(result.tokens), 2)
    assert tiny_any.active_hook_count() == 0


def test_a_causal_grid_is_handed_over_a_layer_at_a_time(tiny_gemma):
    """teacher-forced fixed runs layer by layer: the page shows the grid growing, the last one the
    final grid; free-running fixed hands it over once per chunk of layers (one chunk here)."""
    seen: list[float] = []
    early: list[tuple[float, object]] = []

    def progress(fraction: float, message: str = "") -> None:
        seen.append(fraction)

    progress.partial = lambda name, figure: early.append((max(seen, default=0.0), name, figure))
    config = FutureLensConfig(method="fixed", horizon=1, protocol="teacher-forced")
    result = FutureLens().run(tiny_gemma, "the fox", config, progress)
    assert [name for _, name, _ in early] == ["grid"] * tiny_gemma.n_layers
    rows = [list(figure.data[0].y) for _, _, figure in early]
    assert rows[0] == ["L0", "actual"] and rows[-1] == [f"L{i}" for i in range(tiny_gemma.n_layers)] + [
        "actual"
    ]
    assert early[0][0] < 1.0  # the first row was shown before the run had finished
    final = result.figures()["grid"].data[0]
    last = early[-1][2].data[0]
    np.testing.assert_array_equal(np.asarray(last.z, dtype=float), np.asarray(final.z, dtype=float))
    assert [list(r) for r in last.text] == [list(r) for r in final.text]
    direct: list[str] = []
    progress.partial = lambda name, figure: direct.append(name)
    FutureLens().run(tiny_gemma, "the fox", FutureLensConfig(method="direct", horizon=1), progress)
    assert direct == []  # one batched pass: the grid is whole when the run ends
    early.clear()
    progress.partial = lambda name, figure: early.append((max(seen, default=0.0), name, figure))
    free = FutureLens().run(tiny_gemma, "the fox", FutureLensConfig(method="fixed", horizon=1), progress)
    assert [name for _, name, _ in early] == ["grid"]  # every layer in one continuation
    np.testing.assert_array_equal(
        np.asarray(early[0][2].data[0].z, dtype=float),
        np.asarray(free.figures()["grid"].data[0].z, dtype=float),
    )


# ------------------------------------------------------------------------------------ evaluation
def test_evaluation_on_tiny(tiny_gemma, corpus, lenslab_home):
    from lenslab.analyses.report import Report

    session = tiny_gemma
    config = FutureLensEvalConfig(source=str(corpus), n_examples=80, prefix_tokens=10, ridge=0.0, k=5)
    result = run_evaluation(session, config)
    assert result.protocol == "free-running" == result.config.protocol
    assert result.methods == ["direct", "linear", "fixed", "learned"]
    assert result.precision.shape == (4, 2, HORIZONS, 2)  # ks = 1, 5
    assert result.precision_ci.shape == (4, 2, HORIZONS, 2, 2)
    assert result.ks.tolist() == [1, 5]
    last = result.layers.tolist().index(1)
    assert result.top1("direct")[last, 0] == 1.0  # the logit lens of the last layer is the model
    assert result.top1("linear")[last, 0] == pytest.approx(1.0)  # identity map fitted exactly
    assert np.isnan(result.top1("learned")).all() and any("learned" in n for n in result.notes)
    assert np.isnan(result.top1_ci("learned")).all()
    assert np.all(result.precision[:3, ..., 1] >= result.precision[:3, ..., 0])  # p@5 ≥ top-1
    ran = result.precision[:3]
    low, high = result.precision_ci[:3, ..., 0], result.precision_ci[:3, ..., 1]
    assert np.all((low <= ran + 1e-12) & (ran <= high + 1e-12))
    assert np.all((result.bigram_ci[..., 0] <= result.bigram) & (result.bigram <= result.bigram_ci[..., 1]))
    assert result.n_train + result.n_test == 80
    assert result.bigram_pairs > result.n_train  # every training token, not only the windows
    data = build_dataset(session, config.data_settings())
    test_docs = set(data.doc_ids[data.is_test].tolist())
    assert result.n_documents == len(test_docs) >= 2
    assert result.n_train_documents == len(set(data.doc_ids[~data.is_test].tolist()))
    rows = result.table_rows()
    assert len(rows) == 4 * 2 + 1
    assert "[" in rows[0]["N=1 top-1"] and rows[-1]["method"] == "bigram" and "[" in rows[-1]["N=0 top-1"]
    figures = result.figures()
    assert set(figures) == {"accuracy", "table"}
    assert "free-running" in figures["accuracy"].layout.title.text
    assert "free-running" in figures["table"].layout.title.text
    assert any(trace.error_y.visible for trace in figures["accuracy"].data)
    summary = result.summary()
    assert "bigram N=1 top-1" in summary and summary["protocol"] == "fixed/learned N ≥ 1 free-running"
    assert "[" in summary["direct best N=1 top-1"] and "documents" in summary["test split"]
    folder = Report([result]).save(lenslab_home / "r")
    loaded = Report.load(folder).results[0]
    assert isinstance(loaded, FutureLensEvalResult)
    np.testing.assert_array_equal(loaded.precision, result.precision)
    np.testing.assert_array_equal(loaded.precision_ci, result.precision_ci)
    assert loaded.protocol == "free-running" and loaded.config == result.config
    assert json.loads((folder / "report.json").read_text())["results"][0]["probe"] == "future_lens_eval"
    # teacher forcing: an explicit option, labelled; direct and linear identical, N = 0 unchanged
    forced = run_evaluation(session, config.replace(protocol="teacher-forced"))
    assert forced.protocol == "teacher-forced"
    assert "teacher-forced" in forced.figures()["accuracy"].layout.title.text
    np.testing.assert_array_equal(forced.precision[:2], result.precision[:2])
    np.testing.assert_array_equal(forced.precision_ci[:2], result.precision_ci[:2])
    np.testing.assert_array_equal(forced.precision[2, :, 0], result.precision[2, :, 0])
    np.testing.assert_array_equal(forced.bigram, result.bigram)


def _layer_one_evaluation(corpus, n_examples: int = 40) -> FutureLensEvalConfig:
    """A small evaluation of layer 1 by the direct and linear methods only."""
    return FutureLensEvalConfig(
        source=str(corpus),
        n_examples=n_examples,
        prefix_tokens=8,
        layers=(1,),
        fixed_prompt=False,
        learned_prompt=False,
    )


def test_evaluation_fits_only_the_evaluated_layers(tiny_gemma, corpus, lenslab_home):
    """Maps fitted for the evaluated layer alone equal that layer's maps from an all-layer fit."""
    config = _layer_one_evaluation(corpus)
    result = run_evaluation(tiny_gemma, config)
    saved = load_linear(tiny_gemma, evaluation_linear_path(tiny_gemma.model_id))
    assert saved is not None and saved.layers == [1]
    data = build_dataset(tiny_gemma, config.data_settings())
    every = fit_linear_maps(tiny_gemma, data, None, config.ridge, toward_identity=config.toward_identity)
    assert every.layers == [0, 1]
    torch.testing.assert_close(saved.weight[0], every.weight[1], rtol=0, atol=0)
    torch.testing.assert_close(saved.x_mean[0], every.x_mean[1], rtol=0, atol=0)
    torch.testing.assert_close(saved.y_mean, every.y_mean, rtol=0, atol=0)
    assert saved.meta["ridge_chosen"] == [every.meta["ridge_chosen"][1]]
    scores = evaluate(tiny_gemma, data, [1], ["direct", "linear"], Artefacts(linear=every), config.k)
    np.testing.assert_array_equal(result.precision, scores.precision)
    np.testing.assert_array_equal(result.precision_ci, scores.precision_ci)


def test_an_evaluation_never_replaces_the_pages_maps(tiny_gemma, corpus, lenslab_home):
    """The page's maps stay as they were after an evaluation on other data, and serve one on theirs."""

    page = _layer_one_evaluation(corpus)
    prepare_default_artefacts(tiny_gemma, settings=page.data_settings(), ridge=page.ridge)
    page_file = linear_path(tiny_gemma.model_id)
    before = page_file.read_bytes()
    run_evaluation(tiny_gemma, _layer_one_evaluation(corpus, 30))
    assert page_file.read_bytes() == before  # the page's linear method reads what it read before
    evaluation_file = evaluation_linear_path(tiny_gemma.model_id)
    own = load_linear(tiny_gemma, evaluation_file)
    assert own is not None and own.meta["data_key"] != load_linear(tiny_gemma).meta["data_key"]
    # on the page's own data the page's maps are reused: nothing is fitted or written
    evaluation_file.unlink()
    run_evaluation(tiny_gemma, page)
    assert not evaluation_file.exists() and page_file.read_bytes() == before


def test_old_evaluation_reports_still_load(tiny_gemma, corpus, lenslab_home):
    """A result saved before protocols and intervals existed: teacher-forced, no intervals."""
    config = _layer_one_evaluation(corpus)
    payload = run_evaluation(tiny_gemma, config).to_dict()
    for key in ("protocol", "precision_ci", "bigram_ci", "n_documents", "n_train_documents", "bigram_pairs"):
        payload["data"].pop(key)
        payload["arrays"].pop(f"r.{key}", None)
    payload["data"]["config"].pop("protocol")
    old = FutureLensEvalResult.from_dict(payload)
    assert old.protocol == "teacher-forced" == old.config.protocol
    assert old.precision_ci.shape == (*old.precision.shape, 2) and np.isnan(old.precision_ci).all()
    assert "[" not in old.table_rows()[0]["N=0 top-1"]
    assert old.summary() and set(old.figures()) == {"accuracy", "table"}
