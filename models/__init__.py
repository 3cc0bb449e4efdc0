"""Model loading (embedded GGUF models, HF ids, local folders) and the ModelSession."""

from lenslab.models.loading import DEFAULT_MODEL, EMBEDDED, available_offline, prepare_embedded
from lenslab.models.session import ActivationRun, ModelSession, default_device

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "ActivationRun",
    "ModelSession",
    "available_offline",
    "default_device",
    "prepare_embedded",
]
