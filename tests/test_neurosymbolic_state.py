"""The VSA lens reads a few-shot problem's operation out of an arbitrary state (embedded model)."""

import pytest

from lenslab.probes.neurosymbolic import load_artefact
from lenslab.probes.neurosymbolic_state import VSAReadout, VSAReadoutConfig
from lenslab.probes.neurosymbolic_tasks import default_shots, few_shot_prompt, parse_problem

pytestmark = pytest.mark.slow


def test_reads_the_operation_of_a_formatted_problem(embedded_session):
    artefact = load_artefact(embedded_session)
    problem = parse_problem("What is 48 + 7?")
    shots = default_shots(
        problem.operation, artefact.config.bound, artefact.config.shots, artefact.config.seed
    )
    text = few_shot_prompt(problem, shots)
    res = VSAReadout().run(embedded_session, text, VSAReadoutConfig(layer=artefact.chosen_layer))
    assert res.operation == problem.operation
    assert res.operation_scores.shape == (len(res.operation_names),)
    assert embedded_session.active_hook_count() == 0


def test_bad_layer_refused(embedded_session):
    with pytest.raises(ValueError, match="out of range"):
        VSAReadout().run(embedded_session, "1 + 2", VSAReadoutConfig(layer=40))
