"""App pages. Each module defines ``TITLE``, ``ICON``, ``ORDER`` and ``render()``.

Pages are discovered from this package, so a new probe page is one new module here. The folder
is ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the main script as its
legacy multipage app and, on a fresh server, answers the first deep link (``/reports``) from it
instead of from ``st.navigation`` in ``main.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

DEFAULT_URL = "logit-lens"
"""The landing page: type a prompt, see every layer's guess (the inspector needs a state first)."""


def discover() -> list[ModuleType]:
    """Every page module, sorted by ``ORDER`` then title."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.TITLE))
