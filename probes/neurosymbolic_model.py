r"""Fitting, saving, reading out and evaluating the neurosymbolic encoder/decoder.

Pipeline (Dhanraj & Eliasmith 2025, scaled to a CPU and a 270M model):

1. Generate few-shot problems (train/test split by operand pair) and run every "prompt + answer +
   newline" sequence once, keeping the residual stream of every layer at the answer positions.
   Position ``p0`` (the prompt's last token) is where the encoder reads; positions ``p0 + j``
   predict answer token ``j``.
2. Encoder per layer: ridge map h(p0, layer) → VSA problem vector; penalty chosen on a held-out
   fifth of the training problems; metrics on the test split give the layer curve.
3. Decoder: ridge map from the answer-step VSA vectors (digit to write + step atom,
   :meth:`Codebook.answer_step_vectors`) to h(p0 + j, layer), fitted on training problems for
   every layer at once (reconstruction only: the optional cross-entropy fine-tune is left out,
   see docs/notes/issue-7.md). Its validation R² per layer is a second curve ("where is the
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
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.paths import artefacts_dir
from lenslab.models.session import ModelSession
from lenslab.probes.base import NO_PROGRESS, Config, Progress
from lenslab.probes.neurosymbolic_fit import (
    Collected,
    LinearMap,
    Merge,
    collect,
    mean_cosine,
    ridge_path,
)
from lenslab.probes.neurosymbolic_tasks import (
    ALL_OPERATIONS,
    OPERATIONS,
    Problem,
    generate_tasks,
    n_digits_for,
    solve,
)
from lenslab.probes.vsa import Codebook, ProblemReadout, digits_of

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FORMAT = 2


@dataclass(frozen=True)
class TrainConfig(Config):
    """What the encoders/decoder are fitted on (part of the artefact's identity)."""

    operations: tuple[str, ...] = field(default=ALL_OPERATIONS, metadata={"help": "task types"})
    bound: int = field(default=100, metadata={"help": "operands are 0..bound-1", "min": 4, "max": 1000})
    n_train_per_operation: int = field(default=20, metadata={"help": "training problems", "min": 4})
    n_test_per_operation: int = field(default=6, metadata={"help": "test problems", "min": 2})
    shots: int = field(default=1, metadata={"help": "solved examples before the query", "min": 0, "max": 8})
    vsa_dim: int = field(default=2048, metadata={"help": "VSA dimension", "min": 64, "max": 16384})
    seed: int = field(default=0, metadata={"help": "codebook and task seed"})
    merge_layer: int = field(
        default=-1,
        metadata={"help": "decoder layer (-1: best decoder R² at/after the encoder layer)", "min": -1},
    )
    threshold: float = field(default=0.8, metadata={"help": "evaluation: act above this score"})
    merge_weight: float = field(default=0.5, metadata={"help": "evaluation: w in (1-w)h + w·decoded"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward", "min": 1, "max": 256})

    def validate(self, session: ModelSession) -> None:
        """Check operations and the merge layer against the model."""
        super().validate(session)
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"unknown or no operations {unknown}; choose from {list(OPERATIONS)}")
        if self.merge_layer != -1:
            session.check_layer(self.merge_layer)
        if not 0.0 <= self.merge_weight <= 1.0:
            raise ValueError(f"merge_weight must be in [0, 1], got {self.merge_weight}")

    def key(self) -> str:
        """Short stable id of the fields that change the fitted maps."""
        fields = asdict(self)
        for runtime in ("batch_size",):
            fields.pop(runtime)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Artefact:
    """Fitted encoders (one per layer), the decoder, the codebook and their test metrics."""

    model_id: str
    d_model: int
    n_layers: int
    config: TrainConfig
    codebook: Codebook
    encoders: dict[int, LinearMap]
    decoder: LinearMap
    chosen_layer: int
    merge_layer: int
    metrics: dict[str, Any]  # layer curve + evaluation table (plain JSON)

    @property
    def operand_digits(self) -> int:
        """Digits an operand can have."""
        return len(str(self.config.bound - 1))

    def check_session(self, session: ModelSession) -> None:
        """Refuse maps fitted on another model."""
        if session.model_id != self.model_id or session.d_model != self.d_model:
            raise ValueError(
                f"these neurosymbolic encoders were fitted on {self.model_id!r} (d_model {self.d_model}); "
                f"the loaded model is {session.model_id!r} (d_model {session.d_model}). Fit them for this "
                "model first (prepare_default_artefacts or the page's 'Fit encoders' button)."
            )

    # ------------------------------------------------------------------------------- save/load
    def save(self, folder: Path) -> Path:
        """Write ``tensors.safetensors`` + ``meta.json`` (meta last, so a crash leaves no half)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for name in ("digit_atoms", "positions", "roles", "operation_atoms", "step_atoms", "end_atom"):
            tensors[f"codebook.{name}"] = getattr(self.codebook, name)
        for layer, encoder in self.encoders.items():
            _put(tensors, f"encoder.{layer}", encoder)
        _put(tensors, "decoder", self.decoder)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / "tensors.safetensors"
        )
        meta = {
            "format": FORMAT,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "config": self.config.to_dict(),
            "codebook": {
                "dim": self.codebook.dim,
                "seed": self.codebook.seed,
                "n_digits": self.codebook.n_digits,
                "operations": list(self.codebook.operations),
            },
            "encoder_alphas": {str(k): v.alpha for k, v in self.encoders.items()},
            "decoder_alpha": self.decoder.alpha,
            "chosen_layer": self.chosen_layer,
            "merge_layer": self.merge_layer,
            "metrics": self.metrics,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path, session: ModelSession | None = None) -> Artefact:
        """Read a saved artefact; with ``session``, refuse it if it was fitted on another model."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "meta.json").is_file() or not (folder / "tensors.safetensors").is_file():
            raise FileNotFoundError(f"no neurosymbolic encoders in {folder} (meta.json/tensors.safetensors)")
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder} holds format {meta.get('format')}, expected {FORMAT}: refit")
        if session is not None and (
            meta["model_id"] != session.model_id or meta["d_model"] != session.d_model
        ):
            raise ValueError(
                f"the neurosymbolic encoders in {folder} were fitted on {meta['model_id']!r}; the loaded "
                f"model is {session.model_id!r}. Fit them for this model first."
            )
        device = session.device if session is not None else torch.device("cpu")
        tensors = {k: v.to(device) for k, v in load_file(folder / "tensors.safetensors").items()}
        book = meta["codebook"]
        codebook = Codebook(
            dim=book["dim"],
            seed=book["seed"],
            n_digits=book["n_digits"],
            operations=tuple(book["operations"]),
            **{
                name: tensors[f"codebook.{name}"]
                for name in ("digit_atoms", "positions", "roles", "operation_atoms", "step_atoms", "end_atom")
            },
        )
        encoders = {
            int(layer): _get(tensors, f"encoder.{layer}", alpha)
            for layer, alpha in meta["encoder_alphas"].items()
        }
        return cls(
            model_id=meta["model_id"],
            d_model=meta["d_model"],
            n_layers=meta["n_layers"],
            config=TrainConfig.from_dict(meta["config"]),  # type: ignore[arg-type]
            codebook=codebook,
            encoders=encoders,
            decoder=_get(tensors, "decoder", meta["decoder_alpha"]),
            chosen_layer=meta["chosen_layer"],
            merge_layer=meta["merge_layer"],
            metrics=meta["metrics"],
        )


def _put(tensors: dict[str, Tensor], prefix: str, linear: LinearMap) -> None:
    tensors[f"{prefix}.weight"] = linear.weight
    tensors[f"{prefix}.input_mean"] = linear.input_mean
    tensors[f"{prefix}.output_mean"] = linear.output_mean


def _get(tensors: dict[str, Tensor], prefix: str, alpha: float) -> LinearMap:
    return LinearMap(
        tensors[f"{prefix}.weight"], tensors[f"{prefix}.input_mean"], tensors[f"{prefix}.output_mean"], alpha
    )


def model_slug(model_id: str) -> str:
    """A folder name for a model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip(".-") or "model"


def artefact_folder(model_id: str, config: TrainConfig) -> Path:
    """``artefacts_dir()/neurosymbolic/<model-slug>/<config key>``."""
    return artefacts_dir() / "neurosymbolic" / model_slug(model_id) / config.key()


# --------------------------------------------------------------------------------- sequences
@dataclass
class Encoded:
    """Token ids of problems: the prompt, the answer tokens and where the answer starts."""

    sequences: list[list[int]]
    answers: list[list[int]]  # answer token ids: digits then the newline
    starts: list[int]  # position of the prompt's last token (predicts the first answer token)

    def positions(self) -> list[list[int]]:
        """Positions predicting each answer token."""
        return [list(range(s, s + len(a))) for s, a in zip(self.starts, self.answers, strict=True)]


def answer_tokens(session: ModelSession, answer: int) -> list[int]:
    r"""Token ids of ``"{answer}\n"``; refuses tokenizers that do not write one digit per token."""
    ids = session.tokenizer(f"{answer}\n", add_special_tokens=False)["input_ids"]
    if len(ids) != len(str(answer)) + 1:
        raise ValueError(
            f"{session.model_id}'s tokenizer writes {answer} as {len(ids) - 1} token(s); the neurosymbolic "
            "merge needs one token per digit (as Gemma, Llama-3-style and SmolLM tokenizers do)"
        )
    return [int(i) for i in ids]


def encode_prompts(session: ModelSession, prompts: list[str], problems: list[Problem]) -> Encoded:
    """Tokenize prompts (with BOS) and append the exact answers' tokens."""
    sequences, answers, starts = [], [], []
    for prompt, problem in zip(prompts, problems, strict=True):
        prompt_ids = session.tokenize(prompt)[0].tolist()
        answer_ids = answer_tokens(session, problem.answer)
        sequences.append(prompt_ids + answer_ids)
        answers.append(answer_ids)
        starts.append(len(prompt_ids) - 1)
    return Encoded(sequences, answers, starts)


# -------------------------------------------------------------------------------------- readout
@dataclass
class Readout:
    """Decoded structure of a batch of hidden states and what the system would do with it."""

    vectors: Float[Tensor, "n dim"]
    decoded: ProblemReadout
    operations: list[str]
    top_score: list[float]
    fired: list[bool]
    system_answers: list[int | None]


def read_out(
    codebook: Codebook, encoder: LinearMap, states: Float[Tensor, "n d_model"], threshold: float
) -> Readout:
    """Encode hidden states, decode operation and operands, and compute answers where confident."""
    vectors = encoder(states.to(encoder.weight.device)).float()
    decoded = codebook.decode_problems(vectors)
    top = decoded.operation_scores.max(-1).values.tolist()
    operations = [codebook.operations[i] for i in decoded.operation.tolist()]
    fired, answers = [], []
    for op, first, second, score in zip(
        operations, decoded.first.tolist(), decoded.second.tolist(), top, strict=True
    ):
        answer: int | None = None
        try:
            answer = solve(op, first, second)
        except ValueError:
            answer = None
        if answer is not None and answer > codebook.max_value:
            answer = None
        answers.append(answer)
        fired.append(bool(score >= threshold and answer is not None))
    return Readout(vectors, decoded, operations, top, fired, answers)


def decoded_steps(artefact: Artefact, answers: list[int | None], fired: list[bool]) -> list[Tensor]:
    """Hidden-state vectors to merge for each problem (empty where the system does not act)."""
    empty = torch.zeros(0, artefact.d_model, device=artefact.decoder.weight.device)
    out = []
    for answer, act in zip(answers, fired, strict=True):
        if not act or answer is None:
            out.append(empty)
        else:
            out.append(artefact.decoder(artefact.codebook.answer_step_vectors(answer)).float())
    return out


def readout_metrics(
    artefact_codebook: Codebook, readout: Readout, problems: list[Problem], operand_digits: int
) -> dict[str, float]:
    """Operation accuracy, operand digit / whole-number accuracy, cosine to target, fired share."""
    ops = torch.as_tensor([artefact_codebook.operation_index(p.operation) for p in problems])
    first = torch.as_tensor([p.first for p in problems])
    second = torch.as_tensor([p.second for p in problems])
    target = artefact_codebook.encode_problems(first, ops, second)
    decoded = readout.decoded
    digits_true = torch.cat([digits_of(first, operand_digits), digits_of(second, operand_digits)], 1)
    digits_read = torch.cat(
        [decoded.first_digits[:, :operand_digits].cpu(), decoded.second_digits[:, :operand_digits].cpu()], 1
    )
    return {
        "operation_accuracy": float((decoded.operation.cpu() == ops).float().mean()),
        "digit_accuracy": float((digits_true == digits_read).float().mean()),
        "number_accuracy": float(
            torch.cat([decoded.first.cpu() == first, decoded.second.cpu() == second]).float().mean()
        ),
        "both_operands_accuracy": float(
            ((decoded.first.cpu() == first) & (decoded.second.cpu() == second)).float().mean()
        ),
        "cosine": mean_cosine(readout.vectors.cpu(), target.cpu()),
        "fired": float(np.mean(readout.fired)) if readout.fired else 0.0,
    }


# ------------------------------------------------------------------------------------- fitting
def fit_artefact(session: ModelSession, config: TrainConfig, progress: Progress = NO_PROGRESS) -> Artefact:
    """Generate tasks, collect hidden states, fit encoders and decoder, evaluate on the test split."""
    config.validate(session)
    started = time.perf_counter()
    tasks = generate_tasks(
        config.operations,
        config.bound,
        config.n_train_per_operation,
        config.n_test_per_operation,
        shots=config.shots,
        seed=config.seed,
    )
    codebook = Codebook.build(
        config.vsa_dim,
        config.seed,
        n_digits_for(config.operations, config.bound),
        config.operations,
        session.device,
    )
    problems = tasks.train + tasks.test
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
    )
    share = n_train / len(problems)
    with session.lock:
        train_pass = collect(
            session,
            encoded.sequences[:n_train],
            encoded.positions()[:n_train],
            layers,
            batch_size=config.batch_size,
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
            progress=lambda f, m: progress(0.6 * (share + (1 - share) * f), m),
            message="collecting hidden states (test)",
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
        curve: dict[str, list[float]] = {}
        val_score: list[float] = []
        for layer in layers:
            x = torch.stack([clean.states[layer][i][0] for i in range(len(problems))])
            path = ridge_path(x[fit_rows], targets[fit_rows], ALPHAS)
            scores = [mean_cosine(m(x[val_rows]), targets[val_rows]) for m in path]
            alpha = ALPHAS[int(np.argmax(scores))]
            val_metrics = readout_metrics(
                codebook,
                read_out(codebook, path[int(np.argmax(scores))], x[val_rows], config.threshold),
                [problems[i] for i in val_rows],
                len(str(config.bound - 1)),
            )
            val_score.append(val_metrics["operation_accuracy"] + val_metrics["digit_accuracy"])
            encoder = ridge_path(x[:n_train], targets[:n_train], [alpha])[0]
            encoders[layer] = encoder
            test_metrics = readout_metrics(
                codebook,
                read_out(codebook, encoder, x[test_rows], config.threshold),
                [problems[i] for i in test_rows],
                len(str(config.bound - 1)),
            )
            for name, value in {**test_metrics, "alpha": alpha}.items():
                curve.setdefault(name, []).append(value)
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
        dec_path = ridge_path(x_dec[~in_val], y_all[~in_val], ALPHAS)
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
            r2 = [float(1 - ((m(x_dec[in_val])[:, cols] - target) ** 2).sum() / baseline) for m in dec_path]
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
        "collect_seconds": collect_seconds,
        "fit_seconds": time.perf_counter() - started,
    }
    return artefact


