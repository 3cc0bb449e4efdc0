"""Progress reporting and cancellation, shared by every layer (models, probes, app, CLI).

It sits below both ``lenslab.models`` and ``lenslab.probes`` so that the session's guards and the
probes speak of the same ``Cancelled`` without either importing the other.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Progress callback: ``fraction`` in [0, 1] and a short message. May raise ``Cancelled``."""

    def __call__(self, fraction: float, message: str = "") -> None:
        """Report progress; may raise ``Cancelled``."""


def NO_PROGRESS(fraction: float, message: str = "") -> None:
    """Progress sink that ignores updates."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a long computation cleanly."""


def show_partial(progress: Progress, name: str, figure: object) -> None:
    """Hand a finished figure to whoever runs the probe, before the rest of the run is done.

    A caller that can show figures early (the app) gives its progress callback a ``partial(name,
    figure)`` attribute; anywhere else this does nothing. The final result still holds every figure.
    A later call with the same ``name`` replaces the figure shown under it (a grid growing row by row).
    """
    partial = getattr(progress, "partial", None)
    if partial is not None:
        partial(name, figure)


def wants_partial(progress: Progress) -> bool:
    """Whether ``progress`` shows early figures: a probe builds a figure early only for such a caller."""
    return getattr(progress, "partial", None) is not None
