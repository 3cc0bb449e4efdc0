"""Model specs a worker resolves on its own machine: a name for ``ModelSession.load`` or ``tiny:<family>``.

Workers receive a string, not a session, and load the model once. ``tiny:<family>`` (``gemma3``,
``llama``, ``gpt2``) builds the seeded tiny random model of :mod:`lenslab.models.tiny`: it loads
in a fraction of a second on any machine, which makes it the way to try a sweep or a cluster
set-up before pointing it at a real model.
"""

from __future__ import annotations

from lenslab.models.session import ModelSession

TINY = "tiny:"


def check_model_spec(spec: str) -> None:
    """Refuse specs no worker could load (an unknown tiny family, an empty name)."""
    from lenslab.models.tiny import FAMILIES

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("models: a model spec is empty (omit --model for the embedded model)")
    if spec.startswith(TINY) and spec[len(TINY) :] not in FAMILIES:
        raise ValueError(f"models: unknown tiny family {spec!r}; choose tiny:{'|'.join(FAMILIES)}")


def open_session(spec: str | None, *, dtype: str = "float32", max_tokens: int = 512) -> ModelSession:
    """Load the model named by ``spec`` (None or "": the embedded model) on this machine's device."""
    if spec and spec.startswith(TINY):
        import torch

        from lenslab.models.session import DTYPES
        from lenslab.models.tiny import tiny_session

        check_model_spec(spec)
        session = tiny_session(spec[len(TINY) :], dtype=DTYPES.get(dtype, torch.float32))  # type: ignore[arg-type]
        session.max_tokens = max_tokens
        return session
    return ModelSession.load(spec or None, dtype=dtype, max_tokens=max_tokens)
