"""Every registered probe's result survives a report save/load bit-exactly (and renders to HTML)."""

import dataclasses

import numpy as np
import pytest
from fast_configs import fast_config

from lenslab.analyses.report import Report
from lenslab.probes import get_probe, registered_probes

PROMPT = "The Eiffel Tower is in <b>Paris</b> & 48 + 7 ="


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            _equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return a == b and type(a) is type(b)


def _result(name, tiny, embedded):
    probe = get_probe(name)
    config = fast_config(name)
    try:
        return probe.run(tiny, PROMPT, config)
    except (ValueError, FileNotFoundError):  # needs artefacts or layers only the real model has
        return probe.run(embedded, PROMPT, config)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registered_probes()))
def test_report_round_trip_bit_exact(name, tiny_gemma, embedded_session, tmp_path):
    result = _result(name, tiny_gemma, embedded_session)
    path = Report([result], {"title": name}).save(tmp_path / name)
    back = Report.load(path).results[0]
    assert _equal(result, back), f"{name}: reloaded result differs"
    html = (path / "report.html").read_text()
    assert "<b>Paris</b>" not in html
