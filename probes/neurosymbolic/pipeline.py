r"""Fitting the neurosymbolic encoder/decoder: the pipeline from tasks to a saved artefact.

Pipeline (Dhanraj & Eliasmith 2025, scaled to a CPU and a 270M model):

1. Generate few-shot problems (train/test split by operand pair) and run every "prompt + answer +
   newline" sequence once, keeping the residual stream of every layer at the answer positions.
   Position ``p0`` (the prompt's last token) is where the encoder reads; positions ``p0 + j``
   predict answer token ``j``.
2. Encoder per layer: ridge map h(p0, layer) → VSA problem vector; penalty chosen on a held-out
   fifth of the training problems; metrics on the test split give the layer curve.
   The gate's read-out confidence threshold per layer is chosen on a separate calibration split
   (its own operand pairs, prompt only: one forward to the deepest layer) — see :mod:`.gate`.
3. Decoder: ridge map from the answer-step VSA vectors (digit to write + step atom,
   :meth:`Codebook.answer_step_vectors`) to h(p0 + j, layer), fitted on training problems for
   every layer at once (reconstruction only: the optional cross-entropy fine-tune is left out,
   see docs/neurosymbolic.md). Its validation R² per layer is a second curve ("where is the
   digit to write linearly writable?"); by default the merge layer is the layer with the best
   R² at or after the encoder's layer (a one-pass system reads before it writes).
4. Merge: encode, pick the operation by score (act only above the threshold), unbind the operands,
   compute the answer exactly, build its step vectors, decode, and write
   h ← (1−w)·h + w·decoded at every answer position.

Multi-token answers: Gemma's tokenizer writes each digit as its own token ("336" → "3","3","6",
then "\n"), so an answer of k digits takes k+1 steps. Step j's decoded vector is merged at the
position that predicts token j (p0 + j). Teacher forcing the true answer and checking the argmax
at every step is exactly greedy decoding's result (the merge at step j depends only on j), so
exact match and cross-entropy come from one forward per problem. Tokenizers that merge digits
(GPT-2) are refused with a clear message.

The artefact and its storage live in :mod:`lenslab.probes.neurosymbolic.artefact`, reading out
and evaluating in :mod:`lenslab.probes.neurosymbolic.readout`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from lenslab.models.session import ModelSession
from lenslab.probes.neurosymbolic.artefact import Artefact, TrainConfig
from lenslab.probes.neurosymbolic.fit import (
    Collected,
    LinearMap,
    collect,
    mean_cosine,
    ridge_path,
    ridge_predictions,
)
from lenslab.probes.neurosymbolic.gate import GateThreshold, calibrate
from lenslab.probes.neurosymbolic.readout import (
    Encoded,
    encode_prompts,
    evaluate,
    fully_correct,
    read_out,
    readout_metrics,
    shot_prefix_length,
)
from lenslab.probes.neurosymbolic.tasks import Problem, n_digits_for
from lenslab.probes.neurosymbolic.vsa import Codebook
from lenslab.progress import NO_PROGRESS, Progress

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def fit_artefact(session: ModelSession, config: TrainConfig, progress: Progress = NO_PROGRESS) -> Artefact:
    """Generate tasks, collect hidden states, fit encoders and decoder, evaluate on the test split."""
    config.validate(session)
    started = time.perf_counter()
    tasks = config.tasks()
    codebook = Codebook.build(
        config.vsa_dim,
        config.seed,
        n_digits_for(config.operations, config.bound),
        config.operations,
        session.device,
    )
    problems = tasks.train + tasks.test
    calibration_ids = [session.tokenize(prompt)[0].tolist() for prompt in tasks.calibration_prompts]
    calibration_prefixes = [
        shot_prefix_length(session, prompt, problem, ids)
        for prompt, problem, ids in zip(
            tasks.calibration_prompts, tasks.calibration, calibration_ids, strict=True
        )
    ]
    encoded = encode_prompts(session, tasks.train_prompts + tasks.test_prompts, problems)
    n_train = len(tasks.train)
    test_rows = list(range(n_train, len(problems)))
    layers = list(range(session.n_layers))
    # One pass per split: every layer at the answer positions (p0 for encoders, p0+j for the
    # decoder); the test pass also scores the answer tokens (the baseline of the evaluation).
    progress(0.0, "collecting hidden states")
    test_encoded = Encoded(
        [encoded.sequences[i] for i in test_rows],
        [encoded.answers[i] for i in test_rows],
        [encoded.starts[i] for i in test_rows],
        [encoded.prefixes[i] for i in test_rows] if encoded.prefixes is not None else None,
    )
    share = n_train / (len(problems) + len(calibration_ids))
    test_share = len(test_rows) / (len(problems) + len(calibration_ids))
    with session.lock:
        train_pass = collect(
            session,
            encoded.sequences[:n_train],
            encoded.positions()[:n_train],
            layers,
            batch_size=config.batch_size,
            prefix_lengths=None if encoded.prefixes is None else encoded.prefixes[:n_train],
            progress=lambda f, m: progress(0.6 * share * f, m),
            message="collecting hidden states (train)",
        )
        test_pass = collect(
            session,
            test_encoded.sequences,
            test_encoded.positions(),
            layers,
            targets=test_encoded.answers,
            batch_size=config.batch_size,
            prefix_lengths=test_encoded.prefixes,
            progress=lambda f, m: progress(0.6 * (share + test_share * f), m),
            message="collecting hidden states (test)",
        )
        calibration_pass = collect(
            session,
            calibration_ids,
            [[len(ids) - 1] for ids in calibration_ids],
            layers,
            batch_size=config.batch_size,
            prefix_lengths=calibration_prefixes,
            progress=lambda f, m: progress(0.6 * (share + test_share + (1 - share - test_share) * f), m),
            message="collecting hidden states (calibration)",
        )
        clean = Collected(
            states={layer: train_pass.states[layer] + test_pass.states[layer] for layer in layers}
        )
        collect_seconds = time.perf_counter() - started

        # Encoders per layer: penalty chosen on a held-out fifth of train, refitted on all train.
        generator = torch.Generator().manual_seed(config.seed)
        shuffled = torch.randperm(n_train, generator=generator).tolist()
        n_val = max(1, n_train // 5)
        val_rows, fit_rows = shuffled[:n_val], shuffled[n_val:]
        ops = [codebook.operation_index(p.operation) for p in problems]
        targets = codebook.encode_problems([p.first for p in problems], ops, [p.second for p in problems])
        encoders: dict[int, LinearMap] = {}
        gates: dict[int, GateThreshold] = {}
        curve: dict[str, list[float]] = {}
        val_score: list[float] = []
        for layer in layers:
            x = torch.stack([clean.states[layer][i][0] for i in range(len(problems))])
            predictions = ridge_predictions(x[fit_rows], targets[fit_rows], ALPHAS, x[val_rows])
            scores = [mean_cosine(p, targets[val_rows]) for p in predictions]
            alpha = ALPHAS[int(np.argmax(scores))]
            val_map = ridge_path(x[fit_rows], targets[fit_rows], [alpha])[0]
            val_metrics = readout_metrics(
                codebook,
                read_out(codebook, val_map, x[val_rows], config.threshold),
                [problems[i] for i in val_rows],
                len(str(config.bound - 1)),
            )
            val_score.append(
                val_metrics["operation_accuracy"].estimate + val_metrics["digit_accuracy"].estimate
            )
            encoder = ridge_path(x[:n_train], targets[:n_train], [alpha])[0].calibrate(x[:n_train])
            encoders[layer] = encoder
            gates[layer] = _calibrate_gate(
                codebook, encoder, calibration_pass.states[layer], tasks.calibration, config
            )
            test_metrics = readout_metrics(
                codebook,
                read_out(codebook, encoder, x[test_rows], config.threshold, gates[layer].threshold),
                [problems[i] for i in test_rows],
                len(str(config.bound - 1)),
            )
            for name, interval in test_metrics.items():
                curve.setdefault(name, []).append(interval.estimate)
                curve.setdefault(f"{name}_low", []).append(interval.low)
                curve.setdefault(f"{name}_high", []).append(interval.high)
            curve.setdefault("alpha", []).append(alpha)
            curve.setdefault("gate_threshold", []).append(
                gates[layer].threshold if gates[layer].acts else None
            )
            progress(0.6 + 0.1 * (layer + 1) / len(layers), f"fitted encoder for layer {layer}")
        chosen = int(np.argmax(val_score))

        # Decoder: answer-step VSA vectors -> hidden states, fitted for every layer at once (same
        # inputs); its validation R² per layer says where the digit to write is linearly writable.
        steps_in, step_rows = [], []
        for i in range(n_train):
            vectors = codebook.answer_step_vectors(problems[i].answer)
            steps_in.append(vectors)
            step_rows += [i] * len(vectors)
        x_dec = torch.cat(steps_in)
        y_all = torch.cat(
            [
                torch.cat([clean.states[layer][i][: len(steps_in[i])] for i in range(n_train)])
                for layer in layers
            ],
            dim=1,
        )  # [steps, layer * d_model]
        val_set = set(val_rows)
        in_val = torch.as_tensor([row in val_set for row in step_rows])
        dec_predictions = ridge_predictions(x_dec[~in_val], y_all[~in_val], ALPHAS, x_dec[in_val])
        d_model = session.d_model
        decoder_r2, decoder_alpha = [], []
        # R² against per-step means: how much of the state beyond "which answer step" the digit
        # to write explains (early layers mostly hold the current token, fixed by the step).
        step_index = torch.as_tensor([j for vectors in steps_in for j in range(len(vectors))])
        step_means = torch.stack(
            [y_all[~in_val & (step_index == j)].mean(0) for j in range(int(step_index.max()) + 1)]
        )
        for layer in layers:
            cols = slice(layer * d_model, (layer + 1) * d_model)
            target = y_all[in_val][:, cols]
            baseline = ((target - step_means[step_index[in_val]][:, cols]) ** 2).sum()
            r2 = [float(1 - ((p[:, cols] - target) ** 2).sum() / baseline) for p in dec_predictions]
            decoder_r2.append(max(r2))
            decoder_alpha.append(ALPHAS[int(np.argmax(r2))])
        curve["decoder_r2"] = decoder_r2
        if config.merge_layer == -1:  # write where the answer is most writable, not before reading
            merge_layer = chosen + int(np.argmax(decoder_r2[chosen:]))
        else:
            merge_layer = session.check_layer(config.merge_layer)
        cols = slice(merge_layer * d_model, (merge_layer + 1) * d_model)
        decoder = ridge_path(x_dec, y_all[:, cols], [decoder_alpha[merge_layer]])[0]
        dec_scores = [decoder_r2[merge_layer]]
        progress(0.72, "fitted decoder")

        artefact = Artefact(
            model_id=session.model_id,
            d_model=session.d_model,
            n_layers=session.n_layers,
            config=config,
            codebook=codebook,
            encoders=encoders,
            decoder=decoder,
            chosen_layer=chosen,
            merge_layer=merge_layer,
            metrics={},
            gates=gates,
        )
        test_problems = [problems[i] for i in test_rows]
        encoder_states = torch.stack([clean.states[chosen][i][0] for i in test_rows])
        table = evaluate(
            session,
            artefact,
            test_problems,
            test_encoded,
            encoder_states,
            threshold=config.threshold,
            weight=config.merge_weight,
            min_confidence=artefact.gate(chosen),
            batch_size=config.batch_size,
            baseline=test_pass,
            progress=lambda f, m: progress(0.72 + 0.28 * f, m),
        )
    artefact.metrics = {
        "layer_curve": curve,
        "validation_score": val_score,
        "decoder_validation_r2": max(dec_scores),
        "evaluation": table,
        "n_train": n_train,
        "n_test": len(test_rows),
        "n_calibration": len(calibration_ids),
        "collect_seconds": collect_seconds,
        "fit_seconds": time.perf_counter() - started,
    }
    return artefact


def _calibrate_gate(
    codebook: Codebook,
    encoder: LinearMap,
    states: list[torch.Tensor],
    problems: list[Problem],
    config: TrainConfig,
) -> GateThreshold:
    """The layer's read-out confidence threshold, chosen on the calibration problems only."""
    readout = read_out(codebook, encoder, torch.stack([s[0] for s in states]), config.threshold)
    correct = np.asarray(fully_correct(codebook, readout, problems))
    return calibrate(
        np.asarray(readout.confidence), correct, np.asarray(readout.eligible), config.gate_target
    )
