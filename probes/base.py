"""The probe contract: a named Probe with a frozen Config, returning a frozen Result.

A probe turns (session, prompt, config) into a Result of plain numpy arrays and strings. Results
render themselves as plotly figures and round-trip losslessly through ``to_dict``/``from_dict``,
so the app, notebooks, the CLI and saved reports all share one representation. Probes register
by name; the app builds its pages and forms from the registry, so adding a probe is one module.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from lenslab.probes.fields import config_fields, range_problem
from lenslab.probes.serialize import from_plain, to_plain
from lenslab.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from lenslab.models.session import ModelSession


@dataclass(frozen=True)
class Config:
    """Base of probe configs: frozen, typed, validated against a session before running.

    Field metadata may carry ``help``, ``min``, ``max`` and ``choices``; the app renders its
    form from them and :meth:`check_numbers` enforces them.
    """

    def validate(self, session: ModelSession) -> None:
        """Raise ``ValueError`` if this config cannot run on ``session``."""
        self.check_numbers()

    def check_types(self) -> None:
        """Reject values of the wrong type (``"3"`` for an int, ``True`` for a number, 2.5 for an int).

        Configs are frozen dataclasses built from forms, the CLI, notebooks and saved reports; a
        wrong type would otherwise surface deep inside a probe as an unrelated error. Each field's
        kind (:mod:`lenslab.probes.fields`) knows its type.
        """
        for f in config_fields(type(self)):
            f.check(getattr(self, f.name))

    def check_numbers(self) -> None:
        """Check types, then reject NaN/inf and values outside the ``min``/``max``/``choices`` metadata."""
        self.check_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
            if isinstance(value, int | float) and not isinstance(value, bool):
                problem = range_problem(f.name, value, f.metadata.get("min"), f.metadata.get("max"))
                if problem:
                    raise ValueError(problem)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (configs hold no arrays)."""
        return to_plain(self, {}, "config")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return from_plain(cls, data, {})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (configs are frozen)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Result:
    """Base of probe results: plain data (numpy + str) that plots itself and saves losslessly.

    Every result records which model, prompt and config produced it; subclasses redeclare
    ``config`` with their own config type so it reloads as that type.
    """

    probe: ClassVar[str] = ""
    state_figures: ClassVar[tuple[str, ...]] = ()  # figures whose cells are hidden states
    model_id: str
    prompt: str
    config: Config

    def figures(self) -> dict[str, go.Figure]:
        """Named plotly figures for this result (the app and report.html show them all)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """A few headline numbers/strings for tables and the report header."""
        return {}

    def state_at(self, figure: str, point: dict[str, Any]) -> tuple[int, int] | None:
        """(layer, position) of the hidden state a clicked figure cell denotes, if any.

        The app uses it to open the state inspector from a figure; ``point`` is plotly's
        click data (``x``, ``y`` labels). Figures whose cells are not states return None.
        """
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; numpy arrays stay arrays (``Report`` stores them in ``arrays.npz``)."""
        arrays: dict[str, np.ndarray] = {}
        plain = to_plain(self, arrays, "r")
        return {"probe": self.probe, "data": plain, "arrays": arrays}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Result:
        """Rebuild from :meth:`to_dict` output, dispatching on the registered probe name."""
        name = payload.get("probe")
        target = cls if cls.probe == name and cls is not Result else result_class(name)
        return from_plain(target, payload["data"], payload.get("arrays", {}))


C = TypeVar("C", bound=Config)
R = TypeVar("R", bound=Result)


class Probe(ABC, Generic[C, R]):
    """One probe family. Subclasses set ``name``, ``title``, ``config_cls``, ``result_cls``."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str] = ""
    config_cls: ClassVar[type[Config]]
    result_cls: ClassVar[type[Result]]

    @abstractmethod
    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: C,
        progress: Progress = NO_PROGRESS,
    ) -> R:
        """Compute the result for ``prompt``; validates ``config`` first."""

    def default_config(self) -> C:
        """The config a user gets before touching any setting."""
        return self.config_cls()  # type: ignore[return-value]


_PROBES: dict[str, type[Probe]] = {}
_RESULTS: dict[str, type[Result]] = {}


def register(cls: type[Probe]) -> type[Probe]:
    """Class decorator adding a probe (and its result class) to the registry; no duplicates."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _PROBES and _PROBES[cls.name] is not cls:
        raise ValueError(f"a probe named {cls.name!r} is already registered")
    if cls.result_cls.probe != cls.name:
        raise ValueError(f"{cls.result_cls.__name__}.probe must equal {cls.name!r}")
    _PROBES[cls.name] = cls
    _RESULTS[cls.name] = cls.result_cls
    return cls


def register_result(cls: type[Result]) -> type[Result]:
    """Class decorator registering a Result that no single probe run produces (e.g. a sweep).

    Reports dispatch on ``cls.probe`` when they reload, so the name must not clash with a probe's.
    """
    if not cls.probe:
        raise ValueError(f"{cls.__name__} has no probe name")
    if cls.probe in _RESULTS and _RESULTS[cls.probe] is not cls:
        raise ValueError(f"a result named {cls.probe!r} is already registered")
    _RESULTS[cls.probe] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a probe (tests register throwaway probes)."""
    _PROBES.pop(name, None)
    _RESULTS.pop(name, None)


def registered_probes() -> dict[str, type[Probe]]:
    """All registered probes by name (importing ``lenslab.probes`` registers the built-ins)."""
    return dict(_PROBES)


def get_probe(name: str) -> Probe:
    """An instance of the probe called ``name``; unknown names list the known ones."""
    if name not in _PROBES:
        raise ValueError(f"unknown probe {name!r}; known probes: {sorted(_PROBES)}")
    return _PROBES[name]()


def result_class(name: str | None) -> type[Result]:
    """The Result class registered for probe ``name``."""
    if name not in _RESULTS:
        raise ValueError(f"unknown result type {name!r}; known: {sorted(_RESULTS)}")
    return _RESULTS[name]


def to_numpy(tensor: Any) -> np.ndarray:
    """A CPU numpy copy of a tensor (float32 for low-precision floats so results save anywhere)."""
    import torch

    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(tensor)
