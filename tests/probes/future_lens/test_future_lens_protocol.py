"""Future Lens protocol guards on tiny models: provenance refusal, ridge on validation, positions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenslab.probes.future_lens.artefacts import check_disjoint
from lenslab.probes.future_lens.data import HORIZONS, DataSettings, FutureLensData, build_dataset
from lenslab.probes.future_lens.evaluation import FutureLensEvalConfig, evaluate, run_evaluation
from lenslab.probes.future_lens.linear import (
    RIDGE_GRID,
    choose_ridge,
    fit_linear_map,
    fit_linear_maps,
    linear_path,
    ridge_path_predictions,
    validation_split,
)
from lenslab.probes.future_lens.methods import Artefacts
from lenslab.probes.future_lens.probe import NO_MAP, FutureLens, FutureLensConfig
from lenslab.probes.future_lens.prompts import (
    PromptTraining,
    SoftPrompt,
    evaluation_prompt_path,
    soft_prompt_path,
    train_soft_prompt,
)


def _write(path, texts):
    path.write_text("\n".join(json.dumps(t) for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    """40 short documents: seeds 0 and 1 split them differently, so their splits overlap."""
    return _write(
        tmp_path / "corpus.jsonl",
        [
            f"Story {i}: a small grey cat number {i} walks along the old stone wall at night."
            for i in range(40)
        ],
    )


@pytest.fixture
def other_corpus(tmp_path):
    """Documents that share no text with ``corpus``."""
    return _write(
        tmp_path / "other.jsonl",
        [
            f"Record {i} of the ledger: the harbour master counted {i} boats before the storm came."
            for i in range(30)
        ],
    )


def _data(session, source, seed=0, prefix_tokens=10):
    settings = DataSettings(source=str(source), n_examples=80, prefix_tokens=prefix_tokens, seed=seed)
    return build_dataset(session, settings)


def _test_docs(data):
    return set(data.doc_ids[data.split(test=True)].tolist())


def _train_docs(data):
    return set(data.doc_ids[data.split(test=False)].tolist())


# ------------------------------------------------------------------------------------ provenance
def test_artefacts_fitted_on_a_test_document_are_refused(tiny_gemma, corpus, other_corpus, lenslab_home):
    """Maps and prompts fitted on seed 0 refuse an evaluation whose test documents they saw."""
    session = tiny_gemma
    fitted_on = _data(session, corpus, seed=0)
    reshuffled = _data(session, corpus, seed=1)
    assert _train_docs(fitted_on) & _test_docs(reshuffled)  # the premise: the two splits overlap
    maps = fit_linear_maps(session, fitted_on, ridge=0.0)
    assert set(maps.meta["provenance"]["documents"]) and maps.meta["provenance"]["seed"] == 0
    prompt = train_soft_prompt(
        session, fitted_on, 1, PromptTraining(epochs=1, batch_size=32, max_examples=32)
    )
    for artefacts, methods, what in [
        (Artefacts(linear=maps), ["linear"], "linear maps"),
        (Artefacts(prompts={1: prompt}), ["learned"], "learned prompt of layer 1"),
    ]:
        with pytest.raises(ValueError, match=rf"{what} was fitted on \d+ of the \d+ test documents") as error:
            evaluate(session, reshuffled, [1], methods, artefacts, k=5)
        assert "refit=true" in str(error.value)
        # the data they were fitted on, and a corpus they never saw, evaluate
        assert evaluate(session, fitted_on, [1], methods, artefacts, k=5).notes == []
        disjoint = _data(session, other_corpus)
        if "linear" in methods:
            assert evaluate(session, disjoint, [1], methods, artefacts, k=5).notes == []
        else:
            check_disjoint(prompt.meta, disjoint, "the prompt")
    # an artefact that records no training documents is refused too
    bare = {k: v for k, v in maps.meta.items() if k != "provenance"}
    with pytest.raises(ValueError, match="records no training documents"):
        check_disjoint(bare, fitted_on, "old maps")


def test_evaluation_refuses_a_saved_prompt_until_refit(tiny_gemma, corpus, lenslab_home):
    """The probe: a saved prompt from another split is refused; ``refit=True`` retrains and saves it."""
    session = tiny_gemma
    first = _data(session, corpus, seed=0)
    prompt = train_soft_prompt(session, first, 1, PromptTraining(epochs=1, batch_size=32, max_examples=32))
    prompt.save(soft_prompt_path(session.model_id, 1))
    config = FutureLensEvalConfig(
        source=str(corpus), n_examples=80, prefix_tokens=10, seed=1, layers=(1,), fixed_prompt=False, k=5
    )
    with pytest.raises(ValueError, match="learned prompt of layer 1 was fitted on"):
        run_evaluation(session, config)
    result = run_evaluation(session, config.replace(refit=True))
    assert np.isfinite(result.top1("learned")).all()
    retrained = SoftPrompt.load(evaluation_prompt_path(session.model_id, 1), session)
    second = build_dataset(session, config.data_settings())
    assert retrained.meta["provenance"]["data_key"] == second.key
    assert retrained.meta["training"]["max_examples"] == 32  # the old settings are kept
    check_disjoint(retrained.meta, second, "the retrained prompt")
    # the linear maps of the evaluation were fitted on its own training documents
    saved = json.loads(json.dumps(result.to_dict()["data"]["ridge_grid"]))
    assert saved == list(RIDGE_GRID)


def test_an_evaluation_never_replaces_the_pages_prompt(tiny_gemma, corpus, lenslab_home):
    """A refit on other data keeps the page's prompt file byte for byte and writes the evaluation's;
    a later evaluation on that data reuses the evaluation's prompt, one on the page's data the page's."""
    session = tiny_gemma
    page_data = _data(session, corpus, seed=0)
    prompt = train_soft_prompt(
        session, page_data, 1, PromptTraining(epochs=1, batch_size=32, max_examples=32)
    )
    page_file = soft_prompt_path(session.model_id, 1)
    prompt.save(page_file)
    before = page_file.read_bytes()
    config = FutureLensEvalConfig(
        source=str(corpus),
        n_examples=80,
        prefix_tokens=10,
        seed=1,
        layers=(1,),
        fixed_prompt=False,
        k=5,
        min_prefix_tokens=None,
    )
    first = run_evaluation(session, config.replace(refit=True))
    assert page_file.read_bytes() == before  # the page's learned method reads what it read before
    own_file = evaluation_prompt_path(session.model_id, 1)
    own = own_file.read_bytes()
    other = build_dataset(session, config.data_settings())
    assert SoftPrompt.load(own_file, session).meta["data_key"] == other.key != page_data.key
    # the same evaluation again: the evaluation's prompt fits its data, nothing is retrained
    again = run_evaluation(session, config)
    np.testing.assert_array_equal(again.top1("learned"), first.top1("learned"))
    assert own_file.read_bytes() == own and page_file.read_bytes() == before
    # on the page's own data the page's prompt is used, and no evaluation prompt is written
    own_file.unlink()
    page_config = config.replace(seed=0, refit=True)
    assert build_dataset(session, page_config.data_settings()).key == page_data.key
    run_evaluation(session, page_config)
    assert not own_file.exists() and page_file.read_bytes() == before


