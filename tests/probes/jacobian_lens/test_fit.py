"""J-lens fitting: the fast estimator against brute-force autograd, merge, resume, known answers."""

import pytest
import torch

from lenslab.models import hooknames
from lenslab.models.session import StopForward
from lenslab.probes.jacobian_lens.artefacts import JacobianLens
from lenslab.probes.jacobian_lens.estimator import instance_jacobians, prompt_jacobians
from lenslab.probes.jacobian_lens.fit import FitSpec, FitState, fit_shard, merge
from lenslab.progress import Cancelled

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Lists are mutable sequences, typically used to store collections.",
    "ab",  # too short for one valid position: skipped
    "A dictionary maps hashable keys to arbitrary values in Python.",
    "Generators produce values lazily, one at a time, on demand here.",
]
SPEC = FitSpec(seq_len=12, skip_first=3, min_prompts=1, max_prompts=10, dim_batch=7)


def _final_of(session, tokens, layer):
    """h_final as a function of the layer-``layer`` residual stream (hook replaces it)."""

    def f(x):
        box = {}

        def replace(tensor, *, hook):
            return x

        def grab(tensor, *, hook):
            box["y"] = tensor
            raise StopForward

        last = hooknames.resid(session.n_layers - 1)
        hooks = [(hooknames.resid(layer), replace)] if layer < session.n_layers - 1 else []
        with session.hooks([*hooks, (last, grab)]) as model, torch.enable_grad():
            model.hf(input_ids=tokens)
        return box["y"] if layer < session.n_layers - 1 else x

    return f


def _base_resid(session, tokens, layer):
    x = session.capture(tokens, [hooknames.resid(layer)])[hooknames.resid(layer)]
    return torch.tensor(x.tolist(), dtype=x.dtype)  # a normal tensor (capture returns inference tensors)


def test_estimator_equals_brute_force_autograd(tiny_gemma):
    session = tiny_gemma
    tokens = session.tokenize(TEXTS[0])[:, :10]
    skip = 3
    jac, n_valid = prompt_jacobians(session, tokens, skip_first=skip, dim_batch=5)
    seq = tokens.shape[1]
    valid = list(range(skip, seq - 1))
    assert n_valid == len(valid)
    for layer in range(session.n_layers):
        x = _base_resid(session, tokens, layer)
        full = torch.autograd.functional.jacobian(_final_of(session, tokens, layer), x)[0, :, :, 0]
        # full[p', i, p, j] = ∂h_final[p', i] / ∂h_l[p, j]
        expected = torch.stack([sum(full[q, :, p, :] for q in valid if q >= p) for p in valid]).mean(0)
        torch.testing.assert_close(jac[layer].float(), expected, atol=1e-5, rtol=1e-4)


def test_last_layer_is_identity(tiny_gemma):
    tokens = tiny_gemma.tokenize(TEXTS[1])[:, :10]
    jac, _ = prompt_jacobians(tiny_gemma, tokens, skip_first=2, dim_batch=16)
    eye = torch.eye(tiny_gemma.d_model, dtype=torch.float64)
    torch.testing.assert_close(jac[-1], eye)
    assert not torch.allclose(jac[0], eye, atol=1e-3)  # an earlier layer is not trivially the identity


def test_instance_jacobians_match_brute_force(tiny_gemma):
    session = tiny_gemma
    tokens = session.tokenize(TEXTS[3])[:, :9]
    layer, position = 0, 5
    same, summed = instance_jacobians(session, tokens, layer, position, dim_batch=6)
    full = torch.autograd.functional.jacobian(
        _final_of(session, tokens, layer), _base_resid(session, tokens, layer)
    )[0, :, :, 0]
    torch.testing.assert_close(same.float(), full[position, :, position, :], atol=1e-5, rtol=1e-4)
    expected = sum(full[q, :, position, :] for q in range(position, tokens.shape[1]))
    torch.testing.assert_close(summed.float(), expected, atol=1e-5, rtol=1e-4)


