"""Integration on the embedded Gemma 3 270M (offline): loading, logits, logit lens, threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from lenslab.models.loading import embedded_dir
from lenslab.probes import LogitLens, LogitLensConfig

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"


def test_bridge_logits_equal_hf(embedded_session):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    tokens = embedded_session.tokenize(PROMPT)
    with torch.no_grad():
        expected = hf(tokens.cpu()).logits
    got = embedded_session.run(PROMPT).logits.cpu()
    assert (got - expected).abs().max().item() < 1e-4
    top5 = embedded_session.decode_each(got[0, -1].topk(5).indices.tolist())
    assert " Paris" in top5


def test_facts(embedded_session):
    facts = embedded_session.describe()
    assert (facts["n_layers"], facts["d_model"], facts["d_vocab"]) == (18, 640, 262144)
    assert embedded_session.str_tokens("Hi")[0] == "<bos>"


def test_logit_lens_last_layer_is_next_token_distribution(embedded_session):
    res = LogitLens().run(embedded_session, PROMPT, LogitLensConfig(k=10))
    probs = embedded_session.run(PROMPT).logits[0].float().softmax(-1).cpu()
    top_values, top_ids = probs.topk(10, dim=-1)
    np.testing.assert_allclose(res.top_probs[-1], top_values.numpy(), rtol=1e-4, atol=1e-6)
    assert np.array_equal(res.top_ids[-1], top_ids.numpy())
    assert (res.final_rank[-1] == 0).all()


def test_eight_threads_match_serial_and_leave_no_hooks(embedded_session):
    prompts = [f"{PROMPT} {word}" for word in ["a", "b", "c", "d"]] * 2
    probe = LogitLens()
    config = LogitLensConfig(k=3, layers=(0, 8, 17))
    serial = [probe.run(embedded_session, p, config) for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda p: probe.run(embedded_session, p, config), prompts))
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(a.top_ids, b.top_ids) and np.array_equal(a.top_probs, b.top_probs)
    assert embedded_session.active_hook_count() == 0


def test_load_local_folder():
    from lenslab.models import ModelSession

    session = ModelSession.load(str(embedded_dir("gemma-3-270m")))
    assert session.n_layers == 18 and session.model_id.endswith("gemma-3-270m")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_resident_model_and_activations():
    from lenslab.models import ModelSession

    session = ModelSession.load(device="cuda", dtype="bfloat16")
    run = session.run(PROMPT, [session.resid_name(3)])
    assert run.logits.is_cuda and run.activations[session.resid_name(3)].is_cuda
    res = LogitLens().run(session, PROMPT, LogitLensConfig())
    assert isinstance(res.top_probs, np.ndarray) and res.top_probs.dtype == np.float32
