"""Replications: each seed paper's key claim re-measured on the loaded model, with a verdict.

:mod:`.claims` holds the ``Claim`` / ``ClaimOutcome`` records and the one verdict rule; one
module per family turns that family's result into outcomes of its claims; :mod:`.probe` runs
them all as the ``replications`` probe (a normal report: table and forest plot).
"""

from lenslab.probes.replications.claims import Claim, ClaimOutcome, verdict
from lenslab.probes.replications.probe import Replications, ReplicationsConfig, ReplicationsResult

__all__ = ["Claim", "ClaimOutcome", "Replications", "ReplicationsConfig", "ReplicationsResult", "verdict"]
