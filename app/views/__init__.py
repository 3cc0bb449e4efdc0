"""App pages. Each module defines ``TITLE``, ``ICON``, ``ORDER``, ``URL`` and ``render()``.

The pages are listed explicitly in :data:`PAGES` (a new probe page is one module here and one
entry there). The folder is ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder
beside the main script as its legacy multipage app and, on a fresh server, answers the first
deep link (``/reports``) from it instead of from ``st.navigation`` in ``main.py``.
"""

from __future__ import annotations

from types import ModuleType

from lenslab.app.views import (
    attention,
    dla,
    future_lens,
    inspector,
    jacobian,
    jacobian_lens,
    logit_lens,
    neurosymbolic,
    patching,
    replications,
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
    attention,
    dla,
    patching,
    jacobian_lens,
    sweeps,
    replications,
)

DEFAULT_URL = "overview"
"""The landing page (``views/home.py``, served at ``/``): one line per page. Being the default, it
leaves every probe page its own address."""


def discover() -> list[ModuleType]:
    """Every page module, sorted by ``ORDER`` then title."""
    return sorted(PAGES, key=lambda m: (getattr(m, "ORDER", 50), m.TITLE))
