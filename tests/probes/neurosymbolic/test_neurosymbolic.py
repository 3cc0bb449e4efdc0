"""Unit tests of the neurosymbolic probe on tiny random models: tasks, ridge, collection, merge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lenslab.analyses.report import Report
from lenslab.probes import get_probe, registered_probes
from lenslab.probes.neurosymbolic import fit, readout
from lenslab.probes.neurosymbolic.artefact import Artefact, TrainConfig, artefact_folder
from lenslab.probes.neurosymbolic.fit import (
    Merge,
    collect,
    merge_hook,
    ridge_fit,
    ridge_path,
    ridge_predictions,
)
from lenslab.probes.neurosymbolic.probe import (
    NeurosymbolicConfig,
    NeurosymbolicProbe,
    NeurosymbolicResult,
    load_artefact,
    prepare_default_artefacts,
)
from lenslab.probes.neurosymbolic.readout import answer_tokens
from lenslab.probes.neurosymbolic.tasks import (
    ALL_OPERATIONS,
    Problem,
    generate_tasks,
    n_digits_for,
    parse_problem,
    solve,
)

SMALL = TrainConfig(
    bound=20,
    n_train_per_operation=6,
    n_test_per_operation=2,
    n_calibration_per_operation=2,
    vsa_dim=256,
    shots=1,
)


# ------------------------------------------------------------------------------------------ tasks
def test_solve_matches_python_for_every_operation():
    cases = {
        "add": 55,
        "sub": 41,
        "mul": 336,
        "div": 6,
        "mod": 6,
        "gcd": 1,
        "lcm": 336,
        "and": 0,
        "or": 55,
        "xor": 55,
    }
    for op, expected in cases.items():
        assert solve(op, 48, 7) == expected, op
    assert solve("gcd", 48, 18) == math.gcd(48, 18) == 6
    assert solve("lcm", 4, 6) == 12
    with pytest.raises(ValueError, match="by zero"):
        solve("div", 3, 0)
    with pytest.raises(ValueError, match="negative"):
        solve("sub", 3, 7)


def test_tasks_split_by_operand_pair_and_have_exact_answers():
    tasks = generate_tasks(ALL_OPERATIONS, 30, 12, 4, shots=2, seed=3)
    assert len(tasks.train) == 12 * len(ALL_OPERATIONS) and len(tasks.test) == 4 * len(ALL_OPERATIONS)
    train_pairs = {frozenset((p.first, p.second)) for p in tasks.train}
    test_pairs = {frozenset((p.first, p.second)) for p in tasks.test}
    assert not train_pairs & test_pairs
    for problem, prompt in zip(tasks.test, tasks.test_prompts, strict=True):
        assert prompt.endswith(problem.line(with_answer=False))
        assert prompt.count("\n") == 2  # two solved shots
        shot_lines = prompt.splitlines()[:2]
        for line in shot_lines:  # shots are solved correctly and never use a test pair
            left, answer = line.split(" = ")
            a, symbol, b = left.split(" ")
            shot = parse_problem(f"{a} {symbol} {b}")
            assert shot.answer == int(answer)
            assert frozenset((shot.first, shot.second)) not in test_pairs
        assert max(problem.first, problem.second) < 30
    again = generate_tasks(ALL_OPERATIONS, 30, 12, 4, shots=2, seed=3)
    assert again.test_prompts == tasks.test_prompts


def test_calibration_split_is_disjoint_from_train_test_and_shots():
    tasks = generate_tasks(ALL_OPERATIONS, 30, 12, 4, shots=2, seed=3, n_calibration_per_operation=5)
    assert len(tasks.calibration) == len(tasks.calibration_prompts) == 5 * len(ALL_OPERATIONS)
    pairs = {
        name: {frozenset((p.first, p.second)) for p in getattr(tasks, name)}
        for name in ("train", "test", "calibration")
    }
    assert not pairs["calibration"] & pairs["train"] and not pairs["calibration"] & pairs["test"]
    assert not pairs["train"] & pairs["test"]
    for prompt in tasks.calibration_prompts + tasks.test_prompts:
        for line in prompt.splitlines()[:-1]:  # the shots
            a, symbol, b = line.split(" = ")[0].split(" ")
            shot = parse_problem(f"{a} {symbol} {b}")
            assert frozenset((shot.first, shot.second)) not in pairs["calibration"] | pairs["test"]


def test_parse_problem_reads_typed_forms():
    assert parse_problem("What is 48 * 7?") == Problem(48, "mul", 7)
    assert parse_problem("gcd(48, 18)") == Problem(48, "gcd", 18)
    assert parse_problem("13 XOR 7") == Problem(13, "xor", 7)
    assert parse_problem("96 // 7 = ?") == Problem(96, "div", 7)
    assert parse_problem("what's 17 mod 5") == Problem(17, "mod", 5)
    with pytest.raises(ValueError, match="could not read"):
        parse_problem("hello there")
    with pytest.raises(ValueError, match="by zero"):
        parse_problem("5 / 0")


def test_codebook_width_covers_the_largest_answer():
    assert n_digits_for(("add",), 100) == 3
    assert n_digits_for(ALL_OPERATIONS, 100) == 4  # 99 * 99 = 9801
    assert n_digits_for(("xor",), 100) == 3  # 127


# ------------------------------------------------------------------------------------------ ridge
def test_ridge_recovers_a_planted_linear_map():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=generator) * 50 + 3
    weight = torch.randn(20, 7, generator=generator)
    bias = torch.randn(7, generator=generator)
    y = x @ weight + bias + 0.01 * torch.randn(500, 7, generator=generator)
    fitted = ridge_fit(x, y, alpha=1e-8)
    assert torch.allclose(fitted.weight, weight, atol=1e-3)
    new = torch.randn(10, 20, generator=generator)
    assert torch.allclose(fitted(new), new @ weight + bias, atol=0.05)
    # a large penalty shrinks the map towards the mean prediction
    strong = ridge_path(x, y, [1e-8, 1e3])
    assert strong[1].weight.norm() < 0.05 * strong[0].weight.norm()
    with pytest.raises(ValueError, match="rows"):
        ridge_fit(x, y[:10])


@pytest.mark.parametrize("n", [12, 80], ids=["fewer-samples-than-features", "more"])
def test_ridge_predictions_equal_the_fitted_maps_applied(n):
    """The weight-free validation predictions are the path's maps applied to the new rows."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 30, generator=generator) * 40 + 5
    y = x @ torch.randn(30, 9, generator=generator) + torch.randn(n, 9, generator=generator)
    new = torch.randn(6, 30, generator=generator) * 40
    alphas = [1e-4, 1e-2, 1.0]
    for fitted, predicted in zip(ridge_path(x, y, alphas), ridge_predictions(x, y, alphas, new), strict=True):
        assert torch.allclose(predicted, fitted(new), rtol=1e-4, atol=1e-3 * float(fitted(new).abs().max()))
    with pytest.raises(ValueError, match="rows"):
        ridge_predictions(x, y[:3], alphas, new)


