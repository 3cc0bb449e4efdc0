"""Integration on the embedded Gemma 3 270M: the encoder reads the operation from hidden states."""

from __future__ import annotations

import pytest

from lenslab.probes.neurosymbolic.artefact import TrainConfig
from lenslab.probes.neurosymbolic.probe import NeurosymbolicConfig, NeurosymbolicProbe, load_artefact
from lenslab.probes.neurosymbolic.readout import answer_tokens
from lenslab.probes.neurosymbolic.tasks import ALL_OPERATIONS

pytestmark = pytest.mark.slow

# Small enough for CI (~120 sequences of ~25 tokens); the default fit is larger.
CI = TrainConfig(n_train_per_operation=8, n_test_per_operation=3, shots=1, batch_size=32)


@pytest.fixture(scope="module")
def fitted(embedded_session, tmp_path_factory):
    from lenslab.probes.neurosymbolic.probe import prepare_default_artefacts

    home = tmp_path_factory.mktemp("ns_embedded_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LENSLAB_HOME", str(home))
        yield prepare_default_artefacts(embedded_session, train_config=CI)


def test_gemma_writes_one_token_per_digit(embedded_session):
    ids = answer_tokens(embedded_session, 9801)
    assert embedded_session.decode_each(ids) == ["9", "8", "0", "1", "\n"]


def test_encoder_reads_the_operation_well_above_chance(embedded_session, fitted):
    fitted = load_artefact(embedded_session, CI, fitted)
    curve = fitted.metrics["layer_curve"]
    chance = 1 / len(ALL_OPERATIONS)
    best = fitted.chosen_layer
    # held-out operand pairs; chance is 0.1 for ten operations
    assert curve["operation_accuracy"][best] >= 0.6 > 3 * chance
    assert max(curve["operation_accuracy"]) >= 0.8
    # cosine to the target problem vector is positive and below 1 everywhere
    assert all(0.0 < c < 1.0 for c in curve["cosine"])
    rows = {row["task"]: row for row in fitted.metrics["evaluation"]["rows"]}
    assert rows["all"]["n"] == 3 * len(ALL_OPERATIONS)
    for row in rows.values():
        assert row["baseline_ce"] > 0 and row["merged_ce"] > 0 and 0 <= row["baseline_accuracy"] <= 1


def test_typed_problem_on_the_embedded_model(embedded_session, fitted):
    result = NeurosymbolicProbe(train_config=CI, folder=fitted).run(
        embedded_session, "What is 48 * 7?", NeurosymbolicConfig(threshold=-10.0)
    )
    assert result.exact_answer == 336
    assert result.fired  # threshold -10: always acts
    assert result.baseline_answer.strip() and result.merged_answer.strip()
    assert result.baseline_answer_ce > 0
    assert embedded_session.active_hook_count() == 0