# ------------------------------------------------------------------------------- ridge selection
def _synthetic(d: int, seed: int = 0) -> tuple[FutureLensData, np.ndarray, np.ndarray]:
    """Training documents where a general map A holds; held-out (validation) documents where the
    identity holds; test documents where A holds exactly. So validation favours the largest ridge
    (shrinkage toward I) and the test split the smallest."""
    rng = np.random.default_rng(seed)
    n_docs, per_doc = 30, 12
    doc_ids = np.repeat(np.arange(n_docs), per_doc)
    is_test = doc_ids >= 24  # documents 24..29 are the test split
    n = len(doc_ids)
    settings = DataSettings(source="pydoc", n_examples=n, prefix_tokens=8, seed=seed)
    data = FutureLensData(
        model_id="synthetic",
        key="synthetic",
        settings=settings,
        prefix_ids=np.zeros((n, 8), dtype=np.int64),
        doc_ids=doc_ids,
        is_test=is_test,
        labels=np.zeros((n, HORIZONS), dtype=np.int64),
        resid=np.zeros((n, 2, d), dtype=np.float32),
        final=np.zeros((n, HORIZONS, d), dtype=np.float32),
        fingerprints={i: f"doc{i}" for i in range(n_docs)},
    )
    fit_rows, val_rows = validation_split(data)
    a = np.eye(d) + rng.normal(0, 0.6, (d, d))
    x = rng.normal(0, 1, (n, d))
    y = x @ a + rng.normal(0, 0.05, (n, d))
    y[val_rows] = x[val_rows]  # validation documents: the identity
    data.resid[:] = x[:, None].astype(np.float32)
    data.final[:] = y[:, None].astype(np.float32)
    return data, fit_rows, val_rows


