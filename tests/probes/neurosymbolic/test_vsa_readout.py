"""The VSA lens reads a few-shot problem's operation out of an arbitrary state (embedded model)."""

import pytest

from lenslab.probes.neurosymbolic.probe import load_artefact
from lenslab.probes.neurosymbolic.tasks import default_shots, few_shot_prompt, parse_problem
from lenslab.probes.neurosymbolic.vsa_readout import VSAReadout, VSAReadoutConfig

pytestmark = pytest.mark.slow

PROBLEMS = [
    "What is 16 | 3?",
    "What is 45 lcm 42?",
    "What is 38 // 35?",
    "What is 43 - 21?",
    "What is 19 * 6?",
]


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


@pytest.mark.parametrize("text", ["The capital of France is", "def fibonacci(n):", "She bought 3 apples and"])
def test_non_arithmetic_states_do_not_fire(embedded_session, text):
    """The encoder answers for any state; outside its training states the system must not act.

    Without the range gate these states gave operation scores of 9-16 (a clean problem has ≈ 1)
    and fired at the 0.8 threshold.
    """
    artefact = load_artefact(embedded_session)
    res = VSAReadout().run(embedded_session, text, VSAReadoutConfig(layer=artefact.chosen_layer))
    assert not res.in_distribution and not res.fired and res.answer == -1
    assert "not an arithmetic-problem state" in str(res.summary()["system answer"])


def test_problem_states_stay_in_range(embedded_session):
    """Formatted problems (as in training) are inside the range, so the gate does not silence them."""
    artefact = load_artefact(embedded_session)
    config = VSAReadoutConfig(layer=artefact.chosen_layer)
    inside = []
    for question in PROBLEMS:
        problem = parse_problem(question)
        shots = default_shots(
            problem.operation, artefact.config.bound, artefact.config.shots, artefact.config.seed
        )
        inside.append(
            VSAReadout().run(embedded_session, few_shot_prompt(problem, shots), config).in_distribution
        )
    assert sum(inside) >= len(inside) - 1, inside
