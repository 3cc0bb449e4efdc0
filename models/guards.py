"""Resource guards: refuse computations that would not fit, survive out-of-memory, stop slow requests.

Three guards, usable from probes, the app, the CLI and notebooks alike (no streamlit here):

- **memory budget** — :func:`check_memory` compares an estimate (see :func:`estimate_run_bytes`,
  :func:`jacobian_bytes`, :func:`tensor_bytes`) with :func:`memory_budget_bytes` and raises a
  ``ValueError`` that says what was refused and how to make it fit. The budget is
  ``$LENSLAB_MEMORY_BUDGET_GB`` or, by default, half of the memory free right now (GPU memory for
  CUDA devices, available RAM otherwise).
- **out of memory** — :func:`oom_guard` turns ``torch.OutOfMemoryError`` and ``MemoryError`` into
  :class:`OutOfMemory` (a ``ValueError`` with a readable message) after freeing what it can.
- **time limit** — :func:`time_limited` wraps a progress callback so that it raises ``Cancelled``
  once a request has run longer than ``$LENSLAB_TIME_LIMIT_S`` (or the limit given): a long job
  stops cleanly at its next progress update, the same way a user's cancel does. Inside
  :func:`deadline` the same limit is also checked by :func:`check_deadline` before every forward
  pass and hook context of a :class:`~lenslab.models.session.ModelSession`, so work that reports
  progress rarely still stops within one forward of the limit.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from lenslab.models import hooknames
from lenslab.progress import Cancelled

BUDGET_ENV = "LENSLAB_MEMORY_BUDGET_GB"
TIME_LIMIT_ENV = "LENSLAB_TIME_LIMIT_S"
DEFAULT_APP_TIME_LIMIT_S = 1800.0  # the app's per-request default when $LENSLAB_TIME_LIMIT_S is unset
_GIB = 2**30


class OutOfMemory(ValueError):
    """A computation ran out of memory; memory was freed and the message says what to change."""


# ------------------------------------------------------------------------------------------ budget
def free_memory_bytes(device: str | torch.device | None = None) -> int:
    """Memory free right now on ``device``: CUDA free memory, else the OS's available RAM."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * _GIB  # unknown platform: a conservative guess


def memory_budget_bytes(device: str | torch.device | None = None) -> int:
    """The most one computation may allocate: ``$LENSLAB_MEMORY_BUDGET_GB`` or half the free memory."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            gigabytes = float(raw)
        except ValueError as exc:
            raise ValueError(f"{BUDGET_ENV}={raw!r} is not a number of gigabytes") from exc
        if not math.isfinite(gigabytes) or gigabytes <= 0:
            raise ValueError(f"{BUDGET_ENV} must be a positive number of gigabytes, got {raw!r}")
        return int(gigabytes * _GIB)
    return free_memory_bytes(device) // 2


def format_bytes(n_bytes: float) -> str:
    """Human-readable size (``1.5 GiB``)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def check_memory(
    estimate_bytes: float, what: str, *, device: str | torch.device | None = None, hint: str = ""
) -> None:
    """Raise ``ValueError`` if ``what`` (needing about ``estimate_bytes``) exceeds the memory budget.

    Call it before allocating anything large; ``hint`` says how to make the request smaller.
    """
    if not math.isfinite(float(estimate_bytes)) or estimate_bytes < 0:
        raise ValueError(f"cannot estimate the memory of {what}")
    budget = memory_budget_bytes(device)
    if estimate_bytes > budget:
        advice = hint or "use a shorter prompt, fewer layers or a smaller setting"
        raise ValueError(
            f"{what} would need about {format_bytes(estimate_bytes)}, more than the memory budget of "
            f"{format_bytes(budget)} ({BUDGET_ENV} or half the free memory): {advice}"
        )


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return math.prod(int(s) for s in shape) * dtype_bytes(dtype)


