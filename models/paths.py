"""Where lenslab keeps what it prepares: converted models, reports, trained artefacts."""

from __future__ import annotations

import os
from pathlib import Path


def lenslab_home() -> Path:
    """Root of lenslab's on-disk state: ``$LENSLAB_HOME`` or ``~/.cache/lenslab``."""
    env = os.environ.get("LENSLAB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lenslab"


def reports_dir() -> Path:
    """Default folder for saved reports (``$LENSLAB_REPORTS`` overrides)."""
    env = os.environ.get("LENSLAB_REPORTS")
    return Path(env).expanduser() if env else lenslab_home() / "reports"


def artefacts_dir() -> Path:
    """Folder for trained artefacts (linear maps, soft prompts, SAEs, encoders)."""
    return lenslab_home() / "artefacts"
