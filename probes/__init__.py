"""Probe families. Importing this package registers every built-in probe.

Each non-private module (or subpackage) of ``lenslab.probes`` is imported once here, so adding a
probe family is adding one module that decorates its Probe class with ``@register``.
"""

import importlib
import pkgutil

from lenslab.probes.base import (
    NO_PROGRESS,
    Cancelled,
    Config,
    Probe,
    Progress,
    Result,
    get_probe,
    register,
    registered_probes,
    result_class,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from lenslab.probes.logit_lens import LogitLens, LogitLensConfig, LogitLensResult  # noqa: E402

__all__ = [
    "NO_PROGRESS",
    "Cancelled",
    "Config",
    "LogitLens",
    "LogitLensConfig",
    "LogitLensResult",
    "Probe",
    "Progress",
    "Result",
    "get_probe",
    "register",
    "registered_probes",
    "result_class",
]