def jacobian_bytes(
    seq_len: int, d_in: int, d_out: int | None = None, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of a full Jacobian over a prompt: ``seq × d_out × d_in`` entries."""
    return tensor_bytes((seq_len, d_out if d_out is not None else d_in, d_in), dtype)


def hook_width(session: Any, name: str, seq_len: int) -> int:
    """Elements per (batch, position) of the activation at hook ``name`` (an upper-bound guess)."""
    cfg = session.cfg
    if hooknames.is_attention_map(name):
        return int(getattr(cfg, "n_heads", 1) or 1) * seq_len
    if hooknames.is_mlp_wide(name):
        return int(getattr(cfg, "d_mlp", None) or 4 * session.d_model)
    if name.startswith("unembed") or name.endswith("logits"):
        return session.d_vocab
    return session.d_model


def estimate_run_bytes(session: Any, n_tokens: int, names: Iterable[str] = (), batch: int = 1) -> int:
    """Bytes a forward pass keeps: logits (float32) plus one cached activation per hook in ``names``."""
    dtype = session.dtype
    logits = tensor_bytes((batch, n_tokens, session.d_vocab), torch.float32)
    cached = sum(hook_width(session, name, n_tokens) for name in names)
    return logits + batch * n_tokens * cached * dtype_bytes(dtype)


def check_run(session: Any, n_tokens: int, names: Sequence[str] = (), batch: int = 1) -> None:
    """:func:`check_memory` for a forward pass caching ``names`` over ``batch × n_tokens`` tokens."""
    if not names and n_tokens * batch * session.d_vocab * 4 < 64 * 2**20:
        return  # a plain short forward: not worth reading /proc/meminfo
    check_memory(
        estimate_run_bytes(session, n_tokens, names, batch),
        f"a forward pass over {batch}×{n_tokens} tokens caching {len(names)} activation(s)",
        device=session.device,
        hint="use a shorter prompt or fewer layers/hooks",
    )


# ----------------------------------------------------------------------------------- out of memory
def release_memory() -> None:
    """Free what Python and the CUDA caching allocator hold (after an OOM or a cancelled job)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_CPU_OOM_TEXT = ("can't allocate memory", "DefaultCPUAllocator", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error: CUDA OOM, ``MemoryError`` or torch's CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _CPU_OOM_TEXT)


@contextmanager
def oom_guard(what: str = "the computation") -> Iterator[None]:
    """Turn CUDA/CPU out-of-memory errors into :class:`OutOfMemory` after freeing memory.

    Torch reports a failed CPU allocation as a ``RuntimeError`` ("DefaultCPUAllocator: can't
    allocate memory"); that is recognised too. Other errors pass through unchanged.
    """
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        kind = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "CPU"
        del exc  # drop the traceback's frames (and the tensors they hold) before collecting
        release_memory()
        raise OutOfMemory(
            f"{what} ran out of {kind} memory; memory was freed. Try a shorter prompt, fewer layers, "
            "a smaller batch or the other device."
        ) from None


# -------------------------------------------------------------------------------------- time limit
def time_limit_s(default: float | None = None) -> float | None:
    """The per-request limit in seconds: ``$LENSLAB_TIME_LIMIT_S`` (0 = none) or ``default``."""
    raw = os.environ.get(TIME_LIMIT_ENV, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError as exc:
        raise ValueError(f"{TIME_LIMIT_ENV}={raw!r} is not a number of seconds") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{TIME_LIMIT_ENV} must be a number of seconds ≥ 0, got {raw!r}")
    return seconds or None


def time_limited(
    progress: Callable[..., None],
    limit_s: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[float, str], None]:
    """Wrap ``progress`` so that it raises ``Cancelled`` once ``limit_s`` seconds have passed.

    The clock starts when the wrapper is made. ``None`` (or 0) means no limit.
    """
    if not limit_s:
        return progress
    deadline = clock() + float(limit_s)

    def limited(fraction: float, message: str = "") -> None:
        if clock() > deadline:
            raise Cancelled(_limit_message(float(limit_s)))
        progress(fraction, message)

    limited.__dict__.update(getattr(progress, "__dict__", {}))  # e.g. a ``partial`` figure sink
    return limited


def _limit_message(limit_s: float) -> str:
    return (
        f"stopped after the time limit of {limit_s:g} s ({TIME_LIMIT_ENV}); pick smaller settings or raise "
        "the limit"
    )


_Deadline = tuple[float, float, Callable[[], float]]  # (deadline, limit, clock)
_DEADLINE: ContextVar[_Deadline | None] = ContextVar("lenslab_deadline", default=None)


@contextmanager
def deadline(limit_s: float | None, *, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Within this block, :func:`check_deadline` raises ``Cancelled`` once ``limit_s`` have passed.

    A context variable, so each thread (each app session, each test worker) has its own; ``None``
    or 0 sets no limit. Pair it with :func:`time_limited` on the progress callback.
    """
    if not limit_s:
        yield
        return
    token = _DEADLINE.set((clock() + float(limit_s), float(limit_s), clock))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise ``Cancelled`` if the enclosing :func:`deadline` has passed (called before each forward)."""
    current = _DEADLINE.get()
    if current is not None and current[2]() > current[0]:
        raise Cancelled(_limit_message(current[1]))
