"""The state inspector: URL round trip, registry, every lens renders for one state."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lenslab.probes.inspector import StateRef, inspect_state, state_views


@given(
    prompt=st.text(min_size=1, max_size=200),
    layer=st.integers(-50, 50),
    position=st.integers(-1000, 1000),
)
def test_query_string_round_trip(prompt, layer, position):
    ref = StateRef(prompt, layer, position)
    assert StateRef.from_query(ref.to_query()) == ref


def test_query_without_state_and_garbled():
    assert StateRef.from_query({}) is None
    with pytest.raises(ValueError, match="integers"):
        StateRef.from_query({"prompt": "x", "layer": "two"})


def test_resolve_validates(tiny_gemma):
    assert StateRef("abc", -1, -1).resolve(tiny_gemma) == StateRef("abc", 1, 3)
    with pytest.raises(ValueError, match="out of range"):
        StateRef("abc", 5).resolve(tiny_gemma)
    with pytest.raises(ValueError, match="position 9 out of range"):
        StateRef("abc", 0, 9).resolve(tiny_gemma)


def test_logit_lens_is_a_lens_and_cells_link_to_states(tiny_gemma):
    from lenslab.probes import LogitLens, LogitLensConfig

    assert "logit_lens" in [v.name for v in state_views()]
    res = LogitLens().run(tiny_gemma, "hello", LogitLensConfig())
    fig = res.figures()["grid"]
    x_label, y_label = fig.data[0].x[3], fig.data[0].y[1]
    assert res.state_at("grid", {"x": x_label, "y": y_label}) == (1, 3)
    # Streamlit returns no selection for heatmaps; the clickable points carry every cell's labels
    heatmap, cells = fig.data
    assert heatmap.hoverinfo == "skip" and fig.layout.clickmode == "event+select"
    picked = {res.state_at("grid", {"x": x, "y": y}) for x, y in zip(cells.x, cells.y, strict=True)}
    assert picked == {(layer, pos) for layer in range(len(heatmap.y)) for pos in range(len(heatmap.x))}
    assert res.state_at("final_token", {"x": 1, "y": 0.5}) is None


@pytest.mark.slow
def test_every_lens_answers_for_one_state(embedded_session):
    outcomes = inspect_state(embedded_session, StateRef("The capital of France is", 6, -1))
    assert [o.view for o in outcomes] == [v.name for v in state_views()]
    for outcome in outcomes:
        assert (outcome.result is None) != (outcome.error is None)
        if outcome.result is not None:
            assert outcome.result.figures()
    assert embedded_session.active_hook_count() == 0


@pytest.mark.slow
def test_inspector_page_renders_every_lens(lenslab_home):
    from streamlit.testing.v1 import AppTest

    script = (
        "from lenslab.app import state\nfrom lenslab.app.views import inspector as page\n"
        "state.sidebar()\npage.render()\n"
    )
    at = AppTest.from_string(script, default_timeout=600)
    at.query_params.update(StateRef("The capital of France is", 4, -1).to_query())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # two columns: AppTest lists column 0's lenses first, so compare as sets
    assert sorted(s.value for s in at.subheader) == sorted(v.title for v in state_views())
    assert any("layer 4, position 5" in m.value for m in at.markdown)


@pytest.mark.slow
def test_inspector_without_a_state_waits_for_the_user(lenslab_home):
    """Opened from the sidebar (no state in the URL) it shows the form and runs nothing yet."""
    from streamlit.testing.v1 import AppTest

    script = (
        "from lenslab.app import state\nfrom lenslab.app.views import inspector as page\n"
        "state.sidebar()\npage.render()\n"
    )
    at = AppTest.from_string(script, default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.subheader and any("press Inspect" in i.value for i in at.info)
    at.button[0].click().run()  # the form's Inspect button
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(s.value for s in at.subheader) == sorted(v.title for v in state_views())
