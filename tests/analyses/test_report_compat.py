"""Reports saved by an earlier lenslab (before the probe families became subpackages) still load.

The fixture was written by the last release with flat probe modules, on the tiny random Gemma,
for every probe that runs without trained artefacts. Loading must rebuild each result as its
current class, bit-exact, and render its figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenslab.analyses.report import Report
from lenslab.probes import result_class

SAVED = Path(__file__).parent / "data" / "report_saved_before_subpackages"


def test_old_report_loads_as_current_result_classes(tmp_path):
    report = Report.load(SAVED)
    assert [r.probe for r in report.results] == [
        "logit_lens",
        "mlp_units",
        "jacobian",
        "future_lens",
        "shared_neurons",
    ]
    for result in report.results:
        assert type(result) is result_class(result.probe)
        assert result.figures(), f"{result.probe} renders no figure"
    with np.load(SAVED / "arrays.npz", allow_pickle=False) as stored:
        saved = dict(stored)
    again = Report(report.results, report.meta).save(tmp_path / "again")
    with np.load(again / "arrays.npz", allow_pickle=False) as stored:
        resaved = dict(stored)
    assert saved.keys() <= resaved.keys()
    # fields added since then come back at their empty defaults: loading invents no data
    added = resaved.keys() - saved.keys()
    assert all(resaved[key].size == 0 for key in added), {k: resaved[k].shape for k in added}
    for key, value in saved.items():
        np.testing.assert_array_equal(resaved[key], value, err_msg=key)