def evaluate(
    session: ModelSession,
    artefact: Artefact,
    problems: list[Problem],
    encoded: Encoded,
    encoder_states: Float[Tensor, "n d_model"],
    *,
    threshold: float,
    weight: float,
    batch_size: int = 16,
    baseline: Collected | None = None,
    progress: Progress = NO_PROGRESS,
) -> dict[str, Any]:
    """Exact match and answer-token cross-entropy per task: baseline, merge, and oracle merge.

    The oracle merge writes the *true* answer's decoded vectors into every problem: it separates
    "the encoder read the problem wrong" from "the decoder cannot steer the model". ``baseline``
    may pass an unmodified run of the same sequences with ``targets`` (saves one pass).
    """
    readout = read_out(artefact.codebook, artefact.encoders[artefact.chosen_layer], encoder_states, threshold)
    runs: dict[str, Collected] = {} if baseline is None else {"baseline": baseline}
    merges = {
        **({"baseline": None} if baseline is None else {}),
        "merged": decoded_steps(artefact, readout.system_answers, readout.fired),
        "oracle": decoded_steps(artefact, [p.answer for p in problems], [True] * len(problems)),
    }
    for k, (name, vectors) in enumerate(merges.items()):
        merge = None if vectors is None else Merge(artefact.merge_layer, weight, vectors, encoded.starts)
        runs[name] = collect(
            session,
            encoded.sequences,
            encoded.positions(),
            [artefact.merge_layer],
            targets=encoded.answers,
            merge=merge,
            batch_size=batch_size,
            progress=lambda f, m, k=k: progress((k + f) / len(merges), m),
            message=f"evaluating ({name})",
        )
    runs = {name: runs[name] for name in ("baseline", "merged", "oracle")}
    table: dict[str, Any] = {"threshold": threshold, "weight": weight, "merge_layer": artefact.merge_layer}
    groups = {
        op: [i for i, p in enumerate(problems) if p.operation == op] for op in artefact.codebook.operations
    }
    groups["all"] = list(range(len(problems)))
    rows = []
    for op, members in groups.items():
        if not members:
            continue
        row: dict[str, Any] = {"task": op, "n": len(members)}
        row["fired"] = float(np.mean([readout.fired[i] for i in members]))
        row["system_correct"] = float(
            np.mean([readout.system_answers[i] == problems[i].answer for i in members])
        )
        for name, run in runs.items():
            assert run.argmax is not None and run.target_logprob is not None
            exact = [
                bool((run.argmax[i].cpu() == torch.as_tensor(encoded.answers[i])).all()) for i in members
            ]
            ce = [float(-run.target_logprob[i].mean()) for i in members]
            row[f"{name}_accuracy"] = float(np.mean(exact))
            row[f"{name}_ce"] = float(np.mean(ce))
        rows.append(row)
    table["rows"] = rows
    return table


# ----------------------------------------------------------------------------------- generation
def greedy_answer(
    session: ModelSession,
    prompt_ids: list[int],
    *,
    merge_vectors: Tensor | None = None,
    merge_layer: int = 0,
    weight: float = 0.5,
    max_steps: int = 8,
) -> tuple[str, list[int]]:
    """Greedy continuation until a non-digit token (merging step j's vector at p0 + j if given)."""
    generated: list[int] = []
    start = len(prompt_ids) - 1
    for _ in range(max_steps):
        sequence = prompt_ids + generated
        merge = None
        if merge_vectors is not None and len(merge_vectors):
            merge = Merge(merge_layer, weight, [merge_vectors], [start])
        run = collect(session, [sequence], [[len(sequence) - 1]], [merge_layer], targets=[[0]], merge=merge)
        assert run.argmax is not None
        token = int(run.argmax[0][0])
        generated.append(token)
        if not session.tokenizer.decode([token]).strip().isdigit():
            break
    text = session.tokenizer.decode(generated)
    return text, generated