# ------------------------------------------------------------------------------------- collection
def test_batched_collection_equals_single_runs(tiny_gemma):
    prompts = ["1 + 2 = 3\n4 + 5 = ", "12 * 3 = ", "7 gcd 21 = 7\n9 gcd 3 = "]
    sequences = [tiny_gemma.tokenize(p)[0].tolist() for p in prompts]
    positions = [[len(s) - 1, 0] for s in sequences]
    targets = [[5, 6] for _ in sequences]
    got = collect(tiny_gemma, sequences, positions, [0, 1], targets=targets, batch_size=2)
    for i, prompt in enumerate(prompts):
        run = tiny_gemma.run(prompt, [tiny_gemma.resid_name(0), tiny_gemma.resid_name(1)])
        for layer in (0, 1):
            expected = run.activations[tiny_gemma.resid_name(layer)][0, positions[i]]
            assert torch.allclose(got.states[layer][i], expected, atol=1e-5)
        log_probs = run.logits[0, positions[i]].log_softmax(-1)
        assert torch.allclose(got.target_logprob[i], log_probs[:, 5:7].diagonal(), atol=1e-4)
        assert torch.equal(got.argmax[i], run.logits[0, positions[i]].argmax(-1))
    assert tiny_gemma.active_hook_count() == 0


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "prefix-cached"])
def test_answer_decoding_split_across_sequences_matches_single_runs(tiny_gemma, monkeypatch, prefixed):
    """Answer logits are decoded in one product per batch, in chunks that cut across sequences:
    each sequence still gets exactly its own positions' log-probabilities and argmax."""
    monkeypatch.setattr(fit, "_DECODE_ROWS", 3)  # 3 sequences x 2-3 positions: chunks straddle rows
    prompts = ["1 + 2 = 3\n4 + 5 = 9\n", "1 + 2 = 3\n12 * 3 = 36\n", "1 + 2 = 3\n7 gcd 21 = 7\n"]
    sequences = [tiny_gemma.tokenize(p)[0].tolist() for p in prompts]
    prefix = len(tiny_gemma.tokenize("1 + 2 = 3\n")[0])
    positions = [[len(s) - 1, prefix + 1, prefix][: 2 + (i > 0)] for i, s in enumerate(sequences)]
    targets = [[7 + i, 3, 11][: len(p)] for i, p in enumerate(positions)]
    got = collect(
        tiny_gemma,
        sequences,
        positions,
        [0],
        targets=targets,
        batch_size=3,
        prefix_lengths=[prefix] * 3 if prefixed else None,
    )
    for i, prompt in enumerate(prompts):
        logits = tiny_gemma.run(prompt).logits[0, positions[i]]
        expected = logits.log_softmax(-1).gather(-1, torch.as_tensor(targets[i])[:, None])[:, 0]
        assert torch.allclose(got.target_logprob[i], expected, atol=1e-4)
        assert torch.equal(got.argmax[i], logits.argmax(-1))


