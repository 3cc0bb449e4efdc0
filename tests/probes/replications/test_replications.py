"""The replications probe on the tiny model: measured claims carry intervals, missing artefacts say why."""

import math

import pytest

from lenslab.cli import main, parser
from lenslab.probes import get_probe
from lenslab.probes.replications import ReplicationsConfig
from lenslab.probes.replications.claims import NOT_MEASURED, verdict


def test_quick_run_on_tiny_model(tiny_gemma):
    config = ReplicationsConfig(families=("sae", "shared_neurons", "neurosymbolic"))
    result = get_probe("replications").run(tiny_gemma, "", config)
    assert [c.key for c in result.claims] == [o.key for o in result.outcomes]
    assert {c.family for c in result.claims} == {"sae", "shared_neurons", "neurosymbolic"}
    for claim, outcome in zip(result.claims, result.outcomes, strict=True):
        if claim.family in ("sae", "neurosymbolic"):  # nothing is prepared for the tiny model
            assert outcome.verdict == NOT_MEASURED and outcome.note.startswith("not measured:")
            assert "tiny" in outcome.note  # names the model it looked for
            continue
        assert math.isfinite(outcome.value) and outcome.low <= outcome.value <= outcome.high, claim.key
        assert outcome.verdict == verdict(outcome.low, outcome.high, claim.threshold, claim.direction)
    assert "lenslab replicate --quick --families sae,shared_neurons,neurosymbolic" in result.command
    assert set(result.figures()) == {"table", "forest"}


def test_jacobian_claims_hold_on_tiny_model_in_float64(tiny_gemma):
    result = get_probe("replications").run(tiny_gemma, "", ReplicationsConfig(families=("jacobian",)))
    reconstruction, logits = result.outcomes
    assert reconstruction.n == 3 and reconstruction.high < 1e-13  # exact identity in float64
    assert logits.high < 1e-12


def test_bad_family_is_refused():
    with pytest.raises(ValueError, match="families"):
        ReplicationsConfig(families=("nope",)).check_numbers()


def test_cli_parses_replicate():
    args = parser().parse_args(["replicate", "--full", "--out", "x", "--families", "sae"])
    assert args.full and not args.quick and args.out == "x" and args.families == "sae"
    assert parser().parse_args(["replicate"]).func.__name__ == "cmd_replicate"
    with pytest.raises(SystemExit):
        parser().parse_args(["replicate", "--quick", "--full"])


def test_cli_bad_family_exits_2(capsys):
    assert main(["replicate", "--families", "nope", "--out", "x"]) == 2
    assert "families" in capsys.readouterr().err
