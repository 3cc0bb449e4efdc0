"""Floor of the neurosymbolic page (``neurosymbolic``): what it cannot avoid, as bare tensor work.

For one typed problem the page must (1) read the few-shot prompt's last position at every layer
(the per-layer read-out table), (2) run each layer's linear encoder and decode the VSA vector
(operation scores, operand digits by unbinding, the slots' margins), (3) apply the gate, (4) give
the model's greedy answer without and with the merge and (5) the answer's cross-entropy without
and with it. Done the cheapest exact way on the plain HF model:

- ONE forward of the prompt followed by the exact answer's tokens (its last token is never read),
  keeping every block's output at the prompt's last position and the KV cache; the final norm +
  ``W_U`` only at the answer positions: the baseline CE and the teacher-forced argmax, which is the
  greedy answer as long as it follows the exact answer (causal attention: position ``p0 + j`` sees
  only tokens the greedy run has too); where the greedy token departs from it, the cache is cut
  there and the remaining greedy steps run one cached token each (logits of that token only);
- the 18 encoders as one batched product, one FFT pair unbinding every operand digit slot of every
  layer (the atoms' spectra are codebook constants, computed outside the timing), the digit and
  operation similarities with their top-2, the range gate's distances;
- only when the gate lets the system act: the merged run, as the suffix from the prompt's last
  position on the cached prefix with the merge written into the merge layer's output (and its own
  cached greedy steps where it departs from the exact answer). When the system abstains the merge
  writes nothing and the merged answer and CE are the baseline's.

The check compares what the floor computed with the probe's own result before timing: every
layer's decoded operation, operands, top score and confidence, the gate's verdict, both answers
and both CEs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lenslab.models import ModelSession
from lenslab.probes.neurosymbolic.probe import checked_problem, load_artefact
from lenslab.probes.neurosymbolic.readout import answer_tokens
from lenslab.probes.neurosymbolic.tasks import default_shots, few_shot_prompt, solve
from lenslab.probes.neurosymbolic.vsa import inverse


@dataclass
class FloorOutput:
    """What the floor computed (compared with the probe's result by the check)."""

    operations: list[int]  # per layer: the decoded operation's index
    first: list[int]
    second: list[int]
    top_score: Tensor  # [layer]
    confidence: Tensor  # [layer]
    fired: bool
    baseline: list[int]  # greedy answer tokens
    merged: list[int]
    baseline_ce: float
    merged_ce: float


def neurosymbolic_floor(
    session: ModelSession, hf: torch.nn.Module, prompt: str, config: Any
) -> tuple[str, Callable[[], FloorOutput], Callable[[Any], None]]:
    """(kind, run, check) of the neurosymbolic page's floor for the problem typed in ``prompt``."""
    artefact = load_artefact(session)
    problem = checked_problem(prompt, artefact)
    shots = default_shots(
        problem.operation, artefact.config.bound, artefact.config.shots, artefact.config.seed
    )
    prompt_ids = session.tokenize(few_shot_prompt(problem, shots))[0].tolist()
    answer_ids = answer_tokens(session, problem.answer)
    p0, n_answer = len(prompt_ids) - 1, len(answer_ids)
    max_steps = artefact.codebook.n_digits + 2
    readout_layer = artefact.chosen_layer if config.layer == -1 else config.layer
    merge_layer, weight = artefact.merge_layer, config.merge_weight
    gate = artefact.gate(readout_layer) if config.calibrated_gate else -math.inf
    body, w_u, device = hf.model, hf.lm_head.weight, hf.lm_head.weight.device
    layers = range(session.n_layers)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    texts: dict[int, bool] = {}

    def stops(token: int) -> bool:
        """The probe's stopping rule: the greedy answer ends at the first token that is not digits."""
        if token not in texts:
            texts[token] = not session.tokenizer.decode([token]).strip().isdigit()
        return texts[token]

    # constants of the fitted artefact (data, outside the timing)
    book = artefact.codebook
    enc = [artefact.encoders[layer] for layer in layers]
    enc_weight = torch.stack([e.weight for e in enc]).float()  # [L, d, dim]
    enc_in = torch.stack([e.input_mean for e in enc]).float()  # [L, d]
    enc_out = torch.stack([e.output_mean for e in enc]).float()  # [L, dim]
    radius = torch.tensor([math.inf if e.input_radius is None else 1.5 * e.input_radius for e in enc])
    # the spectra unbinding role r and digit position i in one product (codebook constants)
    keys = (
        torch.fft.rfft(inverse(book.roles), dim=-1)[:, None]
        * torch.fft.rfft(inverse(book.positions), dim=-1)[None]
    )
    digits_t, ops_t = book.digit_atoms.T.contiguous(), book.operation_atoms.T.contiguous()
    scale = 10 ** torch.arange(book.n_digits)
    tokens = torch.tensor([prompt_ids + answer_ids[:-1]], device=device)
    targets = torch.tensor(answer_ids, device=device)

    def decode(hidden: Tensor) -> Tensor:
        """Unembedding (+ the soft-cap where the model has one) of a few rows of the body's output
        (HF's ``last_hidden_state`` is already through the final norm)."""
        logits = (hidden @ w_u.T).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    def cut(cache: Any, length: int) -> None:
        """Keep the cache's first ``length`` positions (sliding-window layers crop by a count)."""
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)

    def continue_greedy(cache: Any, argmax: list[int], hook: Callable[[int], Any] | None) -> list[int]:
        """The greedy answer given the teacher-forced argmax at each answer position and the cache."""
        generated: list[int] = []
        for j, token in enumerate(argmax):
            generated.append(token)
            if stops(token) or len(generated) == max_steps:
                return generated
            if token != answer_ids[j]:
                break
        else:
            return generated
        cut(cache, p0 + len(generated))  # the states of prompt + the agreed answer tokens
        while True:
            handle = hook(p0 + len(generated)) if hook is not None else None
            try:
                out = body(
                    torch.tensor([generated[-1:]], device=device), past_key_values=cache, use_cache=True
                )
            finally:
                if handle is not None:
                    handle.remove()
            token = int(decode(out.last_hidden_state[0, -1:]).argmax(-1))
            generated.append(token)
            if stops(token) or len(generated) == max_steps:
                return generated

    def run() -> FloorOutput:
        with torch.inference_mode():
            box: list[Tensor] = []
            handles = [
                layer.register_forward_hook(
                    lambda _m, _a, out: box.append((out[0] if isinstance(out, tuple) else out)[0, p0])
                )
                for layer in body.layers
            ]
            try:
                out = body(tokens, use_cache=True)
            finally:
                for handle in handles:
                    handle.remove()
            logprobs = decode(out.last_hidden_state[0, p0:]).log_softmax(-1)
            baseline_ce = float(-logprobs.gather(-1, targets[:, None]).mean())
            argmax = logprobs.argmax(-1).tolist()
            # read-out of every layer: encoders, range gate, unbinding, clean-up
            states = torch.stack(box).float()  # [L, d]
            centred = states - enc_in
            vectors = torch.bmm(centred[:, None], enc_weight)[:, 0] + enc_out  # [L, dim]
            inside = centred.norm(dim=-1) <= radius
            scores = vectors @ ops_t
            slots = torch.fft.irfft(torch.fft.rfft(vectors)[:, None, None] * keys, n=book.dim)
            top2 = (slots @ digits_t).topk(2, -1)  # [L, 2, n_digits, 2]
            values = (top2.indices[..., 0] * scale).sum(-1)  # [L, 2]
            op_top2 = scores.topk(2, -1).values
            margins = torch.cat(
                [
                    (op_top2[:, 0] - op_top2[:, 1])[:, None],
                    (top2.values[..., 0] - top2.values[..., 1]).flatten(1),
                ],
                1,
            )
            confidence = margins.min(-1).values
            operations = scores.argmax(-1).tolist()
            first, second = values[:, 0].tolist(), values[:, 1].tolist()
            r = readout_layer
            try:
                answer: int | None = solve(book.operations[operations[r]], first[r], second[r])
            except ValueError:
                answer = None
            if answer is not None and answer > book.max_value:
                answer = None
            fired = bool(
                inside[r]
                and op_top2[r, 0] >= config.threshold
                and answer is not None
                and confidence[r] >= gate
            )
            readout = (operations, first, second, op_top2[:, 0], confidence)
            if not fired:  # the system abstains: the merge writes nothing
                baseline = continue_greedy(out.past_key_values, argmax, None)
                return FloorOutput(*readout, False, baseline, baseline, baseline_ce, baseline_ce)
            assert answer is not None
            merge = artefact.decoder(book.answer_step_vectors(answer)).float()  # [steps, d]
            cache = out.past_key_values
            baseline = continue_greedy(cache, argmax, None)  # crops only past p0
            cut(cache, p0)

            def merge_hook(start: int) -> Any:
                def hook(_m: object, _a: object, output: Any) -> Any:
                    hidden = output[0] if isinstance(output, tuple) else output
                    rows = range(max(start, p0), min(start + hidden.shape[1], p0 + len(merge)))
                    hidden = hidden.clone()
                    for pos in rows:
                        hidden[0, pos - start] = (1 - weight) * hidden[0, pos - start] + weight * merge[
                            pos - p0
                        ]
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                return body.layers[merge_layer].register_forward_hook(hook)

            handle = merge_hook(p0)
            try:
                merged_out = body(tokens[:, p0:], past_key_values=cache, use_cache=True)
            finally:
                handle.remove()
            merged_logprobs = decode(merged_out.last_hidden_state[0]).log_softmax(-1)
            merged_ce = float(-merged_logprobs.gather(-1, targets[:, None]).mean())
            merged = continue_greedy(
                merged_out.past_key_values, merged_logprobs.argmax(-1).tolist(), merge_hook
            )
            return FloorOutput(*readout, True, baseline, merged, baseline_ce, merged_ce)

    def check(result: Any) -> None:
        """The probe's per-layer read-out, gate, answers and CEs equal the floor's."""
        ours = run()
        names = list(book.operations)
        assert [names[i] for i in ours.operations] == result.layer_operation, "decoded operations differ"
        assert ours.first == result.layer_first.tolist(), "decoded first operands differ"
        assert ours.second == result.layer_second.tolist(), "decoded second operands differ"
        for name, a, b in (
            ("top scores", ours.top_score, result.layer_top_score),
            ("confidences", ours.confidence, result.layer_confidence),
        ):
            error = float((a - torch.as_tensor(b)).abs().max())
            assert error < 1e-3, f"{name} differ by {error:.2e}"
        assert ours.fired == result.fired, "the gate's verdict differs"
        tokenizer = session.tokenizer
        assert tokenizer.decode(ours.baseline) == result.baseline_answer, "baseline answers differ"
        assert tokenizer.decode(ours.merged) == result.merged_answer, "merged answers differ"
        for name, a, b in (
            ("baseline CE", ours.baseline_ce, result.baseline_answer_ce),
            ("merged CE", ours.merged_ce, result.merged_answer_ce),
        ):
            assert abs(a - b) < 1e-3 * max(1.0, abs(b)), f"{name} differ: {a} vs {b}"
        print(
            f"neurosymbolic floor: {session.n_layers} layers' read-out, gate "
            f"({'acts' if ours.fired else 'abstains'}), answers {result.baseline_answer!r} / "
            f"{result.merged_answer!r} and CEs equal the probe's"
        )

    kind = (
        f"1 forward ({len(prompt_ids) + n_answer - 1} tok) + {session.n_layers} read-outs + cached greedy "
        "(+ merged suffix if it acts)"
    )
    return kind, run, check
