"""App pages. Each module defines ``TITLE``, ``ICON``, ``ORDER`` and ``render()``.

Pages are discovered from this package, so a new probe page is one new module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> list[ModuleType]:
    """Every page module, sorted by ``ORDER`` then title."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.TITLE))
