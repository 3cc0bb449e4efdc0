"""Shared fixtures: tiny random models (fast, exact) and the embedded model (loaded once)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _one_embedded_load_per_process():
    """Every default ``ModelSession.load()`` in the test process returns one shared session.

    The CLI, the app's ``state.session()`` and the fixtures all ask for the embedded model with
    default settings; loading it once per process (not once per caller) saves a load (10-30 s)
    each. Loads by folder path, of other models or with other settings still load afresh, so
    the loading path itself stays tested (``tests/models/test_embedded.py``).
    """
    from lenslab.models import ModelSession
    from lenslab.models.loading import DEFAULT_MODEL
    from lenslab.models.session import default_device

    real_load = ModelSession.load.__func__  # type: ignore[attr-defined]
    shared: dict[tuple[str, str], ModelSession] = {}

    def load(cls, name=None, *, device=None, dtype="float32", max_tokens=512, trust_remote_code=False):
        if name not in (None, DEFAULT_MODEL) or max_tokens != 512 or trust_remote_code:
            kwargs = {"max_tokens": max_tokens, "trust_remote_code": trust_remote_code}
            return real_load(cls, name, device=device, dtype=dtype, **kwargs)
        key = (str(torch.device(device) if device is not None else default_device()), str(dtype))
        if key not in shared:
            shared[key] = real_load(cls, name, device=device, dtype=dtype)
        return shared[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelSession, "load", classmethod(load))
        yield


@pytest.fixture(scope="session")
def embedded_session():
    """The embedded Gemma 3 270M, loaded once for the whole test run (CPU unless on a GPU box)."""
    from lenslab.models import ModelSession

    return ModelSession.load()


@pytest.fixture(scope="session")
def tiny_gemma():
    """A 2-layer random Gemma 3 model with a character tokenizer."""
    from lenslab.models.tiny import tiny_session

    return tiny_session("gemma3")


@pytest.fixture(params=["gemma3", "llama", "gpt2"])
def tiny_any(request):
    """One tiny random model per supported family."""
    from lenslab.models.tiny import tiny_session

    return tiny_session(request.param)


@pytest.fixture
def lenslab_home(tmp_path, monkeypatch):
    """An isolated LENSLAB_HOME for tests that write artefacts or reports; models stay shared."""
    from lenslab.models.loading import models_dir

    real_models = models_dir()
    monkeypatch.setenv("LENSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LENSLAB_REPORTS", str(tmp_path / "reports"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").symlink_to(real_models, target_is_directory=True)
    return tmp_path / "home"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the reliability figures (issue 9) collected by the reliability tests, if any ran."""
    from e2e_support import STATS

    if STATS.empty():
        return
    terminalreporter.section("reliability figures")
    for line in STATS.lines():
        terminalreporter.write_line(line)
    failed = len(terminalreporter.stats.get("failed", [])) + len(terminalreporter.stats.get("error", []))
    terminalreporter.write_line(f"failed tests in this run: {failed}")
