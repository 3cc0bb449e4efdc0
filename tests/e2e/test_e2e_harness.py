"""The browser tests' harness, without a browser: the shared server is reused while tests pass and
replaced after a failure; a server's home copies the prepared artefacts (writes never reach the real
home) and links the models."""

from __future__ import annotations

from pathlib import Path

from e2e_support import SharedServer, isolated_home


class FakeProcess:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeServer:
    """Stands in for ``AppServer``: a process that runs until stopped, and a log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process = FakeProcess()

    def stop(self) -> None:
        self.process.returncode = -15

    def log(self) -> str:
        return f"log of {self.root.name}"


def test_one_server_while_tests_pass_a_fresh_one_after_a_failure(tmp_path):
    shared = SharedServer(tmp_path, FakeServer)
    first = shared.current()
    assert shared.current() is first and shared.current() is first  # passing tests share it
    shared.failed = True  # a test failed: its run may still hold the model
    second = shared.current()
    assert second is not first and first.process.poll() is not None, "the old server still runs"
    assert second.root != first.root and shared.current() is second
    second.process.returncode = 1  # a server that died is replaced too
    third = shared.current()
    assert third is not second
    assert shared.stop() == ["log of server-0", "log of server-1", "log of server-2"]
    assert third.process.poll() is not None


def test_a_servers_home_copies_the_artefacts_and_links_the_models(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "models" / "m").mkdir(parents=True)
    (real / "artefacts" / "future_lens" / "m").mkdir(parents=True)
    saved = real / "artefacts" / "future_lens" / "m" / "linear_maps.safetensors"
    saved.write_bytes(b"prepared")
    monkeypatch.setenv("LENSLAB_HOME", str(real))
    env = isolated_home(tmp_path / "server")
    home = Path(env["LENSLAB_HOME"])
    assert home != real and (home / "models").resolve() == (real / "models").resolve()
    copy = home / "artefacts" / "future_lens" / "m" / "linear_maps.safetensors"
    assert copy.read_bytes() == b"prepared" and not copy.is_symlink()
    assert not (home / "artefacts").is_symlink()
    with open(copy, "wb") as fh:  # a saver that writes in place (safetensors' save_file does)
        fh.write(b"refitted by a page")
    assert saved.read_bytes() == b"prepared"
