"""Model resolution and the once-only, crash-safe conversion of embedded models."""

import threading
import time
from pathlib import Path

import pytest

from lenslab.models import loading


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """An embedded model whose 'conversion' is slow and counted, in an isolated cache."""
    monkeypatch.setenv("LENSLAB_HOME", str(tmp_path))
    calls = []

    def convert(model, out: Path, progress):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x" * 1000)

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    fake = loading.EmbeddedModel("fake", "org/fake", "test", lambda d: d)
    monkeypatch.setitem(loading.EMBEDDED, "fake", fake)
    return calls


def test_concurrent_first_runs_convert_once(fake_embedded, tmp_path):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(loading.prepare_embedded("fake"))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_embedded) == 1
    assert len(set(results)) == 1 and loading.is_prepared("fake")
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == ["fake"]
    loading.prepare_embedded("fake")  # idempotent: no second conversion
    assert len(fake_embedded) == 1


def test_failed_conversion_leaves_no_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSLAB_HOME", str(tmp_path))

    def convert(model, out, progress):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    monkeypatch.setitem(loading.EMBEDDED, "fake", loading.EmbeddedModel("fake", "o/f", "", lambda d: d))
    with pytest.raises(RuntimeError):
        loading.prepare_embedded("fake")
    assert not loading.is_prepared("fake")
    assert not (tmp_path / "models" / "fake").exists()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp")]


def test_resolution_rules(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        loading.resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert loading.resolve(str(tmp_path)).local_only
    assert loading.resolve("gpt2").source == "gpt2"
    with pytest.raises(ValueError, match=r"Available offline: gemma-3-270m"):
        loading.resolve("not a model!!")


def test_unknown_hub_model_lists_offline_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lenslab.models import ModelSession

    with pytest.raises(FileNotFoundError, match=r"Available offline: .*gemma-3-270m"):
        ModelSession.load("no-such-org/no-such-model-xyz")


def test_available_offline_lists_embedded():
    assert loading.available_offline()[0] == "gemma-3-270m"