def test_ridge_is_chosen_on_validation_documents_not_on_the_test_split(tiny_gemma):
    session = tiny_gemma
    data, fit_rows, val_rows = _synthetic(session.d_model)
    train, test = data.split(test=False), data.split(test=True)
    docs = lambda rows: set(data.doc_ids[rows].tolist())  # noqa: E731
    assert docs(val_rows) and not docs(val_rows) & docs(fit_rows)  # validation = whole training documents
    assert set(fit_rows) | set(val_rows) == set(train) and not docs(val_rows) & docs(test)
    maps = fit_linear_maps(session, data, layers=[0])
    chosen = maps.meta["ridge_chosen"][0]
    scores = np.asarray(maps.meta["validation"]["scores"][0])  # [N, grid]
    assert maps.meta["ridge_grid"] == list(RIDGE_GRID)
    assert maps.meta["validation"]["n_examples"] == len(val_rows)
    for n in range(HORIZONS):
        assert (
            chosen[n] == RIDGE_GRID[int(np.argmin(scores[n]))]
        )  # the recorded choice is the validation optimum
    # what the test split would have chosen: fitted on all training rows, scored on the test rows
    x, y = torch.as_tensor(data.resid[:, 0]), torch.as_tensor(data.final[:, 0])
    test_mse = []
    for ridge in RIDGE_GRID:  # (final_norm is a module call: no autograd graph wanted)
        weight, x_mean, y_mean = fit_linear_map(x[train], y[train], ridge, toward_identity=True)
        pred = (x[test] - x_mean) @ weight + y_mean
        with torch.no_grad():
            test_mse.append(float((session.final_norm(pred) - session.final_norm(y[test])).pow(2).mean()))
    test_best = RIDGE_GRID[int(np.argmin(test_mse))]
    assert chosen[0] == max(RIDGE_GRID) and test_best == min(RIDGE_GRID) != chosen[0]
    # and the maps are the refit on every training row with the chosen ridge
    weight, _, _ = fit_linear_map(x[train], y[train], chosen[0], toward_identity=True)
    assert torch.allclose(maps.weight[0, 0], weight, atol=1e-5)
    # a fixed ridge skips the selection
    fixed = fit_linear_maps(session, data, layers=[0], ridge=0.3)
    assert fixed.meta["ridge_chosen"] == [[0.3] * HORIZONS] and fixed.meta["ridge_grid"] == []


@pytest.mark.parametrize("n_rows", [30, 90])  # fewer rows than inputs (kernel form) and more
@pytest.mark.parametrize("toward_identity", [True, False])
def test_path_predictions_equal_the_formed_maps(n_rows, toward_identity):
    """Validation predictions made without forming the maps equal those of every formed map."""
    gen = torch.Generator().manual_seed(2)
    x = 40 * torch.randn(n_rows, 48, generator=gen) + 5  # residual-like scale and offset
    ys = [
        x @ torch.randn(48, 48, generator=gen) / 7 + torch.randn(n_rows, 48, generator=gen) for _ in range(2)
    ]
    x_new = 40 * torch.randn(11, 48, generator=gen) + 5
    ridges = (0.01, 0.3, 3.0)
    made = ridge_path_predictions(x, ys, ridges, x_new, toward_identity=toward_identity)
    for y, per_ridge in zip(ys, made, strict=True):
        for ridge, predicted in zip(ridges, per_ridge, strict=True):
            weight, x_mean, y_mean = fit_linear_map(x, y, ridge, toward_identity=toward_identity)
            expected = (x_new - x_mean) @ weight + y_mean
            assert predicted.dtype == torch.float32 and predicted.shape == expected.shape
            assert torch.allclose(predicted, expected, rtol=1e-4, atol=1e-3 * float(expected.abs().mean()))
    with pytest.raises(ValueError, match="finite number > 0"):
        ridge_path_predictions(x, ys, (0.0,), x_new, toward_identity=toward_identity)


