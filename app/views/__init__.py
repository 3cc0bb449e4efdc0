"""App pages. Each module defines ``TITLE``, ``ICON``, ``ORDER``, ``URL`` and ``render()``.

The pages are listed explicitly in :data:`PAGES` (a new probe page is one module here and one
entry there). The folder is ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder
beside the main script as its legacy multipage app and, on a fresh server, answers the first
deep link (``/reports``) from it instead of from ``st.navigation`` in ``main.py``.
"""

from __future__ import annotations

from types import ModuleType

from lenslab.app.views import (
    future_lens,
    inspector,
    jacobian,
    logit_lens,
    neurosymbolic,
    reports,
    sae_features,
    shared_neurons,
    sweeps,
)

PAGES: tuple[ModuleType, ...] = (
    inspector,
    logit_lens,
    future_lens,
    jacobian,
    sae_features,
    shared_neurons,
    neurosymbolic,
    reports,
    sweeps,
)

DEFAULT_URL = "logit-lens"
"""The landing page: type a prompt, see every layer's guess (the inspector needs a state first)."""


def discover() -> list[ModuleType]:
    """Every page module, sorted by ``ORDER`` then title."""
    return sorted(PAGES, key=lambda m: (getattr(m, "ORDER", 50), m.TITLE))
