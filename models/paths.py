"""Where lenslab keeps what it prepares: converted models, reports, trained artefacts."""

from __future__ import annotations

import os
import re
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


def model_slug(model_id: str) -> str:
    """A folder-safe name for a model id (``google/gemma-3-270m`` → ``google-gemma-3-270m``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"


def family_dir(family: str, model_id: str) -> Path:
    """Where a probe family keeps its trained artefacts for one model: ``artefacts/<family>/<slug>``."""
    return artefacts_dir() / family / model_slug(model_id)
