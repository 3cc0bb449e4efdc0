"""Shared fixtures: tiny random models (fast, exact) and the embedded model (loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _threads_per_process() -> int:
    """Torch threads for one test process: the cores shared out among pytest-xdist workers.

    Two processes that each run a 2-thread OpenMP pool on 2 cores spin-wait on each other and
    run several times slower than one; so each worker takes its share of the cores, and the
    subprocesses a test starts (servers, notebook kernels, the CLI, Ray) inherit that share.
    """
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    return max(1, min(4, (os.cpu_count() or 1) // workers))


if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = str(_threads_per_process())
torch.set_num_threads(_threads_per_process())


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


_BROWSER_TESTS = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist the browser tests come first: they are the longest unit (see below)."""
    if "PYTEST_XDIST_WORKER" in os.environ:  # collection happens on the workers only
        items.sort(key=lambda item: not item.path.is_relative_to(_BROWSER_TESTS))


class _ModulesToWorkers:
    """pytest-xdist hands out whole modules, and every browser test as one unit.

    A module stays on one worker so its module-scoped fixtures are built once; the browser tests
    share one app server and one Chromium per process, so they go to one worker together, and
    first (they take longest), while the other worker takes the remaining modules in turn.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        from xdist.scheduler import LoadScopeScheduling

        browser = _BROWSER_TESTS.relative_to(config.rootpath).as_posix() + "/"

        class ModuleScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return "browser" if nodeid.startswith(browser) else nodeid.split("::", 1)[0]

        return ModuleScheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_ModulesToWorkers(), "lenslab-modules-to-workers")
