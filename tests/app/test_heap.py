"""The server keeps full garbage collections off the loaded model, and still frees a dropped one."""

import gc
import weakref

import pytest

from lenslab.app import heap


class Cyclic:
    """Stands in for a loaded model: reachable only through a reference cycle once dropped."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _thawed():
    yield
    gc.unfreeze()  # leave the test process's heap as it found it


def test_settled_objects_are_out_of_a_full_collection_and_a_release_frees_them():
    model = Cyclic()
    alive = weakref.ref(model)
    heap.settle()
    assert gc.get_freeze_count() > 0
    del model
    gc.collect()
    assert alive() is not None, "a settled object must be out of the collector's sight"
    heap.released()
    heap.settle_if_released()
    assert alive() is None, "after a release the next settle collects the dropped model"
    assert gc.get_freeze_count() > 0, "and freezes what survives again"


def test_settle_if_released_does_nothing_without_a_release():
    heap.settle()
    frozen = gc.get_freeze_count()
    garbage = Cyclic()
    alive = weakref.ref(garbage)
    del garbage
    heap.settle_if_released()
    assert gc.get_freeze_count() == frozen
    assert alive() is not None, "no collection ran: it is left to the collector's own schedule"
    gc.collect()
    assert alive() is None


def test_the_app_loader_settles_after_loading_and_frees_a_model_its_cache_drops(monkeypatch):
    from lenslab.app import state

    monkeypatch.setattr(state.ModelSession, "load", lambda *a, **k: Cyclic())
    model = state._shared_session("stand-in", "cpu", "float32")
    alive = weakref.ref(model)
    assert gc.get_freeze_count() > 0, "loading settles the heap"
    del model
    state._shared_session.clear()  # the cache drops it, as when a third model is picked
    gc.collect()
    heap.settle_if_released()
    assert alive() is None, "the dropped model is collected on the next rerun"
