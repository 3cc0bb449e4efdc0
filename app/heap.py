"""Keep the garbage collector's full passes off the loaded model, so they cost milliseconds.

Streamlit runs a full garbage collection after every script run (``runner.postScriptGC``). With a
model and its libraries loaded, the server tracks about 560k container objects (Gemma 3 270M on
transformers + torch + plotly), and each full pass walks all of them: about 0.3 s holding the GIL
on a 2-core machine. Every rerun paid it, and it held back whatever came next: the figures of a run
that had just finished reached the browser 0.3 s late, and a Run clicked right after typing waited
for the typing's rerun to finish collecting.

Those objects live as long as the server, so they are moved out of the collector's sight
(:func:`gc.freeze`) once a model is loaded; a full pass then looks only at what page runs create.
A model dropped from the server's cache is made collectable again: :func:`released` unfreezes
everything, and the next :func:`settle` (on the next rerun, when the cache no longer holds it)
collects it and freezes what is left.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

_lock = threading.Lock()
_unsettled = False  # a model was released since the last settle: its objects await a collection


def settle() -> None:
    """Collect what is garbage now, then freeze every surviving object (the loaded models)."""
    global _unsettled
    with _lock:
        gc.collect()
        gc.freeze()
        _unsettled = False


def released(_value: Any = None) -> None:
    """A cached model was dropped: unfreeze, so that the next :func:`settle` can collect it."""
    global _unsettled
    with _lock:
        gc.unfreeze()
        _unsettled = True


def settle_if_released() -> None:
    """Settle once after a release (cheap no-op otherwise): called on every rerun."""
    if _unsettled:
        settle()