def test_choose_ridge_and_path_match_the_single_fit():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 8, generator=gen)
    y = x @ torch.randn(8, 8, generator=gen) + 0.1 * torch.randn(60, 8, generator=gen)
    best, scores = choose_ridge((x[:40], y[:40]), (x[40:], y[40:]), (0.01, 1.0, 100.0), toward_identity=False)
    assert best == 0 and scores[0] < scores[1] < scores[2]  # clean linear data: the least shrinkage
    weight, _, _ = fit_linear_map(x[:40], y[:40], 1.0)
    pred = (x[40:] - x[:40].mean(0)) @ weight + y[:40].mean(0)
    assert scores[1] == pytest.approx(float((pred - y[40:]).pow(2).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="validation split is empty"):
        choose_ridge((x, y), (x[:0], y[:0]))


# ------------------------------------------------------------------------------------- positions
def test_linear_maps_apply_only_at_fitted_positions(tiny_gemma, corpus, lenslab_home):
    session = tiny_gemma
    data = _data(session, corpus, prefix_tokens=10)
    maps = fit_linear_maps(session, data, ridge=0.0)
    assert maps.positions == (9, 9) and maps.fitted_at(9) and not maps.fitted_at(8)
    maps.save(linear_path(session.model_id))
    prompt = "a small grey cat walks"  # longer than 10 tokens with the character tokenizer
    result = FutureLens().run(session, prompt, FutureLensConfig(method="linear", horizon=1))
    assert result.fitted_positions == (9, 9)
    assert result.applied.tolist() == [p == 9 for p in range(len(result.tokens))]
    grid = result.figures()["grid"]
    assert list(grid.data[0].y)[-1] == "actual"  # the model's own continuation, shown everywhere
    text = grid.data[0].text[:-1]  # the layer rows
    assert all(cell == NO_MAP for row in text for p, cell in enumerate(row) if p != 9)  # labelled, not blank
    assert all(cell and cell != NO_MAP for row in text for p, cell in enumerate(row) if p == 9)
    assert not result.matches[:, result.applied == 0].any()
    assert "positions 9–9" in result.summary()["linear maps fitted at"]
    # the evaluation refuses maps fitted at other positions than its examples'
    shorter = _data(session, corpus, prefix_tokens=8)
    with pytest.raises(ValueError, match=r"fitted at positions \(9, 9\)"):
        evaluate(session, shorter, [1], ["linear"], Artefacts(linear=maps), k=5)
    # the inspector reads the linear maps where they were fitted, the fixed prompt elsewhere
    from lenslab.probes.future_lens.probe import _future_view
    from lenslab.probes.inspector import StateRef

    fitted = _future_view(session, StateRef(prompt=prompt, layer=1, position=9), lambda *a: None)
    elsewhere = _future_view(session, StateRef(prompt=prompt, layer=1, position=3), lambda *a: None)
    assert fitted.method == "linear" and elsewhere.method == "fixed"


def test_prefixes_of_several_lengths_fit_maps_across_positions(tiny_gemma, corpus, lenslab_home):
    """Variable-length prefixes: each example equals a plain forward of its own prefix, and the
    maps record (and the grid uses) the whole position range."""
    session = tiny_gemma
    settings = DataSettings(source=str(corpus), n_examples=80, prefix_tokens=10, min_prefix_tokens=4)
    data = build_dataset(session, settings)
    positions = data.positions
    assert positions.min() >= 3 and positions.max() <= 9 and len(set(positions.tolist())) >= 4
    assert settings.key(session.model_id) != DataSettings(
        source=str(corpus), n_examples=80, prefix_tokens=10
    ).key(session.model_id)
    names = [session.resid_name(0), session.resid_name(session.n_layers - 1)]
    for i in (int(np.argmin(positions)), int(np.argmax(positions))):
        t = int(positions[i])
        prefix = data.prefix_ids[i, : t + 1]
        assert (prefix >= 0).all() and (data.prefix_ids[i, t + 1 :] == -1).all()
        assert data.current_ids[i] == prefix[-1]
        sequence = torch.as_tensor(np.concatenate([prefix, data.labels[i, :3]])[None])
        run = session.run(sequence, names)
        assert run.logits[0, t:].argmax(-1).tolist() == data.labels[i].tolist()
        assert np.allclose(run.activations[names[0]][0, t].numpy(), data.resid[i, 0], atol=1e-4)
        assert np.allclose(run.activations[names[1]][0, t:].numpy(), data.final[i], atol=1e-4)
    maps = fit_linear_maps(session, data, ridge=0.0)
    assert maps.positions == (3, 9)
    maps.save(linear_path(session.model_id))
    result = FutureLens().run(session, "a small grey cat walks", FutureLensConfig(method="linear", horizon=1))
    assert result.applied.tolist() == [3 <= p <= 9 for p in range(len(result.tokens))]
    with pytest.raises(ValueError, match="min_prefix_tokens"):
        DataSettings(prefix_tokens=8, min_prefix_tokens=9).validate()


def test_teacher_forced_numbers_are_labelled_everywhere(tiny_gemma, corpus, lenslab_home):
    """Table rows, legend, hover, titles, summary, grid and inspector line name the protocol."""
    from lenslab.probes.future_lens.probe import _future_describe
    from lenslab.probes.inspector import StateRef

    session = tiny_gemma
    config = FutureLensEvalConfig(
        source=str(corpus),
        n_examples=40,
        prefix_tokens=8,
        layers=(1,),
        learned_prompt=False,
        protocol="teacher-forced",
        ridge=0.0,
    )
    result = run_evaluation(session, config)
    rows = {row["method"] for row in result.table_rows()}
    assert rows == {"direct", "linear", "fixed (teacher-forced N ≥ 1)", "bigram"}
    figures = result.figures()
    names = {trace.name for trace in figures["accuracy"].data}
    assert "fixed (teacher-forced N ≥ 1)" in names and "direct" in names
    assert all(
        "teacher-forced" in t.hovertemplate
        for t in figures["accuracy"].data
        if (t.name or "").startswith("fixed")
    )
    assert "teacher-forced" in figures["table"].layout.title.text
    assert "teacher-forced" in result.summary()["protocol"]
    grid = FutureLens().run(
        session, "a grey cat", FutureLensConfig(method="fixed", protocol="teacher-forced")
    )
    assert "teacher-forced" in grid.figures()["grid"].layout.title.text
    assert grid.summary()["protocol (N ≥ 1)"] == "teacher-forced"
    line = _future_describe(grid, StateRef(prompt="a grey cat", layer=0, position=2))[0]
    assert "teacher-forced N ≥ 1" in line


@pytest.mark.parametrize("toward_identity", [True, False])
def test_ridge_paths_with_fewer_examples_than_inputs_equal_the_direct_solve(toward_identity):
    """n < d takes the kernel (dual) form: each map must equal the primal ridge solve in float64."""
    from lenslab.probes.future_lens.linear import ridge_paths

    gen = torch.Generator().manual_seed(2)
    x = 30 * torch.randn(12, 40, generator=gen, dtype=torch.float64)  # a residual stream's scale
    ys = [x @ torch.randn(40, 40, generator=gen, dtype=torch.float64) for _ in range(2)]
    ridges = (0.01, 1.0, 3.0)
    paths = ridge_paths(x, ys, ridges, toward_identity=toward_identity)
    xc = x - x.mean(0)
    gram = xc.T @ xc
    eye = torch.eye(40, dtype=torch.float64)
    for y, path in zip(ys, paths, strict=True):
        for ridge, (weight, x_mean, y_mean) in zip(ridges, path, strict=True):
            lam = ridge * torch.trace(gram) / 40
            rhs = xc.T @ (y - y.mean(0)) + (lam * eye if toward_identity else 0)
            expected = torch.linalg.solve(gram + lam * eye, rhs)
            torch.testing.assert_close(weight.double(), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x_mean, x.mean(0).float())
            torch.testing.assert_close(y_mean, y.mean(0).float())
