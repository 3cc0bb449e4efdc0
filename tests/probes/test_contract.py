"""The probe contract: registry, config validation, lossless result round-trips."""

from dataclasses import dataclass, field

import numpy as np
import pytest
from fast_configs import fast_config

from lenslab.probes import Config, Probe, Result, get_probe, register, registered_probes
from lenslab.probes.base import unregister


@dataclass(frozen=True)
class _Cfg(Config):
    k: int = field(default=3, metadata={"min": 1, "max": 10})
    scale: float = 1.0
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _Res(Result):
    probe = "_dummy"
    config: _Cfg
    values: np.ndarray
    names: list[str]
    nested: list[list[str]]
    score: float
    maybe: int | None = None


class _Dummy(Probe[_Cfg, _Res]):
    name = "_dummy"
    title = "Dummy"
    config_cls = _Cfg
    result_cls = _Res

    def run(self, session, prompt, config, progress=None):
        return _Res("m", prompt, config, np.arange(3.0), ["a"], [["x"]], 0.5)


@pytest.fixture
def dummy():
    register(_Dummy)
    yield _Dummy
    unregister("_dummy")


def test_registry_lists_and_refuses_duplicates(dummy):
    assert registered_probes()["_dummy"] is _Dummy
    assert isinstance(get_probe("_dummy"), _Dummy)

    class Other(_Dummy):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(Other)


def test_unknown_probe_lists_known():
    with pytest.raises(ValueError, match="logit_lens"):
        get_probe("nope")


def test_builtin_logit_lens_registered():
    assert "logit_lens" in registered_probes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be between 1 and 10, got 0"),
        ({"k": 11}, "k must be between 1 and 10, got 11"),
        ({"scale": float("nan")}, "finite"),
        ({"scale": float("inf")}, "finite"),
        ({"mode": "z"}, "one of"),
        ({"k": "3"}, "k must be int, got str '3'"),
        ({"k": 2.5}, "k must be int, got float"),
        ({"k": True}, "k must be int, got the boolean"),
        ({"scale": "1"}, "scale must be float"),
        ({"mode": 1}, "mode must be str"),
        ({"layers": (1, "2")}, "layers must be"),
        ({"layers": [1, 2]}, "layers must be"),
    ],
)
def test_config_rejects_bad_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _Cfg(**kwargs).check_numbers()


def test_config_accepts_well_typed_values():
    """An int for a float, None for an optional, and every built-in probe's own configs pass."""
    _Cfg(scale=2, layers=None).check_numbers()
    _Cfg(layers=(1, 2)).check_numbers()
    for name in registered_probes():
        probe = get_probe(name)
        probe.default_config().check_numbers()
        fast_config(name).check_numbers()


def test_config_round_trip_and_unknown_keys():
    cfg = _Cfg(k=4, scale=0.25, mode="b", layers=(1, 3))
    assert _Cfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        _Cfg.from_dict({"k": 2, "bogus": 1})


def test_result_round_trip_is_lossless(dummy):
    values = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    res = _Res("m", "p<>", _Cfg(layers=(2,)), values, ["a", "b"], [["x", "y"], []], 1 / 3, maybe=7)
    back = Result.from_dict(res.to_dict())
    assert type(back) is _Res
    assert back.config == res.config and back.names == res.names and back.nested == res.nested
    assert back.score == res.score and back.maybe == 7
    assert back.values.dtype == values.dtype and np.array_equal(back.values, values)
