"""The linear method's display: where the maps were fitted is readable text, unmapped cells say so.

A summary value as long as "positions 3–15 (3 of 6 shown)" does not fit ``st.metric``'s large font
(it ends in an ellipsis at 1920 px): the page shows it as a wrapped line under its label. Grid cells
at positions without a fitted map hold no prediction; they read "no map", are greyed, and their
hover and a note over the grid say that no map was fitted for that position.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lenslab.probes.base import Result
from lenslab.probes.future_lens.probe import NO_MAP, NO_MAP_NOTE


class Summary(Result):
    """A result that is only a summary (no figures), to see how the page lays one out."""

    probe = ""

    def __init__(self, summary):
        object.__setattr__(self, "_summary", summary)

    def summary(self):
        return self._summary

    def figures(self):
        return {}


def _page(result) -> None:
    from lenslab.app.components import show_result

    show_result(result, "fl")


def _result():
    import numpy as np

    from lenslab.probes.future_lens.probe import FutureLensConfig, FutureLensResult

    layers, positions, horizon, k = 2, 6, 2, 2
    return FutureLensResult(
        model_id="tiny",
        prompt="The cat sat on the",
        config=FutureLensConfig(method="linear", horizon=1),
        method="linear",
        tokens=["<bos>", "The", " cat", " sat", " on", " the"],
        layers=np.arange(layers),
        top_ids=np.zeros((layers, positions, horizon, k), dtype=np.int64),
        top_probs=np.full((layers, positions, horizon, k), 0.25),
        top_tokens=[[[["a", "b"]] * horizon for _ in range(positions)] for _ in range(layers)],
        actual_ids=np.ones((positions, horizon), dtype=np.int64),
        actual_tokens=[["x"] * horizon for _ in range(positions)],
        artefact="linear maps",
        fitted_positions=(3, 15),
    )


def test_fitted_positions_are_a_line_of_text_not_a_cut_metric():
    at = AppTest.from_function(_page, args=(_result(),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "linear maps fitted at" not in [m.label for m in at.metric]
    column = next(c for c in at.columns if c.caption and c.caption[0].value == "linear maps fitted at")
    assert column.markdown[0].value.replace("\\", "") == "positions 3–15 (3 of 6 shown)"
    for metric in at.metric:  # what is left in metrics fits them: no ellipsis
        assert len(metric.label) <= 28 and len(metric.value.replace("\\", "")) <= 12, metric


def test_unmapped_positions_are_labelled_in_the_grid():
    grid = _result().grid_figure()
    text = grid.data[0].text[:-1]  # the layer rows (the top row is the actual continuation)
    assert all((cell == NO_MAP) == (p < 3) for row in text for p, cell in enumerate(row)), text
    hover = list(grid.data[1].customdata)  # one invisible point per cell carries its hover
    per_row = len(_result().tokens)
    for i, cell in enumerate(hover[: 2 * per_row]):
        assert (NO_MAP_NOTE in cell) == (i % per_row < 3), (i, cell)
        if i % per_row < 3:
            assert "positions 3–15" in cell
    shapes = [s for s in grid.layout.shapes if s.fillcolor == "#e6e6e6"]
    assert [(s.x0, s.x1, s.y0, s.y1) for s in shapes] == [(-0.5, 2.5, -0.5, 1.5)]  # columns 0–2, layer rows
    notes = [a.text for a in grid.layout.annotations]
    assert any(NO_MAP_NOTE in note and "positions 3–15" in note for note in notes), notes


def test_a_grid_without_unmapped_positions_has_no_note():
    import dataclasses

    grid = dataclasses.replace(_result(), fitted_positions=None).grid_figure()
    assert not any(NO_MAP in str(cell) for row in grid.data[0].text for cell in row)
    assert not grid.layout.annotations and not [s for s in grid.layout.shapes if s.fillcolor == "#e6e6e6"]


def test_agreement_counts_only_mapped_positions_with_intervals():
    import dataclasses

    import numpy as np

    from lenslab.probes.stats import wilson

    every_cell_right = dataclasses.replace(_result(), actual_ids=np.zeros((6, 2), dtype=np.int64))
    fig = every_cell_right.agreement_figure()
    assert list(fig.data[0].y) == [100.0, 100.0]  # 3 of the 3 mapped positions, not 3 of 6
    assert "3 positions" in fig.layout.yaxis.title.text
    expected = wilson(3, 3)
    assert fig.data[0].error_y.arrayminus[0] == 100 * (expected.estimate - expected.low)
    both_layers = wilson(6, 6)  # the summary pools the 2 layers × 3 mapped positions
    shown = every_cell_right.summary()["agreement t+1"]
    assert shown == f"100% [{100 * both_layers.low:.0f}, 100]", shown


def test_numbers_stay_metrics_and_texts_read_alike():
    mixed = {"actual": 24.78, "largest head": "L12H2 +1.25", "largest component": "L17 mlp +6.53"}
    at = AppTest.from_function(_page, args=(Summary(mixed),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric] == ["actual"]  # the two texts: both wrapped, not one of each
    short = {"next token": "the", "final probability": 0.2773}
    at = AppTest.from_function(_page, args=(Summary(short),), default_timeout=60).run()
    assert [m.label for m in at.metric] == ["next token", "final probability"]


def test_a_sentence_gets_a_full_width_line():
    command = "lenslab replicate --quick --families jacobian,sae,neurosymbolic --model gemma-3-270m"
    at = AppTest.from_function(_page, args=(Summary({"holds": 3, "command": command}),), default_timeout=60)
    at.run()
    assert [m.label for m in at.metric] == ["holds"]
    lines = [m.value.replace("\\", "") for m in at.markdown]
    assert f"**command:** {command}" in lines, lines