def test_instance_jacobians_at_the_last_position_match_brute_force(tiny_gemma):
    """At the last position only the same-position rows run; both results are still the true ones."""
    session = tiny_gemma
    tokens = session.tokenize(TEXTS[3])[:, :9]
    layer, position = 0, tokens.shape[1] - 1
    same, summed = instance_jacobians(session, tokens, layer, position, dim_batch=7)
    full = torch.autograd.functional.jacobian(
        _final_of(session, tokens, layer), _base_resid(session, tokens, layer)
    )[0, :, :, 0]
    expected = full[position, :, position, :]
    assert not torch.allclose(expected, torch.eye(session.d_model), atol=1e-3)  # not trivially I
    torch.testing.assert_close(same.float(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(summed.float(), expected, atol=1e-5, rtol=1e-4)


def test_merge_of_shards_equals_fit_on_all(tiny_gemma):
    whole = fit_shard(tiny_gemma, [0, 1, 2, 3, 4], SPEC, texts=TEXTS)
    a = fit_shard(tiny_gemma, [0, 2, 3], SPEC, texts=TEXTS)
    b = fit_shard(tiny_gemma, [1, 4], SPEC, texts=TEXTS)
    merged = merge([a, b])
    assert whole.skipped == [2] and merged.n_prompts == whole.n_prompts == 4
    assert merged.n_positions == whole.n_positions
    torch.testing.assert_close(merged.mean(), whole.mean(), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="share documents"):
        merge([a, a])
    with pytest.raises(ValueError, match="seq_len"):
        merge([a, fit_shard(tiny_gemma, [1], FitSpec(seq_len=11, skip_first=3, dim_batch=7), texts=TEXTS)])


def test_resume_after_interruption_equals_uninterrupted(tiny_gemma, tmp_path):
    docs = [0, 1, 2, 3, 4]
    whole = fit_shard(tiny_gemma, docs, SPEC, texts=TEXTS)
    checkpoint = tmp_path / "state.pt"

    def interrupt(fraction, message=""):
        if message.startswith("prompt 3 "):
            raise Cancelled

    with pytest.raises(Cancelled):
        fit_shard(
            tiny_gemma, docs, SPEC, texts=TEXTS, checkpoint=checkpoint, checkpoint_every=1, progress=interrupt
        )
    saved = FitState.load(checkpoint)
    assert saved.n_prompts == 2 and saved.cursor == 3  # two fitted, the short one skipped
    resumed = fit_shard(tiny_gemma, docs, SPEC, texts=TEXTS, checkpoint=checkpoint, checkpoint_every=1)
    assert resumed.documents == whole.documents
    assert torch.equal(resumed.jacobian_sum, whole.jacobian_sum)
    assert resumed.rel_change[1:] == pytest.approx(whole.rel_change[1:], rel=1e-12)
    with pytest.raises(ValueError, match="fitted with"):
        fit_shard(tiny_gemma, docs, FitSpec(seq_len=11, skip_first=3), texts=TEXTS, checkpoint=checkpoint)


def test_stopping_rule_stops_at_max_prompts(tiny_gemma):
    spec = FitSpec(seq_len=12, skip_first=3, min_prompts=1, max_prompts=2, dim_batch=16)
    state = fit_shard(tiny_gemma, [0, 1, 3, 4], spec, texts=TEXTS, stop_when_converged=True)
    assert state.n_prompts == 2 and state.documents == [0, 1]


def test_artefact_refuses_another_model(tiny_gemma, tmp_path):
    from lenslab.models.tiny import tiny_session

    state = fit_shard(tiny_gemma, [0], SPEC, texts=TEXTS)
    path = JacobianLens.from_state(state).save(tmp_path / "lens.safetensors")
    back = JacobianLens.load(tiny_gemma, path)
    assert torch.equal(back.jacobians, state.mean().float())
    assert back.provenance["documents"] == [0] and back.provenance["skip_first"] == 3
    other = tiny_session("llama")
    with pytest.raises(ValueError, match="fitted on"):
        JacobianLens.load(other, path)


def test_long_documents_are_cut_before_tokenizing(tiny_gemma):
    from lenslab.probes.jacobian_lens.fit import document_tokens

    text = "word " * 5000  # far beyond the session's prompt-length limit
    tokens = document_tokens(tiny_gemma, text, 40)
    assert tokens.shape == (1, 40)
    assert torch.equal(tokens, tiny_gemma.tokenize(text[:400])[:, :40])
