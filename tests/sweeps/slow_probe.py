"""A test-only probe: the logit lens after a pause, so a worker can be killed in the middle of a shard.

Sweeps import it on every worker through ``SweepConfig.imports`` (``imports=("slow_probe",)``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from lenslab.probes.base import Probe, register
from lenslab.probes.logit_lens import LogitLens, LogitLensConfig, LogitLensResult
from lenslab.sweeps.metrics import extract, register_extractor

PAUSE_SECONDS = 0.4


@dataclass(frozen=True)
class SlowLensResult(LogitLensResult):
    probe = "slow_lens"


@register
class SlowLens(Probe[LogitLensConfig, SlowLensResult]):
    name = "slow_lens"
    title = "Slow logit lens (tests)"
    config_cls = LogitLensConfig
    result_cls = SlowLensResult

    def run(self, session, prompt, config, progress=None):
        time.sleep(PAUSE_SECONDS)
        result = LogitLens().run(session, prompt, config)
        return SlowLensResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(result)})


def _as_logit_lens(result, n_layers):
    plain = LogitLensResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(result)})
    return extract(plain, n_layers)


register_extractor("slow_lens", _as_logit_lens)
