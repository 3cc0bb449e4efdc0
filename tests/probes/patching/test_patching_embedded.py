"""Activation patching on Gemma 3 270M: Eiffel Tower vs Colosseum, identities and batching."""

import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes.patching import Patch, metric, patched_hidden, resolve_pair, source_activations
from lenslab.probes.patching.pair import final_hidden

pytestmark = pytest.mark.slow
CLEAN, CORRUPTED = "The Eiffel Tower is in", "The Colosseum is in"


@pytest.fixture(scope="module")
def pair(embedded_session):
    return resolve_pair(embedded_session, CLEAN, CORRUPTED, " Paris", " Rome")


def test_pair_tokens_and_answers(embedded_session, pair):
    assert pair.seq_len == 6  # <bos> The ␣Eiffel ␣Tower ␣is ␣in / <bos> The ␣Col osseum ␣is ␣in
    assert pair.differing == [2, 3]
    assert embedded_session.decode_each([pair.clean_answer, pair.corrupted_answer]) == [" Paris", " Rome"]
    hidden = torch.cat([final_hidden(embedded_session, t)[:, -1] for t in (pair.clean, pair.corrupted)])
    clean, corrupted = metric(embedded_session, hidden, pair, "logit_diff").tolist()
    assert clean > 0 > corrupted  # the model knows both landmarks


def test_identities_and_batching(embedded_session, pair):
    s = embedded_session
    rows = [
        (Patch(hooknames.resid_pre(0)),),  # all embeddings: the clean run
        (),  # nothing: the corrupted run
        (Patch(hooknames.resid(5), 3),),
        (Patch(hooknames.resid(12), 5),),
        (Patch(hooknames.attn_heads(12), None, 2),),
    ]
    source = source_activations(s, pair.clean, rows)
    batched = patched_hidden(s, pair.corrupted, source, rows, pair.position, batch_size=len(rows))
    single = patched_hidden(s, pair.corrupted, source, rows, pair.position, batch_size=1)
    clean = final_hidden(s, pair.clean)[0, -1]
    corrupted = final_hidden(s, pair.corrupted)[0, -1]
    scale = clean.abs().max()
    assert (batched[0] - clean).abs().max() < 1e-4 * scale
    assert (batched[1] - corrupted).abs().max() < 1e-4 * scale
    assert (batched - single).abs().max() < 1e-4 * scale
    run = s.run(pair.clean)
    with torch.inference_mode():
        logits = s.final_logits(batched[0])
    assert (logits - run.logits[0, -1]).abs().max() < 1e-3
    values = metric(s, batched, pair, "logit_diff")
    reference = metric(s, torch.stack([clean, corrupted]), pair, "logit_diff")
    assert (values[:2] - reference).abs().max() < 1e-3
    # the subject token's state after block 5 and the last position after block 12 flip the answer
    assert values[2] > 0 and values[3] > 0