def test_merge_changes_exactly_the_chosen_positions_and_is_removed(tiny_gemma):
    session = tiny_gemma
    sequence = session.tokenize("12 + 30 = 42\n")[0].tolist()
    positions = list(range(len(sequence)))
    vector = torch.full((2, session.d_model), 3.0)
    merge = Merge(layer=0, weight=0.5, vectors=[vector], starts=[4])
    clean = collect(session, [sequence], [positions], [0, 1])
    merged = collect(session, [sequence], [positions], [0, 1], merge=merge)
    changed = (merged.states[0][0] - clean.states[0][0]).abs().amax(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [4, 5]
    expected = 0.5 * clean.states[0][0][4:6] + 0.5 * vector
    assert torch.allclose(merged.states[0][0][4:6], expected, atol=1e-5)
    # the next layer: positions before the merge are untouched (causal), merged ones change
    later = (merged.states[1][0] - clean.states[1][0]).abs().amax(-1) > 1e-6
    assert not later[:4].any() and later[4:6].all()
    assert session.active_hook_count() == 0


def test_prefix_cached_collection_equals_full_runs(tiny_any):
    """Shared prefixes run once from the KV cache: states, logits and merges as without the cache."""
    session = tiny_any
    shots = ["1 + 2 = 3\n", "40 + 5 = 45\n"]  # two prefixes of different lengths
    queries = ["4 + 5 = 9\n", "12 + 30 = 42\n", "7 + 1 = 8\n"]
    sequences, prefixes = [], []
    for shot in shots:
        head = session.tokenize(shot)[0].tolist()
        for query in queries:
            full = session.tokenize(shot + query)[0].tolist()
            assert full[: len(head)] == head  # the character tokenizer splits at the newline
            sequences.append(full)
            prefixes.append(len(head))
    positions = [list(range(p, len(s))) for p, s in zip(prefixes, sequences, strict=True)]
    targets = [[3] * len(p) for p in positions]
    vectors = [torch.full((2, session.d_model), float(i + 1)) for i in range(len(sequences))]
    vectors[1] = torch.zeros(0, session.d_model)  # one sequence without intervention
    merge = Merge(layer=0, weight=0.5, vectors=vectors, starts=[p + 2 for p in prefixes])
    kwargs = dict(targets=targets, merge=merge, batch_size=2)
    plain = collect(session, sequences, positions, [0, 1], **kwargs)
    cached = collect(session, sequences, positions, [0, 1], prefix_lengths=prefixes, **kwargs)
    unmerged = collect(session, sequences, positions, [0, 1], targets=targets, batch_size=2)
    for i in range(len(sequences)):
        for layer in (0, 1):
            assert torch.allclose(cached.states[layer][i], plain.states[layer][i], atol=1e-4, rtol=1e-4)
        assert torch.allclose(cached.target_logprob[i], plain.target_logprob[i], atol=1e-4)
        assert torch.equal(cached.argmax[i], plain.argmax[i])
        # the merge acted in the cached run where it should (else the comparison proves little)
        moved = (cached.states[1][i] - unmerged.states[1][i]).abs().amax(-1) > 1e-3
        assert moved.any() == (i != 1) and not moved[:2].any()
    with pytest.raises(ValueError, match="at or after its prefix"):
        collect(session, sequences, [[0]] * len(sequences), [0], prefix_lengths=prefixes)
    assert session.active_hook_count() == 0


def test_merge_hook_is_removed_after_an_exception(tiny_gemma):
    mask = torch.ones(1, 32, dtype=torch.bool)
    hook = merge_hook(mask, torch.zeros(1, 32, tiny_gemma.d_model), 0.5)

    def boom(resid, *, hook=None):
        raise RuntimeError("boom")

    hooks = [(tiny_gemma.resid_name(0), hook), (tiny_gemma.resid_name(1), boom)]
    with pytest.raises(RuntimeError, match="boom"), tiny_gemma.hooks(hooks) as model:
        model(tiny_gemma.tokenize("1 + 1 = "))
    assert tiny_gemma.active_hook_count() == 0


def test_answer_tokens_are_one_per_digit(tiny_gemma):
    ids = answer_tokens(tiny_gemma, 336)
    assert tiny_gemma.decode_each(ids) == ["3", "3", "6", "\n"]


# ------------------------------------------------------------------------------ fit, save, probe
@pytest.fixture(scope="module")
def fitted(tiny_gemma, tmp_path_factory):
    """Fit once per module into an isolated LENSLAB_HOME."""
    home = tmp_path_factory.mktemp("ns_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LENSLAB_HOME", str(home))
        yield prepare_default_artefacts(tiny_gemma, train_config=SMALL)


def test_prepare_fits_saves_and_is_idempotent(tiny_gemma, fitted):
    assert fitted == artefact_folder(tiny_gemma.model_id, SMALL)
    meta = json.loads((fitted / "meta.json").read_text())
    assert meta["model_id"] == tiny_gemma.model_id
    curve = meta["metrics"]["layer_curve"]
    assert len(curve["operation_accuracy"]) == tiny_gemma.n_layers
    assert all(0.0 <= v <= 1.0 for v in curve["operation_accuracy"])
    rows = meta["metrics"]["evaluation"]["rows"]
    assert rows[-1]["task"] == "all" and rows[-1]["n"] == 2 * len(ALL_OPERATIONS)
    assert meta["metrics"]["n_calibration"] == 2 * len(ALL_OPERATIONS)
    per_problem = meta["metrics"]["evaluation"]["per_problem"]
    for key in ("few_shot_ce", "merged_ce", "oracle_ce"):  # each row's mean is its problems' mean
        assert rows[-1][key][0] == pytest.approx(np.mean(per_problem[key]))
    for row in rows:  # an intervention that never fires cannot change anything
        if row["fired"][0] == 0.0:
            assert row["merged_ce"][0] == row["few_shot_ce"][0]
            assert row["merged_ce_change"][0] == 0.0
    # 20 calibration problems cannot show a 0.95 precision (a Wilson lower bound needs ≥ 73): the
    # gate never acts on this fit, and says so with a threshold of None.
    assert all(gate["threshold"] is None for gate in meta["gates"].values())
    stamp = (fitted / "meta.json").stat().st_mtime
    calls = []
    assert prepare_default_artefacts(tiny_gemma, lambda f, m: calls.append(m), SMALL) == fitted
    assert (fitted / "meta.json").stat().st_mtime == stamp
    assert "already" in calls[-1]
    loaded = Artefact.load(fitted, tiny_gemma)
    for layer, encoder in loaded.encoders.items():
        x = torch.randn(3, tiny_gemma.d_model)
        assert encoder(x).shape == (3, SMALL.vsa_dim), layer


def test_artefact_is_refused_for_another_model(fitted):
    from lenslab.models.tiny import tiny_session

    other = tiny_session("gemma3", seed=1)
    with pytest.raises(ValueError, match="fitted on 'tiny-gemma3-s0'"):
        Artefact.load(fitted, other)
    with pytest.raises(ValueError, match="fitted on"):
        load_artefact(other, SMALL, fitted)
    with pytest.raises(FileNotFoundError, match="prepare_default_artefacts"):
        load_artefact(other, SMALL)


def test_probe_reads_a_typed_problem_and_round_trips(tiny_gemma, fitted, tmp_path):
    assert "neurosymbolic" in registered_probes()
    assert isinstance(get_probe("neurosymbolic"), NeurosymbolicProbe)
    probe = NeurosymbolicProbe(train_config=SMALL)
    config = NeurosymbolicConfig(layer=1, threshold=-10.0, merge_weight=1.0, calibrated_gate=False)  # act
    result = probe.run(tiny_gemma, "What is 12 * 3?", config)
    assert (result.operation, result.first, result.second, result.exact_answer) == ("mul", 12, 3, 36)
    assert result.readout_layer == 1 and result.fired
    assert result.operation_scores.shape == (len(ALL_OPERATIONS),)
    assert result.decoded_operation in ALL_OPERATIONS
    assert result.system_answer == solve(
        result.decoded_operation, result.decoded_first, result.decoded_second
    )
    assert result.few_shot_prompt.endswith("12 * 3 = ")
    assert result.baseline_answer  # something was generated
    figures = result.figures()
    assert set(figures) == {
        "layer_curve",
        "operation_scores",
        "slot_margins",
        "per_layer_readout",
        "evaluation",
        "evaluation_ce",
    }
    for name, figure in figures.items():  # every chart names its axes
        if name not in ("per_layer_readout", "evaluation"):
            assert figure.layout.xaxis.title.text and figure.layout.yaxis.title.text, name
    path = Report([result]).save(tmp_path / "ns")
    again = Report.load(path).results[0]
    assert isinstance(again, NeurosymbolicResult)
    assert np.array_equal(again.fit.evaluation, result.fit.evaluation, equal_nan=True)
    assert again.fit.curve.keys() == result.fit.curve.keys()
    assert again.summary() == result.summary()
    assert np.array_equal(again.fit.evaluation_low, result.fit.evaluation_low, equal_nan=True)
    assert tiny_gemma.active_hook_count() == 0


def test_probe_abstains_where_the_gate_was_not_calibrated_to_act(tiny_gemma, fitted):
    """Random weights: nothing is readable, so the calibrated gate abstains and nothing is merged."""
    probe = NeurosymbolicProbe(train_config=SMALL)
    forced = probe.run(
        tiny_gemma, "What is 12 * 3?", NeurosymbolicConfig(threshold=-10.0, calibrated_gate=False)
    )
    result = probe.run(tiny_gemma, "What is 12 * 3?", NeurosymbolicConfig(threshold=-10.0))
    assert forced.fired and not result.fired  # only the calibrated gate stops it
    assert result.summary()["system"] == "abstains" and "no confidence threshold" in result.abstain_reason
    assert (
        result.merged_answer == result.baseline_answer
        and result.merged_answer_ce == result.baseline_answer_ce
    )
    assert result.slot_margins.shape == (1 + 2 * 3,) and result.slot_names[0] == "operation"


def test_old_artefact_format_is_refused_with_a_refit_message(tiny_gemma, fitted, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(fitted, old)
    meta = json.loads((old / "meta.json").read_text())
    meta["format"] = 3
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refit them with `lenslab prepare`"):
        Artefact.load(old, tiny_gemma)


def test_probe_rejects_bad_input(tiny_gemma, fitted):
    probe = NeurosymbolicProbe(train_config=SMALL)
    with pytest.raises(ValueError, match="could not read"):
        probe.run(tiny_gemma, "no numbers here", NeurosymbolicConfig())
    with pytest.raises(ValueError, match="below 20"):
        probe.run(tiny_gemma, "48 * 7", NeurosymbolicConfig())
    with pytest.raises(ValueError, match="out of range"):
        probe.run(tiny_gemma, "4 * 7", NeurosymbolicConfig(layer=5))
    with pytest.raises(ValueError, match="merge_weight"):
        probe.run(tiny_gemma, "4 * 7", NeurosymbolicConfig(merge_weight=2.0))


def test_ridge_dual_form_equals_primal():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(30, 80, generator=generator, dtype=torch.float64)
    y = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    dual = ridge_fit(x, y, alpha=0.1)  # 30 samples < 80 features: sample-space solve
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = 0.1 * float((xc * xc).sum()) / 80
    primal = torch.linalg.solve(xc.T @ xc + lam * torch.eye(80, dtype=torch.float64), xc.T @ yc)
    assert torch.allclose(dual.weight, primal, atol=1e-8)


# ------------------------------------------------------------------- greedy read off teacher forcing
@pytest.mark.parametrize("with_merge", [False, True])
def test_teacher_forced_greedy_equals_step_by_step_and_skips_agreed_steps(
    tiny_gemma, monkeypatch, with_merge
):
    """Greedy steps read off one teacher-forced run equal the step-by-step greedy answer; forwards
    run only after the first step where the greedy token departs from the forced answer."""
    session, layer, max_steps = tiny_gemma, 1, 5
    monkeypatch.setattr(readout, "_ends_answer", lambda _session, _token: False)  # always max_steps
    prompt_ids = session.tokenize("7 + 5 = 12\n3 * 4 = ")[0].tolist()
    start = len(prompt_ids) - 1
    vectors = torch.randn(3, session.d_model, generator=torch.Generator().manual_seed(0)) * 4
    merge_kwargs = {"merge_vectors": vectors, "weight": 0.5} if with_merge else {}
    _, reference = readout.greedy_answer(
        session, prompt_ids, merge_layer=layer, max_steps=max_steps, **merge_kwargs
    )
    assert len(reference) == max_steps
    lengths: list[int] = []  # tokens of each forward the greedy answer runs (counted at the embedding)
    for departs in (None, 0, 2):
        answer = list(reference)
        if departs is not None:  # a forced answer the model does not write from this step on
            answer[departs] = next(t for t in range(5, 100) if t != reference[departs])
        positions = [list(range(start, start + len(answer)))]
        merge = Merge(layer, 0.5, [vectors], [start]) if with_merge else None
        forced = collect(session, [prompt_ids + answer], positions, [layer], targets=[answer], merge=merge)
        lengths.clear()
        handle = session.input_embedding().register_forward_hook(
            lambda _m, args, _out: lengths.append(int(args[0].shape[-1]))
        )
        try:
            _, got = readout.greedy_answer(
                session,
                prompt_ids,
                merge_layer=layer,
                max_steps=max_steps,
                teacher_forced=(answer, forced.argmax[0].tolist()),
                **merge_kwargs,
            )
        finally:
            handle.remove()
        assert got == reference, departs
        if departs is None:  # the model writes the forced answer: nothing runs
            assert lengths == [], departs
        else:  # the prompt and the agreed tokens once, then one cached token a step
            steps_left = max_steps - departs - 1
            assert lengths == [len(prompt_ids) + departs + 1] + [1] * (steps_left - 1), departs
    assert session.active_hook_count() == 0


@pytest.mark.parametrize("acts", [False, True])
def test_probe_answers_equal_step_by_step_generation_and_separate_scoring(tiny_gemma, fitted, acts):
    """The probe's one-forward read-out, CE and greedy answers equal the step-by-step reference:
    greedy generation without the teacher-forced shortcut and a separate scoring run per answer."""
    probe = NeurosymbolicProbe(train_config=SMALL)
    config = NeurosymbolicConfig(layer=1, threshold=-10.0, merge_weight=1.0, calibrated_gate=not acts)
    result = probe.run(tiny_gemma, "What is 12 * 3?", config)
    assert result.fired == acts
    artefact = load_artefact(tiny_gemma, SMALL)
    prompt_ids = tiny_gemma.tokenize(result.few_shot_prompt)[0].tolist()
    answer_ids = answer_tokens(tiny_gemma, result.exact_answer)
    start = len(prompt_ids) - 1
    clean = collect(tiny_gemma, [prompt_ids], [[start]], [1])
    vectors = readout.read_out(artefact.codebook, artefact.encoders[1], clean.states[1][0], -10.0).vectors
    assert torch.allclose(
        torch.as_tensor(result.operation_scores), vectors @ artefact.codebook.operation_atoms.T
    )
    steps = readout.decoded_steps(artefact, [result.system_answer if acts else None], [acts])[0]
    max_steps = artefact.codebook.n_digits + 2
    for answer_text, ce, vectors_used in (
        (result.baseline_answer, result.baseline_answer_ce, None),
        (result.merged_answer, result.merged_answer_ce, steps),
    ):
        text, _ = readout.greedy_answer(
            tiny_gemma,
            prompt_ids,
            merge_vectors=vectors_used,
            merge_layer=artefact.merge_layer,
            weight=1.0,
            max_steps=max_steps,
        )
        assert text == answer_text
        merge = None if vectors_used is None else Merge(artefact.merge_layer, 1.0, [vectors_used], [start])
        scored = collect(
            tiny_gemma,
            [prompt_ids + answer_ids],
            [list(range(start, start + len(answer_ids)))],
            [artefact.merge_layer],
            targets=[answer_ids],
            merge=merge,
        )
        assert ce == pytest.approx(float(-scored.target_logprob[0].mean()), abs=1e-6)
    if acts:  # the merge (w = 1) writes the decoded answer: the merged CE differs from the baseline's
        assert result.merged_answer_ce != result.baseline_answer_ce
